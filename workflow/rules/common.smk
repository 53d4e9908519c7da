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

# A run of a method is either a full run with one seed ("seed0") or one draw of the few-shot
# protocol ("k4-draw0": 4 images per class, draw 0); only presets with a `fewshot` have draws.
FULL_RUNS = [f"seed{s}" for s in RUN["seeds"]]
FEWSHOT = RUN["fewshot"]
FEWSHOT_RUNS = [f"k{k}-draw{d}" for k in FEWSHOT["shots"] for d in range(FEWSHOT["draws"])]
METHODS = sorted(set(RUN["methods"]) | set(FEWSHOT["methods"]))


wildcard_constraints:
    method="|".join(METHODS),
    run=r"seed\d+|k\d+-draw\d+",


def train_args(cfg):
    """Command-line options of `flyp pretrain` / `flyp finetune` for one training config."""
    keys = ["epochs", "lr", "wd", "batch_size", "warmup_steps", "grad_clip", "seed", "precision"]
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(cfg[k]))}" for k in keys)


# Where and how fast a job runs, not what it computes: passed as resources, not `params:`, so
# that changing the machine or --cores reruns nothing.
DEVICE = RUN["runtime"]["device"]
# Two jobs at a time share the cores: each job's startup (imports) overlaps the other's compute.
JOB_THREADS = max(1, workflow.cores // 2)
WORKERS = RUN["runtime"]["workers"]
ENV = "../envs/flyp.yaml"


TRAIN_KEYS = {"epochs", "lr", "wd", "batch_size", "warmup_steps", "grad_clip", "precision"}


def parse_run(run):
    """(seed, shots, draw) of a run name; shots is None for a full run."""
    if run.startswith("seed"):
        return int(run[4:]), None, 0
    shots, draw = run[1:].split("-draw")
    return int(draw), int(shots), int(draw)


def finetune_config(method, run):
    """Everything that decides a finetuning run (Snakemake's params trigger sees it all): the
    shared finetuning settings, the few-shot protocol's, then the method's own overrides."""
    seed, shots, draw = parse_run(run)
    options = dict(RUN["method_options"].get(method, {}))
    cfg = {**RUN["finetune"], "seed": seed}
    if shots is not None:
        cfg.update(FEWSHOT["finetune"])
        if cfg.get("batch_size") is None:  # the whole k-shot training set in one batch
            cfg["batch_size"] = shots * len(BENCH.classnames)
    cfg.update({k: options.pop(k) for k in list(options) if k in TRAIN_KEYS})
    if "lr_scale" in options:  # relative to the shared lr, so `-S lr=...` moves it too
        cfg["lr"] = cfg["lr"] * float(options.pop("lr_scale"))
    return {**cfg, "shots": shots, "draw": draw, "options": options}


def method_inputs(wildcards):
    """Files a method reads besides the data (see flyp.methods.Method.inputs)."""
    from flyp.methods import get_method

    files = {}
    for option, kind in get_method(wildcards.method).inputs.items():
        if kind == "features":
            files[option] = f"{MODELS}/features.safetensors"
        else:  # "method:<name>": that method's checkpoint of the same run
            files[option] = f"{MODELS}/{kind.split(':', 1)[1]}/{wildcards.run}/best.safetensors"
    return files


def finetune_args(wildcards, input):
    """`flyp finetune` options of one (method, run)."""
    cfg = finetune_config(wildcards.method, wildcards.run)
    args = [train_args(cfg)]
    if cfg["shots"] is not None:
        args.append(f"--shots {cfg['shots']} --draw {cfg['draw']}")
    options = dict(cfg["options"])
    options.update({k: input[k] for k in method_inputs(wildcards)})
    args += [f"-o {shlex.quote(f'{k}={v}')}" for k, v in options.items()]
    return " ".join(args)


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
