"""Where each run of a method lives, under ``models/<benchmark>/`` (checkpoints, training logs) and
``results/<benchmark>/`` (metrics, provenance): the one place for the layout that the workflow's
rules, the report and the benchmark scripts share.

    <method>/seed<seed>                  a full run, finetuning seed <seed> (one of `seeds`)
    <method>/k<shots>/draw<draw>         a few-shot draw: <shots> images per class, draw <draw>
    <method>/sweep/<point>/seed<seed>    a point of the method's sweep, e.g. sweep/lr1e-05/seed0

Each part is a field of its own (Snakemake's wildcards in the rules): a run is named from its
fields, never parsed back from a name.
"""

from __future__ import annotations

# Snakemake's wildcard patterns; str.format of the same gives a run's folder.
FULL = "{method}/seed{seed}"
DRAW = "{method}/k{shots}/draw{draw}"
GRID = "{method}/sweep/{point}/seed{seed}"


def full_run(method: str, seed: int) -> str:
    return FULL.format(method=method, seed=seed)


def draw_run(method: str, shots: int, draw: int) -> str:
    return DRAW.format(method=method, shots=shots, draw=draw)


def grid_run(method: str, point: str, seed: int) -> str:
    return GRID.format(method=method, point=point, seed=seed)
