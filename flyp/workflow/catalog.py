"""What the workflow needs to know of each registered method while it builds the DAG: whether it
trains, the files it reads, its own options, and where its class is defined (for the code hash).

The method classes (flyp/methods/*.py) are the one source. Reading them imports torch and
open_clip (about 5 s), which would make every `snakemake -n` and no-op run slow, so what is read
is kept in flyp.workflow.parsecache: any edit under flyp/ reads the classes again; an unchanged
package never imports torch to parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from flyp.io import UserError
from flyp.options import Option, option_specs
from flyp.workflow import parsecache


@dataclass(frozen=True)
class MethodInfo:
    name: str
    trains: bool
    seeded: bool  # a full run depends on its seed (flyp.methods.Method.seeded)
    inputs: dict[str, str]  # option -> "features" | "method:<name>" (flyp.methods.Method.inputs)
    options: tuple[Option, ...]  # the method's own settings, inputs excluded
    entry: str  # "module:Class", where the method's code starts (flyp.workflow.codeversion)

    def option_specs(self, *, with_inputs: bool = True) -> dict[str, Option]:
        """As flyp.methods.Method.option_specs."""
        return option_specs(self.inputs, self.options, with_inputs=with_inputs)


def _read_classes() -> dict:
    """The catalog read from the classes themselves (imports torch)."""
    from flyp.methods import METHODS, method_names

    out = {}
    for name in method_names():
        cls = METHODS[name]
        out[name] = {
            "trains": cls.trains,
            "seeded": cls.seeded,
            "inputs": dict(cls.inputs),
            "options": [
                [o.name, o.type.__name__, o.default, o.minimum, o.maximum] for o in cls.options
            ],
            "entry": f"{cls.__module__}:{cls.__qualname__}",
        }
    return out


TYPES = {"float": float, "int": int, "str": str}


@cache
def methods() -> dict[str, MethodInfo]:
    """Every registered method by name, from the cache when the package is unchanged."""
    raw = parsecache.load("methods")
    if not raw:
        raw = _read_classes()
        parsecache.store("methods", raw)
    return {
        name: MethodInfo(
            name=name,
            trains=info["trains"],
            seeded=info["seeded"],
            inputs=info["inputs"],
            options=tuple(Option(n, TYPES[t], d, lo, hi) for n, t, d, lo, hi in info["options"]),
            entry=info["entry"],
        )
        for name, info in raw.items()
    }


def method_names() -> list[str]:
    return sorted(methods())


def method_info(name: str) -> MethodInfo:
    if name not in methods():
        raise UserError(f"unknown method {name!r}; expected one of {method_names()}")
    return methods()[name]
