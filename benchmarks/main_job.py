"""Time the main job (`snakemake --cores all results/table.csv`) from scratch, per rule.

Runs in a temporary copy of the project so the working tree's outputs are untouched:

    python benchmarks/main_job.py                 # the default (full) embedded benchmark
    python benchmarks/main_job.py --scale smoke --set presets.embedded.fewshot.shots=[2]
                                                  # the tiny world the tests use (2-shot draws)
    python benchmarks/main_job.py --set 'methods=[zeroshot, ft, flyp]' --set 'seeds=[0]' \
        --set presets.embedded.fewshot.shots=[2]  # a subset (YAML values, dotted keys)

Prints each job's wall time (from Snakemake's log) and the total, and the resulting table.

    python benchmarks/main_job.py --against 49e393b   # that commit's job, then this tree's
    python benchmarks/main_job.py --rev 49e393b       # only that commit's job

runs the same job for a commit (its code, rules and params.yaml, from `git archive`) and then for
the working tree, one after the other on this machine, each with its own code (PYTHONPATH) and an
empty flyp parse cache; prints both, the ratio of the wall times, and whether the two tables give
the same numbers.

    python benchmarks/main_job.py --workdir /tmp/probe --set ... # a probe of the world

runs in a folder that is kept: the working tree's code and params.yaml (with the --set keys) are
copied over it each time, and Snakemake reruns only what they change, so probes that differ in
their finetuning settings share one pretrained CLIP. The times are then of the rerun part only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ["Snakefile", "params.yaml", "workflow", "flyp"]  # no .dvc/: nothing to record


def job_times(log: str) -> list[tuple[str, float]]:
    """(job, seconds) from a Snakemake log: each job's start stamp to its 'Finished' stamp."""
    stamp, started, names, out = None, {}, {}, []
    for line in log.splitlines():
        if m := re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line.strip()):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            pending = m.group(1)
        elif m := re.match(r"^wildcards: method=(\w+)", line.strip()):
            pending = f"{pending}[{m.group(1)}]"
        elif m := re.match(r"^jobid: (\d+)", line.strip()):
            started[m.group(1)], names[m.group(1)] = stamp, pending
        elif m := re.match(r"^Finished jobid: (\d+)", line.strip()):
            out.append((names[m.group(1)], (stamp - started[m.group(1)]).total_seconds()))
    return out


def copy_tree(dst: Path, rev: str | None) -> None:
    """The project's files as of ``rev`` (git archive), or of the working tree (None)."""
    dst.mkdir(parents=True, exist_ok=True)
    if rev is None:
        for name in FILES:
            src = ROOT / name
            if src.is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(src, dst / name, ignore=ignore, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst / name)
        return
    archive = subprocess.run(
        ["git", "archive", rev, *FILES], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)


def run_job(root: Path, args) -> tuple[float, str, str]:
    """(wall seconds, Snakemake's log, table.csv) of the main job in the copy at ``root``."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["scale"] = args.scale
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[leaf] = yaml.safe_load(value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(root), "FLYP_CACHE": str(root / ".flyp-cache")}
    env.pop("DVC_STAGE", None)
    t0 = time.time()
    done = subprocess.run(
        ["snakemake", "--cores", args.cores, "results/table.csv"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    total = time.time() - t0
    if done.returncode != 0:
        logs = re.findall(r"log: (\S+) \(check log file", done.stdout + done.stderr)
        tails = [
            f"--- {log}:\n" + "\n".join((root / log).read_text().splitlines()[-15:])
            for log in logs
            if (root / log).is_file()
        ]
        raise SystemExit("\n".join([done.stdout + done.stderr, *tails]))
    return total, done.stdout + done.stderr, (root / "results/table.csv").read_text()


def report(label: str, total: float, log: str) -> None:
    print(f"{label}:")
    by_rule: dict[str, list[float]] = {}
    for job, seconds in job_times(log):
        by_rule.setdefault(job.split("[")[0], []).append(seconds)
    for rule, times in by_rule.items():
        print(f"  {rule:22s} {len(times):4d} jobs {sum(times):8.0f} s job time")
    print(f"  {'total wall time':22s} {total:18.0f} s ({total / 60:.1f} min)")


def same_numbers(old: str, new: str) -> str:
    """Whether two tables give the same numbers (every numeric column both have) per method row."""
    import io

    import pandas as pd

    a, b = pd.read_csv(io.StringIO(old)), pd.read_csv(io.StringIO(new))
    cols = [c for c in a.select_dtypes("number").columns if c in b.columns]
    merged = a[["method", *cols]].merge(
        b[["method", *cols]], on="method", suffixes=("_old", "_new")
    )
    if len(merged) != len(a) or len(merged) != len(b):
        return f"different rows ({len(a)} vs {len(b)}, {len(merged)} in common)"
    diffs = {c: (merged[f"{c}_old"] - merged[f"{c}_new"]).abs().max() for c in cols}
    worst = max(diffs, key=diffs.get)
    return (
        "the same in every numeric column"
        if diffs[worst] == 0
        else f"largest difference {diffs[worst]:.4g} (column {worst})"
    )


def print_criteria(root: Path) -> None:
    """The fair-miniature criteria (benchmarks/miniature.py) on the run in ``root``, where it ran
    the embedded benchmark."""
    if not (root / "results/embedded").is_dir():
        return
    from miniature import check, report  # this script's folder is on sys.path

    print("miniature criteria (benchmarks/miniature.py):")
    print(report(check([root / "results/embedded"], root / "data/embedded/tables")))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", type=Path, help="Copy the run's results/ and logs/ here.")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="Override a key of params.yaml, dotted (repeatable).",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="Also run this commit's job first and compare (time and numbers).",
    )
    parser.add_argument(
        "--rev", metavar="REV", help="Run this commit's job instead of the working tree's."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="Run in this folder and keep it: a rerun redoes only what changed.",
    )
    args = parser.parse_args()
    if args.workdir and args.against:
        parser.error("--workdir runs one job; it does not go with --against")
    return args


def main() -> None:
    args = parse_args()
    print(
        f"scale={args.scale} cores={args.cores} (machine: {os.cpu_count()} CPUs), "
        f"{datetime.now():%Y-%m-%d %H:%M}"
    )
    if args.workdir:
        root = args.workdir.resolve()
        copy_tree(root, args.rev)
        total, log, table = run_job(root, args)
        report(args.rev or "working tree (rerun part)", total, log)
        print(table)
        print_criteria(root)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, rev in ([(args.against, args.against)] if args.against else []) + [
            (args.rev or "working tree", args.rev)
        ]:
            root = Path(tmp) / label.replace(" ", "-")
            copy_tree(root, rev)
            runs[label] = run_job(root, args)
            report(label, runs[label][0], runs[label][1])
        new_total, _, table = runs[args.rev or "working tree"]
        if args.against:
            old_total, _, old_table = runs[args.against]
            print(
                f"speed-up: {old_total / new_total:.2f}x ({old_total:.0f} s -> "
                f"{new_total:.0f} s); numbers: {same_numbers(old_table, table)}"
            )
        print(table)
        root = Path(tmp) / (args.rev or "working-tree")
        print_criteria(root)
        if args.keep:
            for name in ["results", "logs", "models"]:
                shutil.copytree(
                    root / name,
                    args.keep / name,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.parquet"),
                )


if __name__ == "__main__":
    main()
