"""Command-line interface: one subcommand per pipeline step.

Every step reads and writes explicit paths, so any of them can be run by hand; the Snakemake rules
in ``workflow/rules/`` only call these commands.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from pathlib import Path

import click

from flyp.io import Preempted, UserError
from flyp.progress import CURVES_ROOT, Watch, curves_folder
from flyp.settings import AUGMENTATIONS, STD_DDOFS, TIES


class _Group(click.Group):
    """Turns a UserError raised anywhere in a command into a one-line message, exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.UsageError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Preempted as e:
            if str(e):  # rank 0's (a run over several ranks)
                _log(str(e))
            ctx.exit(e.exit_code)


def _parse_options(pairs: tuple[str, ...], defaults: dict | None = None) -> dict:
    """``key=value`` strings into a dict; values typed like the matching default when given."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"option {pair!r}: expected KEY=VALUE")
        if defaults is not None:
            if key not in defaults:
                raise UserError(f"unknown option {key!r}; expected one of {sorted(defaults)}")
            kind = type(defaults[key]) if defaults[key] is not None else str
            try:
                value = _parse_bool(value) if kind is bool else kind(value)
            except ValueError:
                raise UserError(
                    f"option {key!r}: expected {kind.__name__}, got {value!r}"
                ) from None
        out[key] = value
    return out


def _parse_bool(value: str) -> bool:
    """true/false (any case, as YAML and Python write them), or 1/0."""
    words = {"true": True, "1": True, "false": False, "0": False}
    if value.strip().lower() not in words:
        raise ValueError(value)
    return words[value.strip().lower()]


def _csv_list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _csv_ints(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _csv_list(value)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers, got {value!r}") from None


def _setup_torch(threads: int, deterministic: bool = False):
    """Torch's CPU threads and, for a training command with --deterministic, deterministic
    kernels: set here, before anything touches CUDA (cuBLAS reads its workspace setting once)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        from flyp.devices import use_deterministic_algorithms

        use_deterministic_algorithms()
    return torch


def _threads_per_rank(threads: int) -> int:
    """A training job's threads shared among the processes torchrun started on this machine."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, threads // ranks) if threads else 0


def _log(msg: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


benchmark_option = click.option(
    "--benchmark",
    "benchmark_name",
    required=True,
    help="Registered benchmark name (see `flyp list`).",
)
data_option = click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the benchmark's Parquet tables.",
)
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    help="Torch CPU threads (0: torch's default).",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N. auto and cuda take a GPU no other flyp process holds "
    "(lock files); cuda:N waits for GPU N while another holds it ($FLYP_GPU_WAIT seconds, "
    "default 600, then an error).",
)
train_device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N, claimed as by `flyp evaluate --device`. Launched by "
    "torchrun over several processes (`torchrun --nproc_per_node N -m flyp.cli ...`): auto or "
    "cuda (each rank claims a GPU no other flyp process holds, not necessarily cuda:<rank>; "
    "NCCL) or cpu (gloo); --batch-size is then the global batch, split over the ranks.",
)


class _Workers(click.ParamType):
    """A DataLoader worker count: a number >= 0 or ``auto`` (flyp.loading.resolve_workers)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            self.fail(f"expected a number >= 0 or auto, got {value!r}", param, ctx)
        return number


workers_option = click.option(
    "--workers",
    type=_Workers(),
    default=0,
    show_default=True,
    help="DataLoader worker processes; auto: one fewer than --threads (0 with one thread).",
)


def _setting_option(setting, required: bool):
    """The click option of a training setting (flyp.settings), typed and ranged as declared."""
    if setting.type is bool:
        return click.option(
            f"{setting.flag}/--no-{setting.flag[2:]}",
            default=setting.default,
            show_default=True,
            help=setting.help,
        )
    if setting.choices:
        kind = click.Choice(list(setting.choices))
    elif setting.minimum is None:
        kind = setting.type
    elif setting.type is int:
        kind = click.IntRange(min=setting.minimum)
    else:
        kind = click.FloatRange(min=setting.minimum, min_open=setting.exclusive_minimum)
    if setting.default is None:
        return click.option(setting.flag, type=kind, required=required, help=setting.help)
    return click.option(
        setting.flag, type=kind, default=setting.default, show_default=True, help=setting.help
    )


checkpoint_minutes_option = click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Minutes between mid-epoch resume states (0: every "
    "step); one is also written at each epoch's end and on SIGTERM or SIGUSR1, "
    "which then stop the run (exit code 128 + the signal's number).",
)


def _train_options(f, required: bool = True):
    """The training settings (flyp.settings), shared by pretraining and every finetuning method
    (``required``: those without a default must be given; finetuning asks for them only for a
    method that trains), and the switches of how a run goes, which change no number on a CPU."""
    from flyp.settings import ARGUMENTS

    options = [
        *(_setting_option(s, required) for s in ARGUMENTS),
        workers_option,
        checkpoint_minutes_option,
        click.option(
            "--tf32/--no-tf32",
            default=False,
            show_default=True,
            help="TF32 matmuls and convolutions in the training steps on CUDA (off: fp32; no "
            "effect on a CPU).",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_towers",
            default=False,
            show_default=True,
            help="torch.compile the CLIP's image and text towers.",
        ),
        click.option(
            "--grad-checkpointing",
            type=click.Choice(["on", "auto"]),
            is_flag=False,
            flag_value="on",
            default=None,
            help="open_clip's gradient checkpointing (less memory, more compute, the same "
            "numbers); auto: on where the job's memory plan (flyp plan) needs it. Default: off.",
        ),
        click.option("--no-grad-checkpointing", is_flag=True, help="Off (the default)."),
        click.option(
            "--deterministic",
            is_flag=True,
            help="Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS's fixed "
            "workspace, no cuDNN autotuning): on a GPU a rerun or a resumed run matches bit for "
            "bit, at some speed; an op with no deterministic kernel stops the run.",
        ),
        click.option(
            "--sync-bn/--no-sync-bn",
            default=True,
            show_default=True,
            help="Over several processes (torchrun), BatchNorm layers normalise over the global "
            "batch, not each rank's slice (no effect on one process).",
        ),
        *_watch_options(),
    ]
    for option in reversed(options):
        f = option(f)
    return f


WATCH_OPTIONS = ("progress_seconds", "progress_steps", "curves")


def _watch_options() -> list:
    """How a training run reports its progress (flyp.progress): no effect on a number, so the
    rules pass none of them (an environment variable sets each)."""
    return [
        click.option(
            "--progress-seconds",
            type=click.FloatRange(min=0),
            default=Watch.every_seconds,
            show_default=True,
            envvar="FLYP_PROGRESS_SECONDS",
            help="Seconds between training's progress lines (step, images/s, lr, loss, time left).",
        ),
        click.option(
            "--progress-steps",
            type=click.IntRange(min=0),
            default=Watch.every_steps,
            show_default=True,
            envvar="FLYP_PROGRESS_STEPS",
            help="Steps between progress lines, if sooner than --progress-seconds (0: by time "
            "only).",
        ),
        click.option(
            "--curves",
            default=CURVES_ROOT,
            show_default=True,
            envvar="FLYP_CURVES",
            help="Folder for the run's DVCLive curves, in a subfolder named after --out "
            "(`dvc plots show`); 'off': none. Needs dvclive; without it the run says so.",
        ),
    ]


def _watch(out: Path, train: dict):
    """The Watch of a training command; its options taken out of ``train``."""
    seconds, steps, curves = (train.pop(k) for k in WATCH_OPTIONS)
    folder = None if curves in ("", "off") else curves_folder(Path(curves), out)
    return Watch(every_steps=steps, every_seconds=seconds, curves=folder)


def _train_config(
    *,
    workers,
    checkpoint_minutes,
    tf32,
    compile_towers,
    grad_checkpointing,
    no_grad_checkpointing,
    deterministic,
    sync_bn,
    threads,
    **settings,
):
    """The TrainConfig of the training settings (flyp.settings) and run switches a command got;
    its ``grad_checkpointing`` "auto" until the pre-flight check (``_fit_device``) resolves it."""
    from flyp.loading import resolve_workers
    from flyp.training import TrainConfig

    return TrainConfig(
        **{**settings, "grad_clip": settings["grad_clip"] or None},
        num_workers=resolve_workers(workers, threads),
        checkpoint_minutes=checkpoint_minutes,
        tf32=tf32,
        compile=compile_towers,
        grad_checkpointing={None: False, "on": True, "auto": "auto"}[
            None if no_grad_checkpointing else grad_checkpointing
        ],
        deterministic=deterministic,
        sync_bn=sync_bn,
    )


def _fit_device(device, job, cfg=None):
    """The pre-flight memory check (flyp.memplan) of the job ``job()`` makes, before it
    allocates on CUDA ``device`` (a CPU job runs as it is, unchecked): one line naming the
    settings that would fit when it does not. Returns ``cfg`` (a TrainConfig), with what its
    grad_checkpointing "auto" resolves to on this device (``checkpoint_blocks``; on a CPU: off),
    which the checkpoint records (``grad_checkpointing: {auto: ...}``)."""
    from dataclasses import replace

    from flyp import memplan

    auto = cfg is not None and cfg.grad_checkpointing == "auto"
    if device.type != "cuda":
        return replace(cfg, checkpoint_blocks=False) if auto else cfg
    job = job()
    try:
        job = memplan.preflight(job, device, auto=auto)
    except memplan.UserError:
        raise
    except Exception as e:  # an architecture or method the planner cannot trace: unchecked
        _log(f"note: no memory plan for {job.name} ({type(e).__name__}: {e})")
        job = replace(job, grad_checkpointing=False) if auto else job
    return replace(cfg, checkpoint_blocks=job.grad_checkpointing) if auto else cfg


def _training_job(what: str, model: str, method: str, cfg, classes: int = 0):
    """The memory plan's view (flyp.memplan.Job) of a training run with ``cfg``."""
    from flyp import memplan
    from flyp.distributed import world_size

    if memplan.job_kind(method) == memplan.INFERENCE or cfg.batch_size is None:
        return memplan.Job(what, model, method, memplan.EVAL_BATCH, classes)
    gc = cfg.grad_checkpointing is True
    return memplan.Job(
        what, model, method, cfg.batch_size, classes, cfg.precision, gc, world_size()
    )


@click.group(cls=_Group)
def main():
    """FLYP: finetune zero-shot CLIP models like they were pretrained, and every baseline."""


@main.command("list")
def list_cmd():
    """Registered benchmarks, and the methods with what each does."""
    from flyp.datasets import benchmark_names
    from flyp.methods import get_method, method_names

    click.echo("benchmarks: " + ", ".join(benchmark_names()))
    click.echo("your own data: dataset imagefolder or csv in a preset (docs/own-data.md)")
    for name in method_names():
        click.echo(f"method {name}: {get_method(name).description}")


@main.command()
@benchmark_option
@click.option("--name", help="Which archive of the benchmark (omit to list them).")
@click.option(
    "--source",
    help="Instead of the official URL: an http(s):// or file:// URL, a "
    "local archive, or a folder it was already extracted to (linked, not copied).",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fetch the archive to this file (resumes a partial download; verified).",
)
@click.option(
    "--extract",
    "extract_to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Unpack the archive (--archive, or a local --source) into this new folder.",
)
@click.option(
    "--size",
    type=click.IntRange(min=0),
    help="With --md5/--sha256: the size of "
    "--source, which then need not be the real archive (its pinned sums are replaced).",
)
@click.option("--md5", help="The md5 of --source, replacing the real archive's pinned sums.")
@click.option("--sha256", help="The sha256 of --source, replacing the real archive's pinned sums.")
def download(benchmark_name, name, source, archive, extract_to, size, md5, sha256):
    """Fetch and unpack one archive of a real benchmark (the download rules run this)."""
    from flyp.datasets import get_benchmark
    from flyp.datasets.download import obtain, source_key

    bench = get_benchmark(benchmark_name)
    if name is None:
        for d in bench.downloads:
            click.echo(
                f"{d.name}: {d.url or 'manual: ' + d.manual} (source: {source_key(bench, d)})"
            )
        return
    stated = {k: v for k, v in dict(size=size, md5=md5, sha256=sha256).items() if v is not None}
    if stated:  # the mapping form of params.yaml (flyp.datasets.download.resolve_source)
        source = {"source": source, **stated}
    obtain(bench, name, source=source, archive=archive, extract_to=extract_to, log=_log)


@main.command()
@benchmark_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the miniature; the printed command also runs the DAG there.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def fixture(benchmark_name, out_dir, seed):
    """Write a miniature of a real benchmark in its download formats, with a tiny model, and
    print the command that runs the whole DAG on it (offline) to DIR/results/table.csv.
    ``--benchmark imagefolder`` or ``csv``: an example of your own data (docs/own-data.md)."""
    from flyp.datasets.owndata import DATASETS
    from flyp.fixtures import make_fixture, run_commands
    from flyp.fixtures.owndata import make_own_data_fixture

    project = _project_root()
    make = make_own_data_fixture if benchmark_name in DATASETS else make_fixture
    overlay = make(benchmark_name, out_dir, seed)
    _log(f"wrote the {benchmark_name} fixture and its config overlay {overlay}")
    for command in run_commands(overlay, project):
        click.echo(command)


def _project_root() -> Path:
    """The project (Snakefile, params.yaml): the current folder if it is one, else the checkout
    this package was installed from."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (folder / "Snakefile").is_file() and (folder / "params.yaml").is_file():
            return folder.absolute()
    raise UserError(
        "run `flyp fixture` in the project's folder (where Snakefile and params.yaml are)"
    )


@main.command()
@benchmark_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A benchmark-specific preparation setting (repeatable).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="Processes for benchmarks that can prepare in parallel (same output).",
)
def prepare(benchmark_name, out_dir, options, workers):
    """Generate or download a benchmark and write its Parquet tables and manifest."""
    from flyp.datasets import get_benchmark
    from flyp.datasets.manifest import write_manifest

    bench = get_benchmark(benchmark_name)
    params = inspect.signature(bench.prepare).parameters
    defaults = {
        k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k != "workers"
    }
    kwargs = _parse_options(options, defaults)
    _log(f"preparing {benchmark_name} into {out_dir} with {kwargs}")
    t0 = time.time()
    extra = {"workers": workers} if "workers" in params else {}
    bench.prepare(out_dir, **kwargs, **extra)
    write_manifest(out_dir, bench, {"benchmark": benchmark_name, **kwargs})
    _log(f"done in {time.time() - t0:.1f}s")


captions_option = click.option(
    "--captions",
    "captions_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with captions.parquet and templates.parquet.",
)


@main.command()
@benchmark_option
@data_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for captions.parquet and templates.parquet.",
)
def captions(benchmark_name, data_dir, out_dir):
    """Write the finetuning caption tables (captions.parquet, templates.parquet)."""
    from flyp.captions import make_caption_tables
    from flyp.datasets import get_benchmark, table_path

    bench = get_benchmark(benchmark_name)
    make_caption_tables(
        bench,
        table_path(data_dir, "train"),
        table_path(out_dir, "captions"),
        table_path(out_dir, "templates"),
    )
    _log(f"wrote {table_path(out_dir, 'captions')} and {table_path(out_dir, 'templates')}")


@main.command()
@data_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--side", required=True, type=click.IntRange(min=1), help="Shorter side of the copy, px."
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    default=("train",),
    show_default=True,
    help="A path table of --data to copy (repeatable).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Processes.")
def resize(data_dir, out_dir, side, tables, workers):
    """Write a copy of path tables' images with the shorter side cut to --side px (JPEG quality
    95; smaller images copied as they are) and tables pointing at it, for `flyp finetune
    --train-data`: training then decodes fewer pixels (flyp/datasets/resized.py)."""
    from flyp.datasets.resized import write_resized_copy

    t0 = time.time()
    write_resized_copy(data_dir, out_dir, side, tables=tuple(tables), workers=workers, log=_log)
    _log(f"wrote {out_dir} in {time.time() - t0:.1f}s")


@main.command()
@benchmark_option
@data_option
@click.option("--model", "model_name", required=True, help="open_clip architecture name.")
@_train_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--log-csv", required=True, type=click.Path(dir_okay=False, path_type=Path))
@threads_option
@train_device_option
def pretrain(benchmark_name, data_dir, model_name, out, log_csv, threads, device, **train):
    """Contrastively pretrain a CLIP from scratch on the benchmark's pretraining table."""
    threads = _threads_per_rank(threads)
    _setup_torch(threads, train["deterministic"])
    from flyp.datasets import get_benchmark
    from flyp.distributed import process_group
    from flyp.pretraining import pretrain as run

    watch, cfg = _watch(out, train), _train_config(**train, threads=threads)  # in this order
    with process_group(device) as here:
        what = f"pretraining {model_name}"
        cfg = _fit_device(here, lambda: _training_job(what, model_name, "pretrain", cfg), cfg)
        run(
            get_benchmark(benchmark_name),
            data_dir,
            model_name,
            cfg,
            out=out,
            log_csv=log_csv,
            device=here,
            log=_log,
            watch=watch,
        )


@main.command()
@click.option("--benchmark", "benchmark_name", required=True, help="A preset of params.yaml.")
@click.option(
    "--gpu-memory",
    type=click.FloatRange(min=0, min_open=True),
    default=80.0,
    show_default=True,
    help="GiB of memory of one GPU (an H100: 80, an H200: 141).",
)
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), help="Every method's (a what-if).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), help="Every method's.")
@click.option(
    "--grad-checkpointing",
    type=click.Choice(["true", "false", "auto"]),
    help="runtime.grad_checkpointing.",
)
@click.option("--no-grad-checkpointing", is_flag=True, help="As --grad-checkpointing false.")
@click.option("--gpus-per-job", type=click.IntRange(min=1), help="runtime.gpus_per_job.")
def plan(benchmark_name, gpu_memory, params_path, no_grad_checkpointing, **overrides):
    """Estimate each GPU job's peak memory for a preset of params.yaml (meta device: no GPU, no
    weights) and say whether it fits one GPU of --gpu-memory GiB, and what would if not."""
    from flyp.workflow.gpuplan import plan as make_plan
    from flyp.workflow.gpuplan import preset_jobs, table

    root = _project_root()
    gc = "false" if no_grad_checkpointing else overrides["grad_checkpointing"]
    overrides["grad_checkpointing"] = {"true": True, "false": False}.get(gc, gc)
    schema = root / "workflow" / "schemas" / "params.schema.yaml"
    jobs = preset_jobs(params_path or root / "params.yaml", schema, benchmark_name, overrides)
    memory = int(gpu_memory * (1 << 30))
    click.echo(table(make_plan(jobs, memory), memory))


@main.command()
@click.option("--force", is_flag=True, help="Also where Snakemake already has records.")
def sync(force):
    """After `dvc pull` or `dvc checkout`: mark the outputs DVC restored as current for Snakemake,
    when DVC finds them and the code to be what dvc.lock recorded (flyp/workflow/sync.py)."""
    from flyp.workflow.sync import sync as run

    run(Path.cwd(), force=force, log=_log)


@main.command()
@click.option("--model", "model_name", required=True, help="open_clip architecture name.")
@click.option(
    "--pretrained",
    required=True,
    help="open_clip pretrained tag (e.g. openai) or a local .bin/.safetensors file.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--log-csv",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Written with a header only: released weights have no training log here.",
)
def pretrained(model_name, pretrained, out, log_csv):
    """Export released open_clip weights as the pipeline's pretrained checkpoint."""
    from flyp.io import write_text
    from flyp.models import create_clip, save_checkpoint, weights_info
    from flyp.training import LOG_FIELDS

    clip = create_clip(model_name, pretrained)
    # The weights' own preprocessing and activation travel with every checkpoint made from them.
    save_checkpoint(
        out,
        model_name,
        clip,
        info={"stage": "pretrained", "pretrained": pretrained, **weights_info(model_name, clip)},
    )
    write_text(log_csv, ",".join(LOG_FIELDS) + "\n")
    _log(f"wrote {out}")


# The few-shot protocol's switches (flyp.settings), which a draw's command names only where its
# preset's are not the default.
FEWSHOT_PROTOCOL_OPTIONS = [
    click.option(
        "--val-loss-tie",
        type=click.Choice(TIES),
        default=TIES[0],
        show_default=True,
        help="Few-shot: which of two epochs with the same lowest val loss a draw keeps "
        "(later: the FLYP reference's).",
    ),
    click.option(
        "--augmentation",
        type=click.Choice(AUGMENTATIONS),
        default=AUGMENTATIONS[0],
        show_default=True,
        help="Few-shot: each training image's random crop and caption drawn afresh every "
        "epoch, or once for the whole run (the FLYP reference's).",
    ),
]


train_data_option = click.option(
    "--train-data",
    "train_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the train table from this `flyp resize` copy (resized images) instead of --data's.",
)


def _finetune_options(f):
    """The options of `flyp finetune`, which `flyp fewshot` shares."""
    options = [
        benchmark_option,
        data_option,
        captions_option,
        click.option(
            "--pretrained",
            "pretrained_path",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
        ),
        click.option("--method", "method_name", required=True),
        lambda f: _train_options(f, required=False),
        click.option(
            "-o",
            "--option",
            "options",
            multiple=True,
            metavar="KEY=VALUE",
            help="A method-specific setting (repeatable).",
        ),
        click.option(
            "--shots",
            type=click.IntRange(min=1),
            default=None,
            help="Few-shot protocol: train on k images per class, select on k per class.",
        ),
        click.option(
            "--draw",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Which few-shot draw (seeds the k-per-class sample).",
        ),
        *FEWSHOT_PROTOCOL_OPTIONS,
        click.option(
            "--eval-cache",
            type=click.Path(file_okay=False, path_type=Path),
            help="Read ID-val from this `flyp evalcache` folder instead of decoding it.",
        ),
        train_data_option,
        click.option(
            "--keep-last",
            is_flag=True,
            help="Keep the last epoch (the FLYP reference's ImageNet protocol), not the best "
            "on ID-val; few-shot runs keep their own protocol.",
        ),
        click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--log-csv", required=True, type=click.Path(dir_okay=False, path_type=Path)),
        threads_option,
        train_device_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@_finetune_options
def finetune(**settings):
    """Finetune the pretrained CLIP with one method; write the ID-val-selected checkpoint."""
    _finetune(**settings)


@main.command()
@_finetune_options
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provenance-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--eval-precision",
    type=click.Choice(["fp32", "tf32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Evaluation arithmetic on CUDA (as `flyp evaluate --precision`).",
)
def fewshot(metrics_out, provenance_out, eval_precision, **settings):
    """One few-shot draw (--shots, --draw): finetune, then score the kept checkpoint on the
    benchmark's ID test set and every OOD set, as `flyp finetune` then `flyp evaluate` do, in one
    process (a preset can run hundreds of draws; each would pay the start-up twice)."""
    if settings["shots"] is None:
        raise click.UsageError(
            "flyp fewshot: --shots is required (a full run: flyp finetune, then flyp evaluate)"
        )
    here = _finetune(**settings)
    if here is None:  # not rank 0 of a run over several processes
        return
    from flyp.evaluation import evaluate_checkpoint
    from flyp.loading import resolve_workers

    workers = resolve_workers(settings["workers"], _threads_per_rank(settings["threads"]))
    evaluate_checkpoint(
        settings["benchmark_name"],
        settings["data_dir"],
        settings["out"],
        metrics_out=metrics_out,
        provenance_out=provenance_out,
        num_workers=workers,
        device=here,
        precision=eval_precision,
        eval_cache=settings["eval_cache"],
        log=_log,
    )


def _finetune_job(benchmark_name, pretrained_path, method_name, cfg):
    from flyp.datasets import get_benchmark
    from flyp.models import checkpoint_layout

    model = checkpoint_layout(pretrained_path)[0]["model_name"]
    classes = len(get_benchmark(benchmark_name).classnames)
    return _training_job(f"{benchmark_name} {method_name}", model, method_name, cfg, classes)


def _finetune(
    benchmark_name,
    data_dir,
    captions_dir,
    pretrained_path,
    method_name,
    options,
    shots,
    draw,
    val_loss_tie,
    augmentation,
    eval_cache,
    train_dir,
    keep_last,
    out,
    log_csv,
    threads,
    device,
    **train,
):
    """`flyp finetune`: the device it ran on (None on a rank other than 0 of several)."""
    threads = _threads_per_rank(threads)
    _setup_torch(threads, train["deterministic"])
    from flyp.distributed import is_main, process_group
    from flyp.finetuning import finetune as run
    from flyp.methods import get_method
    from flyp.settings import BY_NAME, REQUIRED

    missing = [BY_NAME[k].flag for k in REQUIRED if train[k] is None]
    if missing and get_method(method_name).trains:
        raise click.UsageError(f"method {method_name!r} trains: {', '.join(missing)} required")
    watch, cfg = _watch(out, train), _train_config(**train, threads=threads)  # in this order
    with process_group(device) as here:
        job = functools.partial(_finetune_job, benchmark_name, pretrained_path, method_name, cfg)
        cfg = _fit_device(here, job, cfg)
        result = run(
            benchmark_name,
            data_dir,
            captions_dir,
            pretrained_path,
            method_name,
            cfg,
            options=_parse_options(options),
            out=out,
            log_csv=log_csv,
            device=here,
            shots=shots,
            draw=draw,
            protocol={"tie": val_loss_tie, "augmentation": augmentation},
            eval_cache=eval_cache,
            train_dir=train_dir,
            keep_last=keep_last,
            log=_log,
            watch=watch,
        )
        if not is_main():
            return None
    _log_kept(method_name, result, out)
    return here


def _log_kept(method_name, result, out):
    val = result["best_val"] or {}
    _log(
        f"{method_name}: kept epoch {result['best_epoch']} (ID-val {val.get('val_metric')} "
        f"{val.get('val_score')}, loss {val.get('val_loss')}) -> {out}"
    )


@main.command()
@benchmark_option
@data_option
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provenance-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@workers_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Evaluation arithmetic on CUDA: fp32, TF32 matmuls, or bf16 autocast.",
)
@click.option(
    "--ensemble-with",
    "zeroshot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also weight-ensemble (WiSE-FT) the checkpoint with this zero-shot one.",
)
@click.option(
    "--zeroshot-metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ensemble: the zero-shot checkpoint's metrics.json (alpha 0 is read from it, "
    "not recomputed).",
)
@click.option(
    "--alphas",
    default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    show_default=True,
    help="Mixing weights of the ensemble, in [0, 1]; the default is WiSE-FT's grid. The "
    "pipeline passes the preset's grid (params.yaml presets.<benchmark>.alphas, or the "
    "top-level alphas when set).",
)
@click.option(
    "--eval-cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read ID-val and the eval sets' images from this `flyp evalcache` folder "
    "(made with the checkpoint's preprocessing) instead of decoding them.",
)
@click.option(
    "--curve-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ensemble: metrics at every alpha (CSV).",
)
@click.option(
    "--wise-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ensemble: metrics at the alpha picked on ID-val (JSON).",
)
@threads_option
@device_option
def evaluate(
    benchmark_name,
    data_dir,
    checkpoint,
    metrics_out,
    provenance_out,
    batch_size,
    workers,
    precision,
    zeroshot,
    zeroshot_metrics,
    eval_cache,
    alphas,
    curve_out,
    wise_out,
    threads,
    device,
):
    """Score a checkpoint on the benchmark's ID test set and every OOD set (and, with
    --ensemble-with, its weight ensembles with the zero-shot checkpoint)."""
    _setup_torch(threads)
    from flyp.devices import resolve_device
    from flyp.evaluation import evaluate_checkpoint
    from flyp.loading import resolve_workers

    grid = _ensemble_grid(alphas, zeroshot, curve_out, wise_out)
    device = resolve_device(device)
    _fit_device(device, lambda: _evaluation_job(benchmark_name, checkpoint, batch_size, zeroshot))
    options = dict(
        batch_size=batch_size,
        num_workers=resolve_workers(workers, threads),
        device=device,
        precision=precision,
        eval_cache=eval_cache,
        log=_log,
    )
    _check_ensemble_pair(zeroshot, checkpoint)
    evaluate_checkpoint(
        benchmark_name,
        data_dir,
        checkpoint,
        metrics_out=metrics_out,
        provenance_out=provenance_out,
        **options,
    )
    if zeroshot is not None:
        _ensemble(
            benchmark_name,
            data_dir,
            zeroshot,
            checkpoint,
            grid,
            options,
            metrics_out=metrics_out,
            provenance_out=provenance_out,
            curve_out=curve_out,
            wise_out=wise_out,
            zeroshot_metrics=zeroshot_metrics,
        )


def _evaluation_job(benchmark_name, checkpoint, batch_size, zeroshot):
    """The memory plan's view of `flyp evaluate` (with weight ensembling's models when
    ``zeroshot``)."""
    from flyp import memplan
    from flyp.datasets import get_benchmark
    from flyp.models import checkpoint_layout

    model = checkpoint_layout(checkpoint)[0]["model_name"]
    method = memplan.EVALUATION if zeroshot is not None else "zeroshot"
    classes = len(get_benchmark(benchmark_name).classnames)
    return memplan.Job(f"evaluation of {checkpoint}", model, method, batch_size, classes)


def _ensemble_grid(
    alphas: str, zeroshot: Path | None, curve_out: Path | None, wise_out: Path | None
) -> list[float]:
    """The alphas of --alphas, sorted. With --ensemble-with, --curve-out and --wise-out must be
    given and the alphas be at least one, each in [0, 1]."""
    if zeroshot is not None and (curve_out is None or wise_out is None):
        raise UserError("--ensemble-with needs --curve-out and --wise-out")
    try:
        grid = sorted(float(a) for a in _csv_list(alphas))
    except ValueError:
        raise UserError(f"--alphas: expected comma-separated numbers, got {alphas!r}") from None
    if zeroshot is not None and (not grid or grid[0] < 0 or grid[-1] > 1):
        raise UserError(f"--alphas: expected numbers in [0, 1], got {alphas!r}")
    return grid


def _check_ensemble_pair(zeroshot: Path | None, checkpoint: Path) -> None:
    """With --ensemble-with, that the zero-shot checkpoint and this one can be weight-ensembled,
    checked before either is scored."""
    if zeroshot is not None:
        from flyp.ensemble import check_ensemble_pair

        check_ensemble_pair(zeroshot, checkpoint)


def _ensemble(
    benchmark_name,
    data_dir,
    zeroshot,
    checkpoint,
    grid,
    options: dict,
    *,
    metrics_out: Path,
    provenance_out: Path,
    curve_out: Path,
    wise_out: Path,
    zeroshot_metrics: Path | None,
) -> None:
    """Weight-ensemble the checkpoint with the zero-shot one at each alpha of ``grid`` and log
    the alpha picked; should that fail, the checkpoint's own scores (``metrics_out``,
    ``provenance_out``) are removed too."""
    from flyp.ensemble import run_ensemble

    try:
        best = run_ensemble(
            benchmark_name,
            data_dir,
            zeroshot,
            checkpoint,
            grid,
            finetuned_metrics=metrics_out,
            curve_out=curve_out,
            zeroshot_metrics=zeroshot_metrics,
            metrics_out=wise_out,
            **options,
        )
    except BaseException:  # the step failed: none of its outputs may look like a result
        for path in (metrics_out, provenance_out):
            path.unlink(missing_ok=True)
        raise
    _log(
        f"weight ensembling: picked alpha={best['alpha']:g} "
        f"(ID-val {best['val_metric']} {best['val_score']:.4f})"
    )


@main.command()
@benchmark_option
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The pretrained checkpoint: its preprocessing (every checkpoint made from it "
    "carries the same) decides the transform.",
)
@data_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for evalcache.json and each set's <set>.npy and <set>.parquet.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@workers_option
@threads_option
def evalcache(benchmark_name, checkpoint, data_dir, out_dir, batch_size, workers, threads):
    """Transform ID-val and every eval set once into uint8 arrays that evaluation memory-maps
    (`flyp evaluate --eval-cache`)."""
    _setup_torch(threads)
    from flyp.datasets import get_benchmark
    from flyp.evalcache import write_eval_cache
    from flyp.loading import resolve_workers

    write_eval_cache(
        get_benchmark(benchmark_name),
        checkpoint,
        data_dir,
        out_dir,
        batch_size=batch_size,
        num_workers=resolve_workers(workers, threads),
        log=_log,
    )
    _log(f"wrote {out_dir}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path))
@data_option
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="L2-normalise the features (--no-normalize: raw encode_image output, as the FLYP "
    "reference's linear probe).",
)
@click.option(
    "--train-transform",
    is_flag=True,
    help="Take the train features through the train transform (one seeded random crop per "
    "image, as the FLYP reference's linear probe); default: the eval transform.",
)
@workers_option
@threads_option
@device_option
def features(checkpoint, data_dir, out, normalize, train_transform, workers, threads, device):
    """Cache frozen image features of the train and val tables (for linear probes)."""
    _setup_torch(threads)
    from flyp.devices import resolve_device
    from flyp.features import write_features
    from flyp.loading import resolve_workers

    write_features(
        checkpoint,
        data_dir,
        out,
        device=resolve_device(device),
        num_workers=resolve_workers(workers, threads),
        normalize=normalize,
        train_transform=train_transform,
    )
    _log(f"wrote {out}")


@main.command("sweep-select")
@click.option("--method", "method_name", required=True)
@click.option(
    "--grid", required=True, help="The method's grid as JSON, e.g. '{\"lr\": [1e-05, 0.0001]}'."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
def sweep_select(method_name, grid, out, checkpoints):
    """Pick a method's setting from its grid runs' checkpoints (one per grid point, in grid
    order) by their recorded ID-val score; ties go to the first point."""
    import json

    from flyp.sweep import describe, write_selection

    try:
        grid = json.loads(grid)
    except json.JSONDecodeError as e:
        raise UserError(f"--grid: not valid JSON ({e.msg})") from None
    picked = write_selection(out, method_name, grid, list(checkpoints))
    _log(
        f"{method_name}: picked {describe(picked['picked'])} (ID-val {picked['val_metric']} "
        f"{picked['val_score']:.4f}) -> {out}"
    )


@main.command()
@benchmark_option
@click.option(
    "--results",
    "results_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with each run's {metrics,provenance,wise_metrics}.json, in the folders "
    "<method>/seed<s> and <method>/k<k>/draw<d> (flyp.runs).",
)
@click.option("--methods", required=True, help="Comma-separated methods, in table order.")
@click.option("--seeds", required=True, help="Comma-separated seeds of the full runs.")
@click.option("--wise-methods", default="", help="Methods with a weight-ensembling row.")
@click.option("--fewshot-methods", default="")
@click.option("--shots", default="", help="Comma-separated k of the few-shot runs.")
@click.option(
    "--draws", type=click.IntRange(min=0), default=0, help="Few-shot draws of each k (0..n-1)."
)
@click.option(
    "--fewshot-std-ddof",
    type=click.Choice([str(d) for d in STD_DDOFS]),
    default=str(STD_DDOFS[0]),
    show_default=True,
    help="The std over draws: the sample std (1) or numpy's np.std (0, the FLYP reference's); "
    "with 0 a std_ddof column says which std each row reports.",
)
@click.option("--table", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot-csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--code-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the diffs of uncommitted code the rows name go [default: code/ beside --table].",
)
@click.option(
    "--inputs-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the sha256 of every per-run file the table was made from.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the table's numbers as Markdown.",
)
@click.option(
    "--sweep-methods",
    default="",
    help="Methods whose setting a sweep picked (<method>/sweep.json under --results).",
)
@click.option(
    "--sweep-plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --sweep-methods: the figure of ID-val against each grid point.",
)
@click.option("--sweep-csv", type=click.Path(dir_okay=False, path_type=Path))
def report(
    benchmark_name,
    results_dir,
    methods,
    seeds,
    wise_methods,
    fewshot_methods,
    shots,
    draws,
    fewshot_std_ddof,
    table,
    metrics_out,
    plot_out,
    plot_csv,
    code_dir,
    inputs_out,
    markdown,
    sweep_methods,
    sweep_plot,
    sweep_csv,
):
    """Collect every method's metrics into the results table, the DVC metrics and the figure."""
    from flyp.report import write_report

    df = write_report(
        benchmark_name,
        results_dir,
        methods=_csv_list(methods),
        seeds=_csv_ints(seeds, "--seeds"),
        wise_methods=_csv_list(wise_methods),
        fewshot_methods=_csv_list(fewshot_methods),
        shots=_csv_ints(shots, "--shots"),
        draws=draws,
        fewshot_std_ddof=int(fewshot_std_ddof),
        table=table,
        metrics_out=metrics_out,
        plot_out=plot_out,
        plot_csv=plot_csv,
        code_dir=code_dir,
        inputs_out=inputs_out,
        markdown=markdown,
        sweep_methods=_csv_list(sweep_methods),
        sweep_plot=sweep_plot,
        sweep_csv=sweep_csv,
    )
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 40):
        click.echo(
            df.drop(
                columns=[
                    "checkpoint_sha256",
                    "data_hash",
                    "params_hash",
                    "pretrained_sha256",
                    "git_revision",
                    "eval_revision",
                    "experiment",
                ]
            ).to_string(index=False)
        )


if __name__ == "__main__":
    sys.exit(main())
