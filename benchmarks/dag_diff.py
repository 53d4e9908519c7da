"""The DAG of every preset, as `snakemake -n -p --forceall` lists it, for the code of an older
commit and of this tree, side by side: which jobs' shell commands differ.

    python benchmarks/dag_diff.py --old 598400c
    python benchmarks/dag_diff.py --old 598400c --config lr=1e-6   # with a top-level key set

The older commit's runs may be named the old way (``k4-draw0``, ``sweep-lr1e-05-seed0`` under
``<method>/``); ``--rename`` (on by default) maps those names onto flyp.runs' layout
(``k4/draw0``, ``sweep/lr1e-05/seed0``) and the report's old run options onto the new ones
before comparing, so that what is left is what computes differently. Each side runs its own
code (PYTHONPATH), in an empty copy of its workflow (no data: a dry run of the whole DAG).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = [
    "embedded",
    "imagenet",
    "iwildcam",
    "fmow",
    "caltech101",
    "cars",
    "flowers102",
    "sst2",
    "pcam",
]


def tree(rev: str | None, dest: Path) -> Path:
    """The project's workflow and package as of ``rev`` (git archive), or this tree's (None)."""
    dest.mkdir(parents=True)
    names = ["Snakefile", "params.yaml", "workflow", "flyp"]
    if rev is None:
        for name in names:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
        return dest
    archive = subprocess.run(
        ["git", "archive", rev, *names], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def commands(code: Path, preset: str, config: list[str]) -> list[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "FLYP_CACHE": str(code / ".cache"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("DVC_STAGE", None)
    done = subprocess.run(
        [
            "snakemake",
            "-n",
            "-p",
            "--forceall",
            "--cores",
            "16",
            "--config",
            f"benchmark={preset}",
            *config,
            "--",
            "results/table.csv",
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"{preset} ({code}): snakemake -n failed\n{done.stdout[-2000:]}{done.stderr}")
    return sorted(
        line.removeprefix("Shell command: ")
        for line in done.stdout.splitlines()
        if line.startswith("Shell command: ")
    )


def renamed(command: str, lpft_scale: float) -> str:
    """An older commit's command with its run names in flyp.runs' layout."""
    command = re.sub(r"/k(\d+)-draw(\d+)/", r"/k\1/draw\2/", command)
    command = re.sub(r"_k(\d+)-draw(\d+)\.log", r"_k\1_draw\2.log", command)

    def values(method: str, names: str) -> str:
        if method == "lpft" and lpft_scale:  # an old LP-FT grid held the lr it trained at
            return re.sub(
                r"^lr([0-9.e+-]+)", lambda v: f"lr{float(v.group(1)) / lpft_scale:g}", names
            )
        return names

    command = re.sub(
        r"(\w+)/sweep-(.+?)-seed(\d+)/",
        lambda m: f"{m[1]}/sweep/{values(m[1], m[2])}/seed{m[3]}/",
        command,
    )
    command = re.sub(
        r"finetune_(\w+?)_sweep-(.+?)-seed(\d+)\.log",
        lambda m: f"finetune_{m[1]}_sweep_{values(m[1], m[2])}_seed{m[3]}.log",
        command,
    )
    runs = re.search(r"--runs=(\S+)", command)
    if runs:
        seeds = ",".join(r.removeprefix("seed") for r in runs.group(1).split(","))
        command = command.replace(runs.group(0), f"--seeds={seeds}")
    fewshot = re.search(r"--fewshot-runs=(\S*)", command)
    if fewshot:
        draws = [
            re.fullmatch(r"k(\d+)-draw(\d+)", r).groups() for r in fewshot.group(1).split(",") if r
        ]
        shots = ",".join(dict.fromkeys(k for k, _ in draws))
        count = len({d for _, d in draws})
        command = command.replace(fewshot.group(0), f"--shots={shots} --draws {count}")
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the older commit")
    parser.add_argument("--config", nargs="*", default=[], help="KEY=VALUE overrides, both sides")
    parser.add_argument("--no-rename", dest="rename", action="store_false")
    parser.add_argument(
        "--lpft-scale",
        type=float,
        default=0.1,
        help="the embedded LP-FT grid's old lrs were this times the new grid's",
    )
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old, new = tree(args.old, Path(tmp) / "old"), tree(None, Path(tmp) / "new")
        differ = 0
        for preset in args.presets:
            before = commands(old, preset, args.config)
            if args.rename:
                before = sorted(renamed(c, args.lpft_scale) for c in before)
            after = commands(new, preset, args.config)
            gone, added = sorted(set(before) - set(after)), sorted(set(after) - set(before))
            print(
                f"{preset}: {len(before)} jobs before, {len(after)} after, "
                f"{len(gone)} commands only before, {len(added)} only after"
            )
            for label, lines in (("-", gone), ("+", added)):
                for line in lines[:20]:
                    print(f"  {label} {line}")
                if len(lines) > 20:
                    print(f"  {label} ... {len(lines) - 20} more")
            differ += len(gone) + len(added)
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
