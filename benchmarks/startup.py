"""Where a job's seconds go before it works, and the jobs the fast-feedback work changed, old code
and new side by side on this machine:

1. the import floor: a bare Python, then `import torch`, `torch._dynamo`, `torchvision`, `timm`,
   `open_clip`, pandas and pyarrow, each in a fresh process;
2. a smoke-scale zero-shot job (`flyp finetune --method zeroshot`, ID-val from the evaluation
   cache), with the code of ``--old`` (a commit, from `git archive`) and of this tree;
3. a few-shot draw (FLYP, k=2, 2 epochs): `flyp finetune` then `flyp evaluate` (two processes,
   as the old workflow ran it) against `flyp fewshot` (one);
4. where the new zero-shot job's import time goes, per top-level package (`python -X importtime`).

    python benchmarks/startup.py                 # --old fe8e67c, 5 alternating repeats
    python benchmarks/startup.py --repeats 9 --workspace /tmp/smoke-ws

The inputs of those jobs (the smoke world's tables, captions, one pretrained CLIP and the
evaluation cache) are built once with Snakemake in ``--workspace`` (a temporary folder unless
given; reused when it holds them). Old and new alternate, so that a slower minute of the machine
falls on both; the median and the fastest of each are printed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "scale": "smoke",
    "seeds": [0],
    "methods": ["zeroshot"],
    "presets": {"embedded": {"pretrain": {"seeds": [0]}, "sweep": {}}},
}
TARGETS = [
    "models/embedded/pretrained.safetensors",
    "data/embedded/evalcache",
    "data/embedded/captions/captions.parquet",
]
IMPORTS = [
    "pass",
    "import torch",
    "import torch, torch._dynamo",
    "import torch, torchvision",
    "import torch, timm",
    "import open_clip",
    "import pandas, pyarrow.parquet",
]


def build_workspace(ws: Path) -> None:
    """The smoke world's inputs of a zero-shot job and a few-shot draw, made by the workflow."""
    if all((ws / t).exists() for t in TARGETS):
        return
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "params.yaml", "workflow"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ws / name)
    (ws / "smoke.yaml").write_text(yaml.safe_dump(SMOKE))
    subprocess.run(
        ["snakemake", "--cores", "2", "--configfile", "params.yaml", "smoke.yaml", "--", *TARGETS],
        cwd=ws,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def code_tree(rev: str, dest: Path) -> Path:
    """The flyp package as of ``rev``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "flyp"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def timed(cmd: list[str], cwd: Path, code: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds


def flyp(*args: str) -> list[str]:
    return [sys.executable, "-m", "flyp.cli", *args]


COMMON = [
    "--benchmark",
    "embedded",
    "--data",
    "data/embedded/tables",
    "--captions",
    "data/embedded/captions",
    "--pretrained",
    "models/embedded/pretrained.safetensors",
    "--eval-cache",
    "data/embedded/evalcache",
    "--threads",
    "1",
    "--device",
    "cpu",
]


def zeroshot_job(out: Path) -> list[list[str]]:
    return [
        flyp(
            "finetune",
            *COMMON,
            "--method",
            "zeroshot",
            "--seed",
            "0",
            "--out",
            str(out / "best.safetensors"),
            "--log-csv",
            str(out / "train_log.csv"),
        )
    ]


DRAW = [
    "--method",
    "flyp",
    "--epochs",
    "2",
    "--lr",
    "1e-4",
    "--wd",
    "0.1",
    "--batch-size",
    "24",
    "--seed",
    "0",
    "--shots",
    "2",
    "--draw",
    "0",
]


def draw_two_processes(out: Path) -> list[list[str]]:
    ckpt = str(out / "best.safetensors")
    return [
        flyp("finetune", *COMMON, *DRAW, "--out", ckpt, "--log-csv", str(out / "train_log.csv")),
        flyp(
            "evaluate",
            "--benchmark",
            "embedded",
            "--data",
            "data/embedded/tables",
            "--checkpoint",
            ckpt,
            "--eval-cache",
            "data/embedded/evalcache",
            "--metrics-out",
            str(out / "metrics.json"),
            "--provenance-out",
            str(out / "provenance.json"),
            "--threads",
            "1",
            "--device",
            "cpu",
        ),
    ]


def draw_one_process(out: Path) -> list[list[str]]:
    return [
        flyp(
            "fewshot",
            *COMMON,
            *DRAW,
            "--out",
            str(out / "best.safetensors"),
            "--log-csv",
            str(out / "train_log.csv"),
            "--metrics-out",
            str(out / "metrics.json"),
            "--provenance-out",
            str(out / "provenance.json"),
        )
    ]


def compare(name: str, variants: dict, ws: Path, tmp: Path, repeats: int) -> dict:
    """Run each variant ``repeats`` times, alternating; print median and fastest of each."""
    times = collections.defaultdict(list)
    for i in range(repeats):
        for label, (code, commands) in variants.items():
            out = tmp / f"{label}-{i}"
            out.mkdir()
            times[label].append(sum(timed(c, ws, code) for c in commands(out)))
            shutil.rmtree(out)
    print(f"\n{name} ({repeats} runs each, alternating; seconds)")
    for label, values in times.items():
        print(f"  {label:<28} median {statistics.median(values):6.2f}   fastest {min(values):6.2f}")
    return {label: statistics.median(values) for label, values in times.items()}


def import_floor(repeats: int) -> None:
    print(f"\nimport floor (fastest of {repeats} fresh processes; seconds)")
    for statement in IMPORTS:
        best = min(timed([sys.executable, "-c", statement], ROOT, ROOT) for _ in range(repeats))
        print(f"  {statement:<34} {best:6.2f}")


def import_breakdown(ws: Path, tmp: Path) -> None:
    """Self time of every imported module of the new zero-shot job, summed per top-level
    package (torch._dynamo apart)."""
    out = tmp / "importtime"
    out.mkdir()
    cmd = zeroshot_job(out)[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    per_package = collections.Counter()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        name = name.strip()
        package = "torch._dynamo" if name.startswith("torch._dynamo") else name.split(".")[0]
        per_package[package] += int(self_us)
    total = sum(per_package.values())
    print(f"\nthe new zero-shot job's imports: {total / 1e6:.2f} s in all, by package")
    for package, us in per_package.most_common(10):
        print(f"  {package:<28} {us / 1e6:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="fe8e67c", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="smoke inputs (built here when missing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ws = args.workspace or tmp / "workspace"
        build_workspace(ws)
        old = code_tree(args.old, tmp / "old")
        print(f"machine: {os.cpu_count()} cores; old code: {args.old}; new code: {ROOT}")
        import_floor(args.repeats)
        zs = compare(
            "smoke zero-shot job",
            {f"old ({args.old})": (old, zeroshot_job), "new (this tree)": (ROOT, zeroshot_job)},
            ws,
            tmp,
            args.repeats,
        )
        old_zs, new_zs = zs.values()
        print(f"  new / old: {new_zs / old_zs:.2f}")
        draw = compare(
            "a few-shot draw (FLYP, k=2, 2 epochs), this tree's code",
            {
                "finetune + evaluate (2 jobs)": (ROOT, draw_two_processes),
                "fewshot (1 job)": (ROOT, draw_one_process),
            },
            ws,
            tmp,
            args.repeats,
        )
        two, one = draw.values()
        print(f"  one / two: {one / two:.2f}")
        import_breakdown(ws, tmp)


if __name__ == "__main__":
    main()
