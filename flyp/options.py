"""A method's own settings (``-o name=value``, or ``method_options.<method>.<name>`` in
params.yaml), declared with their type, range and default. Light (no torch): the workflow checks
params.yaml against them while it parses (flyp.workflow.catalog)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flyp.io import UserError


@dataclass(frozen=True)
class Option:
    """A method's own setting (``-o name=value``, or ``method_options.<method>.<name>`` in
    params.yaml): its type, range and default (None: required)."""

    name: str
    type: type = float  # float | int | str
    default: object = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, value):
        """``value`` (a command-line string or a YAML value) as this option's type, in range."""
        expected = f"{self.type.__name__}{self.range()}"
        try:
            if isinstance(value, bool):  # YAML's yes/true is no number
                raise ValueError
            parsed = self.type(value)
            if self.type is int and parsed != float(value):  # 2.5 is no int
                raise ValueError
            if self.type is float and not math.isfinite(parsed):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"option {self.name!r}: expected {expected}, got {value!r}") from None
        if (self.minimum is not None and parsed < self.minimum) or (
            self.maximum is not None and parsed > self.maximum
        ):
            raise UserError(f"option {self.name!r}: expected {expected}, got {value!r}")
        return parsed

    def range(self) -> str:
        bounds = [
            f">= {self.minimum:g}" if self.minimum is not None else "",
            f"<= {self.maximum:g}" if self.maximum is not None else "",
        ]
        return "".join(f" {b}" for b in bounds if b)

    def describe(self) -> str:
        """``lambda (float >= 0, default 0.1)``: what an error message lists."""
        default = "required" if self.default is None else f"default {self.default}"
        return f"{self.name} ({self.type.__name__}{self.range()}, {default})"


def describe_options(specs) -> str:
    return ", ".join(spec.describe() for spec in specs) or "none"


def option_specs(inputs, options, *, with_inputs: bool = True) -> dict[str, Option]:
    """Every option a method reads, by name: its declared ``options`` and (``with_inputs``) one
    required path option per input file (``inputs``: the method's option -> file kind)."""
    specs = {name: Option(name, str) for name in inputs} if with_inputs else {}
    return {**specs, **{o.name: o for o in options}}
