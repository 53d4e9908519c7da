"""Time the main job (`snakemake --cores all results/table.csv`) from scratch, per rule.

Runs in a temporary copy of the project so the working tree's outputs are untouched:

    python benchmarks/main_job.py                 # the default (full) embedded benchmark
    python benchmarks/main_job.py --scale smoke   # the tiny configuration the tests use
    python benchmarks/main_job.py --set 'methods=[zeroshot, ft, flyp]' --set 'seeds=[0]' \
        --set 'fewshot={shots: []}'               # a subset (YAML values, top-level keys)

Prints each job's wall time (from Snakemake's log) and the total, and the resulting table.
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
FILES = ["Snakefile", "params.yaml", "workflow"]  # no .dvc/: nothing to record


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", type=Path, help="Copy the run's results/ and logs/ here.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="Override a top-level key of params.yaml (repeatable).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in FILES:
            src, dst = ROOT / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["scale"] = args.scale
        for item in args.set:
            key, _, value = item.partition("=")
            params[key] = yaml.safe_load(value)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        t0 = time.time()
        done = subprocess.run(["snakemake", "--cores", args.cores, "results/table.csv"],
                              cwd=root, capture_output=True, text=True)
        total = time.time() - t0
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
        print(f"scale={args.scale} cores={args.cores} (machine: {os.cpu_count()} CPUs)")
        for job, seconds in job_times(done.stdout + done.stderr):
            print(f"  {job:22s} {seconds:7.0f} s")
        print(f"  {'total wall time':22s} {total:7.0f} s ({total / 60:.1f} min)")
        print((root / "results/table.csv").read_text())
        if args.keep:
            for name in ["results", "logs", "models"]:
                shutil.copytree(root / name, args.keep / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.safetensors", "*.parquet"))


if __name__ == "__main__":
    main()
