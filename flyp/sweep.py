"""Per-method hyperparameter sweep, selected on ID-val.

A preset's ``sweep`` maps a method to a grid: ``{lr: [1e-5, 1e-4], lambda: [0.01, 0.1]}`` (a
training setting or the method's own option, each with its values). The workflow trains every
point of the grid (the cartesian product, keys in the order written) once, with the first seed, as
a run named after the point (``<method>/sweep/lr1e-05-lambda0.01/seed0``, flyp.runs); ``select``
then picks the point whose checkpoint has the best ID-val score, and every seed's full run trains
at it. The scores are read from the checkpoints' headers (what finetuning recorded when it kept
the epoch): the test sets are never evaluated for a grid run, so they cannot leak into the choice.
Ties go to the first point in grid order. A point's training settings are resolved like any
run's (flyp.workflow.config.training_settings: a grid's lr is multiplied by the method's
lr_scale); what each run trained at is read back from its checkpoint (``trained``).

A method whose grid has a single point is not swept: that point is its setting, as a
``method_options`` override would be. Light (no torch at import): the workflow reads it to parse.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from flyp.io import UserError, write_json
from flyp.settings import SWEEPABLE


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every setting of a grid: the cartesian product of its values, keys in the order given."""
    keys = list(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def is_swept(grid: dict[str, list] | None) -> bool:
    """Whether a grid has settings to choose between (one point is a fixed setting)."""
    return bool(grid) and len(grid_points(grid)) > 1


def point_name(point: dict) -> str:
    """A grid point's name, from its keys and values in grid order: ``lr1e-05-lambda0.01``."""
    return "-".join(f"{k}{v:g}" for k, v in point.items())


def describe(point: dict) -> str:
    """``lr=3e-05;lambda=0.01``: the picked setting as the table shows it."""
    return ";".join(f"{k}={v:g}" for k, v in point.items())


def check_grid(method: str, grid: dict[str, list], info, where: str) -> None:
    """One line naming the key when a grid varies what the method does not have: a training key
    of a method that does not train, or an option it does not declare (or out of its range)."""
    specs = info.option_specs(with_inputs=False)
    for key, values in grid.items():
        if key in SWEEPABLE:
            if not info.trains:
                raise UserError(
                    f"{where}.{key}: method {method} does not train; only its own "
                    f"options can be swept ({', '.join(specs) or 'it has none'})"
                )
            continue
        if key not in specs or specs[key].type is str:
            numeric = [k for k, s in specs.items() if s.type is not str]
            allowed = [*(SWEEPABLE if info.trains else ()), *numeric]
            raise UserError(
                f"{where}.{key}: not a setting of method {method} that can be swept; "
                f"expected one of {allowed}"
            )
        for value in values:
            try:
                specs[key].parse(value)
            except UserError as e:
                raise UserError(f"{where}.{key}: {e}") from None


def trained(info: dict, point: dict) -> dict:
    """The values of ``point``'s keys that a run trained at, from its checkpoint's info: a
    training setting as finetuning resolved it (LP-FT's lr after its lr_scale), an option as the
    method got it (a checkpoint holds options as the command line gave them, as text; a grid's
    options are numbers)."""
    config = info.get("config") or {}
    return {k: config[k] if k in config else float(config["options"][k]) for k in point}


def select(points: list[dict], checkpoints: list[Path]) -> dict:
    """The grid point whose checkpoint scored best on ID-val (ties: the first in grid order), and
    every point's score. Reads the checkpoints' headers only (flyp.models.checkpoint_layout)."""
    from flyp.models import checkpoint_layout

    if len(points) != len(checkpoints):
        raise UserError(f"sweep: {len(points)} grid points but {len(checkpoints)} checkpoints")
    rows = []
    for point, path in zip(points, checkpoints, strict=True):
        info = checkpoint_layout(path)[0]["info"]
        rows.append(
            {
                "point": point_name(point),
                "setting": point,
                "trained": trained(info, point),
                "val_metric": info.get("val_metric"),
                "val_score": info.get("best_val_score"),
                "best_epoch": info.get("best_epoch"),
            }
        )
    scored = [
        r
        for r in rows
        if isinstance(r["val_score"], (int, float)) and math.isfinite(r["val_score"])
    ]
    if not scored:
        raise UserError(
            f"sweep: no ID-val score in any of {[str(p) for p in checkpoints]}; "
            "cannot pick a setting"
        )
    best = max(scored, key=lambda r: r["val_score"])  # max keeps the first of equal scores
    return {
        "picked": best["setting"],
        "picked_point": best["point"],
        "trained": best["trained"],
        "val_metric": best["val_metric"],
        "val_score": best["val_score"],
        "runs": rows,
    }


def write_selection(out: Path, method: str, grid: dict[str, list], checkpoints: list[Path]) -> dict:
    """Select among ``checkpoints`` (one per grid point, in grid order); write it as JSON."""
    selection = {"method": method, "grid": grid, **select(grid_points(grid), checkpoints)}
    write_json(out, selection)
    return selection
