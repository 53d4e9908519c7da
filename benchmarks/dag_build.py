"""How long Snakemake takes to build the main job's DAG (`snakemake -n`), for a commit and for the
working tree, side by side: each in its own copy with its own code (PYTHONPATH), the working
tree's first with an empty parse cache (flyp.workflow.parsecache) and then with the cache it left.

    python benchmarks/dag_build.py --against 49e393b

Also times a no-op run (`snakemake --cores all results/table.csv` with nothing to do) where the
given project folder holds a built main job (`--built .`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["Snakefile", "params.yaml", "workflow", "flyp"]


def copy_tree(dst: Path, rev: str | None) -> None:
    dst.mkdir(parents=True)
    if rev is None:
        for name in FILES:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst / name)
        return
    archive = subprocess.run(
        ["git", "archive", rev, *FILES], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="Also time this commit's DAG.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--built", type=Path, help="A project folder with a built main job.")
    args = parser.parse_args()
    dry = ["snakemake", "-n", "--forceall", "--cores", "all", "results/table.csv"]
    print(f"machine: {os.cpu_count()} CPUs; `{' '.join(dry)}`, {args.repeat} runs each")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for label, rev in ([(args.against, args.against)] if args.against else []) + [
            ("working tree", None)
        ]:
            root = Path(tmp) / label.replace(" ", "-")
            copy_tree(root, rev)
            env = {**os.environ, "PYTHONPATH": str(root), "FLYP_CACHE": str(cache)}
            times = [timed(dry, root, env) for _ in range(args.repeat)]
            warm = times[1:] if rev is None else times
            extra = f" (first, empty parse cache: {times[0]:.1f} s)" if rev is None else ""
            print(f"  {label:14s} median {statistics.median(warm):5.1f} s{extra}")
    if args.built:
        env = {**os.environ, "PYTHONPATH": str(args.built.resolve())}
        noop = ["snakemake", "--cores", "all", "results/table.csv"]
        times = [timed(noop, args.built, env) for _ in range(args.repeat)]
        print(f"  no-op run in {args.built}: median {statistics.median(times):.1f} s")


if __name__ == "__main__":
    main()
