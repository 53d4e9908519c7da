"""`dvc exp run -S lr=...` against the same change run by `snakemake --cores all`, side by side.

In a temporary copy of the project (its own git repo and DVC cache) on the smoke configuration:
build the table and commit it (the baseline), then time

  1. `dvc exp run -S lr=<value>` (DVC's one stage runs Snakemake, which reruns the jobs the change
     touches, in parallel);
  2. back to the baseline (`git checkout`, `dvc checkout`, `flyp sync --force`), then the same
     change made in params.yaml and `snakemake --cores all results/table.csv`.

Prints both wall times, the jobs each ran, and the ratio (the target: at most 1.2).

    python benchmarks/dvc_experiment.py [--lr 3e-4] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "Snakefile",
    "params.yaml",
    "dvc.yaml",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
    "workflow",
    "flyp",
    ".dvc/config",
    ".dvc/.gitignore",
]
SMOKE = dict(
    scale="smoke", seeds=[0], methods=["zeroshot", "lp", "lpft", "flyp"], alphas=[0.0, 0.5, 1.0]
)


def sh(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def jobs(log: str) -> str:
    rules = re.findall(r"^(?:local)?rule (\w+):", log, re.M)
    return ", ".join(f"{r} x{rules.count(r)}" for r in dict.fromkeys(rules)) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", default="3e-4")
    parser.add_argument("--cores", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        for name in FILES:
            src, dst = ROOT / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params.update(SMOKE)
        params["presets"]["embedded"]["fewshot"] = {"shots": [], "draws": 0, "methods": []}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@example.org",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@example.org",
        }
        env.pop("DVC_STAGE", None)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
            sh(cmd, root, env)
        build, _ = sh(["snakemake", "--cores", args.cores, "results/table.csv"], root, env)
        sh(["git", "add", "-A"], root, env)
        sh(["git", "commit", "-qm", "baseline"], root, env)
        print(f"baseline build: {build:.0f} s")

        dvc_s, dvc_log = sh(["dvc", "exp", "run", "-S", f"lr={args.lr}"], root, env)

        sh(["git", "checkout", "--", "."], root, env)
        sh(["dvc", "checkout", "--force"], root, env)
        sh(["flyp", "sync", "--force"], root, env)
        params["lr"] = float(args.lr)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        smk_s, smk_log = sh(["snakemake", "--cores", args.cores, "results/table.csv"], root, env)

        print(f"dvc exp run -S lr={args.lr}: {dvc_s:.1f} s ({jobs(dvc_log)})")
        print(
            f"snakemake --cores {args.cores} after the same change: {smk_s:.1f} s ({jobs(smk_log)})"
        )
        print(f"ratio dvc / snakemake: {dvc_s / smk_s:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
