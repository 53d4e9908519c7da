# Parameters, validated once at parse time (one-line error naming the key), and path helpers.
import json
import os
import re
import shlex
import sys
from functools import cache

from snakemake.settings.enums import RerunTrigger

from dataclasses import dataclass

from flyp import runs
from flyp.datasets import get_benchmark
from flyp.datasets.owndata import from_spec
from flyp.io import UserError, read_json
from flyp.settings import ARGUMENTS
from flyp.sweep import grid_points, is_swept, point_name
from flyp.workflow.catalog import method_info
from flyp.workflow.codeversion import code_version
from flyp.workflow.config import (
    DRAW_SWITCHES,
    fewshot_protocol,
    load_params,
    method_settings,
    prepare_options,
    read_yaml,
    training_settings,
)
from flyp.workflow.sync import STAGE as DVC_STAGE, TARGET, hold_dvc_lock

try:
    RUN = load_params(config, workflow.source_path("../schemas/params.schema.yaml"))
    BENCHMARK = RUN["benchmark"]
    # What the steps' --benchmark takes: a registered name, or the JSON spec of a preset's own data
    # (dataset: imagefolder | csv; flyp/datasets/owndata.py), from which each step rebuilds it.
    BENCHMARK_ARG = RUN["benchmark_spec"] or BENCHMARK
    BENCH = get_benchmark(BENCHMARK_ARG)
    # Own data: the images' names, sizes and mtimes, hashed, so that an image added, removed or
    # touched reruns prepare_data and what follows it (none for a registered benchmark).
    SOURCE_FINGERPRINT = (
        {"images": from_spec(BENCHMARK_ARG).fingerprint()} if RUN["benchmark_spec"] else {}
    )
except UserError as e:
    sys.exit(f"error: {e}")

TABLES = f"data/{BENCHMARK}/tables"  # prepared Parquet tables + manifest.json
CAPTIONS = f"data/{BENCHMARK}/captions"  # FLYP caption tables
EVAL_CACHE = f"data/{BENCHMARK}/evalcache"  # ID-val and eval sets, transformed once (uint8)
# A copy of the train images with the shorter side cut to presets.<name>.data.train_resize px
# (flyp/datasets/resized.py), made once, which every training job reads instead of the full-size
# images: decoding is most of the data path's time (benchmarks/RESULTS.md). It is remade when the
# prepared tables are (the raw train images changed), its code or the side changes, nothing
# else; a training job refuses a copy whose source table or image files changed since.
TRAIN_RESIZE = RUN["data"].get("train_resize")
TRAIN_COPY = f"data/{BENCHMARK}/train_resized"
MODELS = f"models/{BENCHMARK}"
RESULTS = f"results/{BENCHMARK}"
TRAINED_HERE = RUN["model"]["pretrained"] is None  # else: released open_clip weights
# One CLIP pretrained here per pretraining seed (flyp.workflow.config.resolve), shared by every method; with
# several, each run of a method starts from one of them (pretrain_seed), so that a method's mean
# and std over its runs take in the pretraining's variance too. Released weights are one model.
PRETRAIN_SEEDS = RUN["pretrain_seeds"] or [None]
SEVERAL_PRETRAINED = len(PRETRAIN_SEEDS) > 1
PER_PRETRAINED = "-seed{pseed}" if SEVERAL_PRETRAINED else ""  # in the names of what each has
PRETRAINED = f"{MODELS}/pretrained{PER_PRETRAINED}.safetensors"
FEATURES = f"{MODELS}/features{PER_PRETRAINED}.safetensors"  # the linear probe's
KEEP_LAST = RUN.get("selection", "heldout") == "last_epoch"  # full runs keep the last epoch
# `flyp features` options off their defaults (presets.<name>.features): raw features, train split
# through the train transform (the FLYP reference's linear probe); none: the default command.
FEATURES_ARGS = "".join(
    flag
    for flag, on in (
        (" --no-normalize", not RUN.get("features", {}).get("normalize", True)),
        (" --train-transform", RUN.get("features", {}).get("train_transform", False)),
    )
    if on
)

# The runs of a method (flyp/runs.py): a full run per seed of `seeds` (<method>/seed<s>); with a
# `fewshot` protocol, a draw per k and draw (<method>/k<k>/draw<d>); with a sweep, a grid run per
# point of its grid (<method>/sweep/<point>/seed<s>). Each part is a wildcard of its own.
SEEDS = RUN["seeds"]
FEWSHOT = RUN["fewshot"]
DRAWS = list(range(FEWSHOT["draws"]))
METHODS = sorted(set(RUN["methods"]) | set(FEWSHOT["methods"]))

# The preset's sweep (flyp/sweep.py): each method run whose grid has several points trains every
# point once, with the first seed; sweep_select picks the point with the best ID-val score, and
# the full runs of every seed train at it. A one-point grid is a fixed setting. Few-shot runs keep
# the protocol's settings. No grid: the DAG has none of these jobs.
SWEEP = {m: g for m, g in RUN["sweep"].items() if m in RUN["methods"] and is_swept(g)}
SWEEP_SEED = SEEDS[0]
SWEEP_POINTS = {m: {point_name(p): p for p in grid_points(g)} for m, g in SWEEP.items()}
FIXED_SETTINGS = {m: grid_points(g)[0] for m, g in RUN["sweep"].items() if not is_swept(g)}
POINT_NAMES = sorted({re.escape(name) for points in SWEEP_POINTS.values() for name in points})


wildcard_constraints:
    method="|".join(METHODS),
    pseed=r"\d+",
    seed=r"\d+",
    shots=r"\d+",
    draw=r"\d+",
    point="|".join(POINT_NAMES) or "(?!)",  # (?!): no sweep, no grid run


@dataclass(frozen=True)
class Run:
    """One run of a method, read from a job's wildcards (flyp/runs.py): a full run (seed), a
    few-shot draw (shots, draw) or a grid run (point, seed)."""

    method: str
    seed: int | None = None
    shots: int | None = None
    draw: int | None = None
    point: str | None = None

    @staticmethod
    def of(wildcards):
        number = lambda key: None if wildcards.get(key) is None else int(wildcards.get(key))
        return Run(wildcards.method, number("seed"), number("shots"), number("draw"),
                   wildcards.get("point"))

    @property
    def fewshot(self):
        return self.shots is not None

    @property
    def index(self):
        """Run i of a method (seed i of `seeds`, few-shot draw i; a grid run as its full run)."""
        return self.draw if self.fewshot else SEEDS.index(self.seed)

    @property
    def train_seed(self):
        """The seed it trains with: a draw's index for a few-shot draw."""
        return self.draw if self.fewshot else self.seed

    @property
    def folder(self):
        if self.fewshot:
            return runs.draw_run(self.method, self.shots, self.draw)
        if self.point is not None:
            return runs.grid_run(self.method, self.point, self.seed)
        return runs.full_run(self.method, self.seed)


def train_args(cfg):
    """Command-line options of `flyp pretrain` / `flyp finetune` for one training config: every
    setting of flyp.settings, in the order of the commands' options."""
    return " ".join(cli_option(s.name, cfg[s.name]) for s in ARGUMENTS)


def cli_option(key, value):
    """`--key value`, or for a switch `--key` / `--no-key`."""
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {shlex.quote(str(value))}"


# What a step computes with besides its inputs and options, so that Snakemake reruns a job when it
# changes (params are compared by content; see flyp/workflow/codeversion.py): the library code the step's
# `flyp` command reaches (a change that only evaluation calls reruns evaluation, not training),
# and what it reads of the benchmark's definition (a template change reruns the captions and every
# head, not the data or the pretraining).
def step_code(command, *entries):
    return code_version(f"flyp.cli:{command}", *entries)


BENCH_SPEC = {
    "classnames": BENCH.classnames,
    "templates": BENCH.templates,
    "eval_sets": [[s.name, s.ood, s.metric] for s in BENCH.eval_sets],
}
# The functions that map logits to a test set's classes (ImageNet-R and -A) are evaluation code.
EVAL_CODE = [s.project_logits for s in BENCH.eval_sets if s.project_logits is not None]


def method_code(wildcards):
    return finetune_code(wildcards.method)


@cache  # one walk per method, not per job (a preset can have hundreds of few-shot draws)
def finetune_code(method):
    return step_code("finetune", method_info(method).entry)


@cache
def fewshot_code_of(method):
    """A few-shot draw's job trains and evaluates (flyp fewshot)."""
    return step_code("fewshot", method_info(method).entry, *EVAL_CODE)


def fewshot_code(wildcards):
    return fewshot_code_of(wildcards.method)


# Where and how fast a job runs, not what it computes: passed as resources, not `params:`, so
# that changing the machine or --cores reruns nothing.
DEVICE = RUN["runtime"]["device"]


def gpu_count():
    """GPUs this machine offers, found without importing torch (parsing stays light): the ids in
    CUDA_VISIBLE_DEVICES when it is set (up to the first invalid one, as CUDA reads it), else the
    GPUs `nvidia-smi -L` lists; 0 when neither finds any."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for gpu in visible.split(","):
            if not gpu.strip() or gpu.strip().startswith("-"):
                break
            count += 1
        return count
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


# Whether the jobs run on a cluster or cloud executor (`--jobs`, e.g. the SLURM profile), or this
# is one of its jobs: the machine that parses the workflow there may have no GPU, so it cannot
# tell what `auto` will find, and the scheduler, not this machine, hands out the GPUs.
CLUSTER = workflow.nodes is not None or workflow.remote_exec

# A job on a GPU (device cuda or cuda:N, or auto where a GPU is found or on a cluster) declares
# `gpu=1` (a training job `gpu=runtime.gpus_per_job`), the resource Snakemake's SLURM executor
# turns into --gpus. A local run then runs at most as many of them at once as the machine has GPUs
# (each job, or each rank, claims a free one: flyp.devices.resolve_device), unless
# `--resources gpu=N` says otherwise. On a cluster the scheduler hands out GPUs.
GPUS = gpu_count()
if DEVICE.startswith("cuda") and GPUS == 0 and not CLUSTER:
    sys.exit(f"error: params.yaml: runtime.device: {DEVICE}, but this machine has no GPU "
             f"(CUDA_VISIBLE_DEVICES and nvidia-smi -L show none); use auto or cpu, or a cluster "
             f"profile (--profile workflow/profiles/slurm)")
USES_GPU = DEVICE.startswith("cuda") or (DEVICE == "auto" and (GPUS > 0 or CLUSTER))
# The device a job is started with: a job that declares a GPU insists on one (auto becomes cuda), so
# that a node without a GPU stops it with one line (flyp.devices.resolve_device) instead of
# training on the CPU; a job that declares none runs on the CPU.
JOB_DEVICE = DEVICE if DEVICE != "auto" else "cuda" if USES_GPU else "cpu"
GPU = {"gpu": 1} if USES_GPU else {}
# runtime.device cuda:N names one GPU for every job: a local run then has one GPU to hand out, so
# its GPU jobs run one at a time on GPU N (and a job started beside them waits for N's lock:
# flyp.devices.claim_gpu).
LOCAL_GPUS = 1 if ":" in DEVICE else GPUS
if USES_GPU and GPUS > 0 and not CLUSTER and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = LOCAL_GPUS
    print(f"note: GPU jobs: at most {LOCAL_GPUS} at once, "
          + (f"all on {DEVICE}" if ":" in DEVICE else "one GPU each")
          + " (--resources gpu=N to change)", file=sys.stderr)

# What each kind of job asks for besides GPUs (presets.<benchmark>.resources in params.yaml): cores,
# host memory (mem_mb) and wall-clock minutes (runtime, SLURM's --time). Resources, not params:
# changing them reruns nothing. A local run gives a job at most --cores cores.
SIZES = RUN["resources"]


def trains(wildcards):
    """Whether a finetune job trains (else it is sized and placed as an inference job)."""
    return method_info(wildcards.method).trains


def train_copy(wildcards):
    """The resized copy a job reads: for a method that trains, when the preset asks for one."""
    return {"train_copy": TRAIN_COPY} if TRAIN_RESIZE and trains(wildcards) else {}


def train_copy_args(wildcards):
    """` --train-data DIR` (quoted), or nothing (the command as without a copy)."""
    return f" --train-data {shlex.quote(TRAIN_COPY)}" if train_copy(wildcards) else ""


def finetune_kind(wildcards):
    return "finetune" if trains(wildcards) else "infer"


def finetune_gpus(wildcards):
    """GPUs of a finetune job: runtime.gpus_per_job to train, 1 for one process (zero-shot, LP)."""
    return GPUS_PER_JOB if trains(wildcards) else 1


def job_threads(kind, gpus=0):
    """Cores of a kind of job. A local job on `gpus` GPUs takes at most their share of the host's
    cores, so that the GPUs, not the cores, bound how many jobs run at once (one per GPU)."""
    threads = SIZES[kind]["threads"]
    if gpus and USES_GPU and GPUS > 0 and not CLUSTER:
        threads = min(threads, max(1, workflow.cores * gpus // LOCAL_GPUS))
    return threads


def finetune_threads(wildcards):
    return job_threads(finetune_kind(wildcards), finetune_gpus(wildcards))


def job_size(kind):
    """Memory (MB) and wall-clock minutes of a kind of job, as rule resources; `kind` may be a
    function of the wildcards (finetune_kind)."""
    if callable(kind):
        return {key: (lambda wildcards, key=key: SIZES[kind(wildcards)][key])
                for key in ("mem_mb", "runtime")}
    return {key: SIZES[kind][key] for key in ("mem_mb", "runtime")}


WORKERS = RUN["runtime"]["workers"]
# How often a training job writes a resume state mid-epoch: a resource, as the worker count (the
# run's result is the same), passed as text (a resource is a number or a string).
CHECKPOINT_MINUTES = str(RUN["runtime"]["checkpoint_minutes"])
# One training run over several GPUs (runtime.gpus_per_job above 1): torchrun starts a process per
# GPU (flyp/distributed.py). A param, as the switches below: the last digits of a result move.
GPUS_PER_JOB = RUN["runtime"]["gpus_per_job"]
if GPUS_PER_JOB > 1 and ":" in DEVICE:
    sys.exit(f"error: params.yaml: runtime.device: {DEVICE} names one GPU, but "
             f"runtime.gpus_per_job: {GPUS_PER_JOB} starts a process per GPU; use auto or cuda")
# Switches that change how a GPU computes (TF32 in the training steps, as resolved for the preset;
# compilation, recomputation, evaluation arithmetic): params, not resources, since on a GPU they
# move the last digits of a result. BatchNorm over every rank's rows (sync_bn) is passed to the
# jobs that torchrun starts alone: one process has nothing to synchronise.
# grad_checkpointing auto is decided by the job on its GPU (flyp.memplan: on where the job's memory
# plan does not fit without it); a job on the CPU runs it off, as `--no-grad-checkpointing` says.
def speed_option(key):
    value = RUN["runtime"][key]
    if value == "auto":
        return cli_option(key, False) if JOB_DEVICE == "cpu" else f"--{key.replace('_', '-')} auto"
    return cli_option(key, value)


SPEED_ARGS = " ".join(
    speed_option(k)
    for k in ("tf32", "compile", "grad_checkpointing", *(("sync_bn",) if GPUS_PER_JOB > 1 else ()))
)
# Deterministic kernels (runtime.deterministic): passed when asked for alone, so that the commands
# of a run without it stay as they were.
if RUN["runtime"]["deterministic"]:
    SPEED_ARGS += " --deterministic"
EVAL_PRECISION = RUN["runtime"]["eval_precision"]
TRAIN_LAUNCH = (
    f"torchrun --standalone --nproc_per_node {GPUS_PER_JOB} -m flyp.cli"
    if GPUS_PER_JOB > 1
    else "flyp"
)
TRAIN_GPU = {"gpu": GPUS_PER_JOB} if USES_GPU else {}
# A finetune job of a method that does not train (zero-shot, the linear probe) runs in one process.
FINETUNE_GPU = {"gpu": finetune_gpus} if USES_GPU else {}
ENV = "../envs/flyp.yaml"


def pretrain_seed(run):
    """The pretraining seed of the model a run starts from: with several, run i takes the
    (i mod n)-th (Run.index)."""
    return PRETRAIN_SEEDS[run.index % len(PRETRAIN_SEEDS)]


def of_pretraining(path, run):
    """``path`` (PRETRAINED, FEATURES) for the pretrained model run ``run`` starts from."""
    return path.format(pseed=pretrain_seed(run))


def pretrained_model(wildcards):
    return of_pretraining(PRETRAINED, Run.of(wildcards))


def sweep_point(run):
    """The grid point a run trains at: a grid run's own; for a full run of a swept method the one
    sweep_select picked; a one-point grid's; none otherwise (few-shot runs included)."""
    if run.point is not None:
        return SWEEP_POINTS[run.method][run.point]
    if run.fewshot:
        return {}
    if run.method in SWEEP:
        return read_json(sweep_selection_file(run.method))["picked"]
    return FIXED_SETTINGS.get(run.method, {})


def sweep_selection_file(method):
    """sweep_select's output for a method: sweep_select is a checkpoint, so while it has not run
    this raises the exception that makes Snakemake hold back the jobs asking (a full run's input
    and params), and add them to the DAG once it has."""
    return checkpoints.sweep_select.get(method=method).output[0]


def sweep_selection(wildcards):
    """The selection a swept method's full run trains at (its params read it)."""
    run = Run.of(wildcards)
    if run.method in SWEEP and run.point is None and not run.fewshot:
        return {"sweep": sweep_selection_file(run.method)}
    return {}


def picked_grid_run(wildcards):
    """The grid run sweep_select picked for a method (once it has run), and the selection."""
    selection = sweep_selection_file(wildcards.method)
    point = read_json(selection)["picked_point"]
    folder = f"{MODELS}/{runs.grid_run(wildcards.method, point, SWEEP_SEED)}"
    return {"sweep": selection, "model": f"{folder}/best.safetensors",
            "log_csv": f"{folder}/train_log.csv"}


def report_sweep_args(wildcards, output):
    """The report's sweep options (report.smk), with a space before them; none without a
    sweep, so that the command is as it was."""
    if not SWEEP:
        return ""
    return (f" --sweep-methods={shlex.quote(','.join(SWEEP))} "
            f"--sweep-plot {shlex.quote(output.sweep_plot)} "
            f"--sweep-csv {shlex.quote(output.sweep_csv)}")


def finetune_config(run):
    """Everything that decides a finetuning run (Snakemake's params trigger sees it all): its
    training settings (flyp.workflow.config.training_settings: preset, scale, method_options,
    few-shot protocol, sweep point, top-level keys, lr_scale), its seed, few-shot draw (with the
    protocol's switches that are not the default: flyp.workflow.config.fewshot_protocol) and the
    method's own options. A method that does not train (zero-shot, the linear probe) depends on
    none of the training settings, so `-S lr=...` does not rerun it."""
    point = sweep_point(run)
    options = method_settings(RUN, run.method, point)
    draw = run.draw if run.fewshot else 0
    if not method_info(run.method).trains:
        return {"seed": run.train_seed, "shots": run.shots, "draw": draw, "options": options}
    cfg = training_settings(RUN, run.method, seed=run.train_seed, classes=len(BENCH.classnames),
                            shots=run.shots, point=point)
    protocol = fewshot_protocol(RUN) if run.fewshot else {}
    # presets.<name>.selection: last_epoch: a full run keeps its last epoch (set only then, so
    # that the default's params, and so its jobs, stay as they were)
    keep = {"keep_last": True} if KEEP_LAST and not run.fewshot else {}
    return {**cfg, "shots": run.shots, "draw": draw, **protocol, "options": options, **keep}


# A method whose full runs do not depend on the seed (flyp.methods.Method.seeded: zero-shot, the
# linear probe) is run once, for the first seed; what another seed's run would have made is that
# run's (its result files are copied by evaluate.smk's reuse_seedless, so the table keeps a row per
# seed set).
# With several pretraining seeds no method is: each seed's run starts from its own pretrained model.
SEEDLESS = [m for m in METHODS if not method_info(m).seeded] if not SEVERAL_PRETRAINED else []


def full_seed(method, seed):
    """The seed whose full run stands for (method, seed): the first one for a seedless method."""
    return SEEDS[0] if method in SEEDLESS else seed


def method_inputs(wildcards):
    """Files a method reads besides the data (see flyp.methods.Method.inputs): the pretrained
    model's features, or another method's checkpoint of the same run (a grid run: of its full
    run)."""
    run, files = Run.of(wildcards), {}
    for option, kind in method_info(run.method).inputs.items():
        if kind == "features":
            files[option] = of_pretraining(FEATURES, run)
            continue
        other = kind.split(":", 1)[1]  # "method:<name>"
        if run.fewshot:
            folder = runs.draw_run(other, run.shots, run.draw)
        else:
            folder = runs.full_run(other, full_seed(other, run.seed))
        files[option] = f"{MODELS}/{folder}/best.safetensors"
    return files


def finetune_args(wildcards, input):
    """`flyp finetune` options of one run."""
    cfg = finetune_config(Run.of(wildcards))
    args = [train_args(cfg) if "lr" in cfg else f"--seed {cfg['seed']}"]
    if cfg["shots"] is not None:
        args.append(f"--shots {cfg['shots']} --draw {cfg['draw']}")
        args += [cli_option(k, cfg[k]) for k in DRAW_SWITCHES if k in cfg]
    if cfg.get("keep_last"):
        args.append("--keep-last")
    options = dict(cfg["options"])
    options.update({k: input[k] for k in method_inputs(wildcards)})
    args += [f"-o {shlex.quote(f'{k}={v}')}" for k, v in sorted(options.items())]
    return " ".join(args)


def zeroshot_inputs(wildcards):
    """The zero-shot checkpoint an ensemble mixes with, and its scores: alpha 0 of the ensemble
    is that checkpoint itself, so its scores are read from the zero-shot evaluation, not
    recomputed (the zero-shot run itself has nothing to read)."""
    folder = runs.full_run("zeroshot", full_seed("zeroshot", int(wildcards.seed)))
    files = {"zeroshot": f"{MODELS}/{folder}/best.safetensors"}
    if wildcards.method != "zeroshot":
        files["zeroshot_metrics"] = f"{RESULTS}/{folder}/metrics.json"
    return files


def whole_dag_reason():
    """Why this run may not stand for DVC's stage (None: it may): DVC records a run only when it
    brought the whole DAG up to date with params.yaml, so that dvc.lock never calls current an
    output made by other code or parameters."""
    settings = workflow.dag_settings
    if config != read_yaml("params.yaml"):
        return "this run overrode params.yaml (--config)"
    if not set(settings.targets) <= {TARGET, "all"}:
        return f"its targets ({', '.join(sorted(settings.targets))}) are not the whole DAG"
    if settings.until or settings.omit_from or settings.allowed_rules or settings.batch:
        return "--until, --omit-from, --allowed-rules or --batch left part of the DAG out"
    if set(settings.rerun_triggers) != RerunTrigger.all():
        return "--rerun-triggers was narrowed, so stale outputs may have been kept"
    if workflow.touch:
        return "--touch marks outputs current without making them"
    return None


DVC_LOCK = []  # the lock lock_out_dvc holds, while it holds it


def lock_out_dvc():
    """While this run builds (from its first job; not for a dry run or a run with nothing to do),
    no DVC command starts in the workspace: `dvc exp run` would rewrite params.yaml, then the
    outputs. The run holds DVC's own lock until record_in_dvc or its end. Not under DVC, which
    holds it and runs this, nor in a cluster job (the main process holds it)."""
    if os.environ.get("DVC_STAGE") or not workflow.is_main_process:
        return
    try:
        lock = hold_dvc_lock()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if lock is not None:  # None outside a DVC project
        DVC_LOCK.append(lock)


def record_in_dvc():
    """After a direct `snakemake` run of the whole DAG, let DVC record what was built (dvc.lock and
    its cache), so that `dvc status`, `dvc exp run`, `dvc push` and `dvc metrics diff` start from
    it. Skipped when DVC itself runs Snakemake (it sets DVC_STAGE and records the run) and outside
    a DVC project; when DVC cannot record, its own error is shown."""
    import shutil
    import subprocess

    while DVC_LOCK:
        DVC_LOCK.pop().close()  # `dvc commit` below takes it
    if os.environ.get("DVC_STAGE") or not os.path.isdir(".dvc") or not shutil.which("dvc"):
        return
    reason = whole_dag_reason()
    if reason:
        print(f"note: outputs not recorded in DVC: {reason}", file=sys.stderr)
        return
    # --no-relink: leave the files (and their mtimes, which Snakemake compares) as they are.
    cmd = ["dvc", "commit", "--force", "--no-relink", DVC_STAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line.removeprefix("ERROR: ").strip() for line in done.stderr.splitlines()
                  if line.startswith("ERROR")] or done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"note: outputs not recorded in DVC ({shlex.join(cmd)}: {errors[0]})",
              file=sys.stderr)
