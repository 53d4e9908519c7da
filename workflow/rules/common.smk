# Parameters, validated once at parse time (one-line error naming the key), and path helpers.
import json
import os
import shlex
import sys

from flyp.config import load_params, read_yaml
from flyp.datasets import get_benchmark
from flyp.io import UserError

try:
    RUN = load_params(config, workflow.source_path("../schemas/params.schema.yaml"))
except UserError as e:
    sys.exit(f"error: {e}")

BENCHMARK = RUN["benchmark"]
BENCH = get_benchmark(BENCHMARK)
TABLES = f"data/{BENCHMARK}/tables"  # prepared Parquet tables + manifest.json
CAPTIONS = f"data/{BENCHMARK}/captions"  # FLYP caption tables
MODELS = f"models/{BENCHMARK}"
RESULTS = f"results/{BENCHMARK}"
TRAINED_HERE = RUN["model"]["pretrained"] is None  # else: released open_clip weights


wildcard_constraints:
    method="|".join(RUN["methods"]),


def train_args(cfg):
    """Command-line options of `flyp pretrain` / `flyp finetune` for one training config."""
    keys = ["epochs", "lr", "wd", "batch_size", "warmup_steps", "grad_clip", "seed", "precision"]
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(cfg[k]))}" for k in keys)


# Where and how fast a job runs, not what it computes: passed as resources, not `params:`, so
# that changing the machine or --cores reruns nothing.
DEVICE = RUN["runtime"]["device"]
WORKERS = RUN["runtime"]["workers"]
ENV = "../envs/flyp.yaml"


def finetune_config(method):
    """Everything that decides a finetuning run (Snakemake's params trigger sees it all)."""
    return {**RUN["finetune"], "seed": RUN["seed"],
            "options": RUN["method_options"].get(method, {})}


def record_in_dvc():
    """After a direct `snakemake` run, let DVC record what was built (dvc.lock and its cache) so
    that `dvc status`, `dvc exp run` and `dvc metrics diff` start from it. Skipped when DVC itself
    runs Snakemake (it sets DVC_STAGE) and outside a DVC project."""
    import os
    import shutil
    import subprocess

    if os.environ.get("DVC_STAGE") or not os.path.isdir(".dvc") or not shutil.which("dvc"):
        return
    if config != read_yaml("params.yaml"):
        print("note: outputs not recorded in DVC: this run overrode params.yaml (--config)",
              file=sys.stderr)
        return
    # --no-relink: leave the files (and their mtimes, which Snakemake compares) as they are.
    cmd = ["dvc", "commit", "--force", "--quiet", "--no-relink"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["unknown"])[-1]
        print(f"note: outputs not recorded in DVC (dvc commit: {reason})", file=sys.stderr)
