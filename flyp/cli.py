"""Command-line interface: one subcommand per pipeline step.

Every step reads and writes explicit paths, so any of them can be run by hand; the Snakemake rules in
``workflow/rules/`` only call these commands.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

import click

from flyp.io import UserError


class _Group(click.Group):
    """Turns a UserError raised anywhere in a command into a one-line message, exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.UsageError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None


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
                value = kind(value)
            except ValueError:
                raise UserError(f"option {key!r}: expected {kind.__name__}, got {value!r}") from None
        out[key] = value
    return out


def _setup_torch(threads: int):
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch


def _log(msg: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


benchmark_option = click.option("--benchmark", "benchmark_name", required=True,
                                help="Registered benchmark name (see `flyp list`).")
data_option = click.option("--data", "data_dir", required=True,
                           type=click.Path(file_okay=False, path_type=Path),
                           help="Folder with the benchmark's Parquet tables.")
threads_option = click.option("--threads", type=click.IntRange(min=0), default=0,
                              help="Torch CPU threads (0: torch's default).")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto, cpu, cuda or cuda:N.")


def _train_options(f):
    """Hyperparameters shared by pretraining and every finetuning method."""
    options = [
        click.option("--epochs", type=click.IntRange(min=0), required=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), required=True),
        click.option("--wd", type=click.FloatRange(min=0), required=True),
        click.option("--batch-size", type=click.IntRange(min=1), required=True),
        click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--grad-clip", type=click.FloatRange(min=0), default=0.0,
                     help="Max gradient norm (0: no clipping)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
                     show_default=True),
        click.option("--workers", type=click.IntRange(min=0), default=0,
                     help="DataLoader worker processes."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _train_config(epochs, lr, wd, batch_size, warmup_steps, grad_clip, seed, precision, workers):
    from flyp.training import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, wd=wd, batch_size=batch_size,
                       warmup_steps=warmup_steps, seed=seed, grad_clip=grad_clip or None,
                       precision=precision, num_workers=workers)


@click.group(cls=_Group)
def main():
    """FLYP: finetune zero-shot CLIP models like they were pretrained, and every baseline."""


@main.command("list")
def list_cmd():
    """Registered benchmarks, methods and model configs."""
    from flyp.datasets import benchmark_names
    from flyp.methods import get_method, method_names

    click.echo("benchmarks: " + ", ".join(benchmark_names()))
    for name in method_names():
        click.echo(f"method {name}: {get_method(name).description}")


@main.command()
@benchmark_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A benchmark-specific preparation setting (repeatable).")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="Processes for benchmarks that can prepare in parallel (same output).")
def prepare(benchmark_name, out_dir, options, workers):
    """Generate or download a benchmark and write its Parquet tables and manifest."""
    from flyp.datasets import get_benchmark
    from flyp.datasets.manifest import write_manifest

    bench = get_benchmark(benchmark_name)
    params = inspect.signature(bench.prepare).parameters
    defaults = {k: p.default for k, p in params.items()
                if p.kind is p.KEYWORD_ONLY and k != "workers"}
    kwargs = _parse_options(options, defaults)
    _log(f"preparing {benchmark_name} into {out_dir} with {kwargs}")
    t0 = time.time()
    extra = {"workers": workers} if "workers" in params else {}
    bench.prepare(out_dir, **kwargs, **extra)
    write_manifest(out_dir, bench, {"benchmark": benchmark_name, **kwargs})
    _log(f"done in {time.time() - t0:.1f}s")


captions_option = click.option("--captions", "captions_dir", required=True,
                               type=click.Path(file_okay=False, path_type=Path),
                               help="Folder with captions.parquet and templates.parquet.")


@main.command()
@benchmark_option
@data_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for captions.parquet and templates.parquet.")
def captions(benchmark_name, data_dir, out_dir):
    """Write the finetuning caption tables (captions.parquet, templates.parquet)."""
    from flyp.captions import make_caption_tables
    from flyp.datasets import get_benchmark, table_path

    bench = get_benchmark(benchmark_name)
    make_caption_tables(bench, table_path(data_dir, "train"), table_path(out_dir, "captions"),
                        table_path(out_dir, "templates"))
    _log(f"wrote {table_path(out_dir, 'captions')} and {table_path(out_dir, 'templates')}")


@main.command()
@benchmark_option
@data_option
@click.option("--model", "model_name", required=True, help="open_clip architecture name.")
@_train_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--log-csv", required=True, type=click.Path(dir_okay=False, path_type=Path))
@threads_option
@device_option
def pretrain(benchmark_name, data_dir, model_name, out, log_csv, threads, device, **train):
    """Contrastively pretrain a CLIP from scratch on the benchmark's pretraining table."""
    _setup_torch(threads)
    from flyp.datasets import get_benchmark
    from flyp.pretraining import pretrain as run
    from flyp.training import resolve_device

    cfg = _train_config(**train)
    run(get_benchmark(benchmark_name), data_dir, model_name, cfg, out=out, log_csv=log_csv,
        device=resolve_device(device))


@main.command()
@click.option("--model", "model_name", required=True, help="open_clip architecture name.")
@click.option("--pretrained", required=True,
              help="open_clip pretrained tag (e.g. openai) or a local .bin/.safetensors file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--log-csv", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Written with a header only: released weights have no training log here.")
def pretrained(model_name, pretrained, out, log_csv):
    """Export released open_clip weights as the pipeline's pretrained checkpoint."""
    from flyp.io import write_text
    from flyp.models import create_clip, save_checkpoint
    from flyp.training import LOG_FIELDS

    clip = create_clip(model_name, pretrained)
    save_checkpoint(out, model_name, clip, info={"stage": "pretrained", "pretrained": pretrained})
    write_text(log_csv, ",".join(LOG_FIELDS) + "\n")
    _log(f"wrote {out}")


@main.command()
@benchmark_option
@data_option
@captions_option
@click.option("--pretrained", "pretrained_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--method", "method_name", required=True)
@_train_options
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A method-specific setting (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--log-csv", required=True, type=click.Path(dir_okay=False, path_type=Path))
@threads_option
@device_option
def finetune(benchmark_name, data_dir, captions_dir, pretrained_path, method_name, options, out, log_csv,
             threads, device, **train):
    """Finetune the pretrained CLIP with one method; write the ID-val-selected checkpoint."""
    torch = _setup_torch(threads)
    from flyp.finetuning import finetune as run
    from flyp.training import resolve_device

    cfg = _train_config(**train)
    result = run(benchmark_name, data_dir, captions_dir, pretrained_path, method_name, cfg,
                 options=_parse_options(options), out=out, log_csv=log_csv,
                 device=resolve_device(device), log=_log)
    _log(f"{method_name}: kept epoch {result['best_epoch']} "
         f"(ID-val accuracy {result['best_val']}) -> {out}")
    del torch


@main.command()
@benchmark_option
@data_option
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provenance-out", required=True,
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0)
@threads_option
@device_option
def evaluate(benchmark_name, data_dir, checkpoint, metrics_out, provenance_out, batch_size,
             workers, threads, device):
    """Score a checkpoint on the benchmark's ID test set and every OOD set."""
    _setup_torch(threads)
    from flyp.evaluation import evaluate_checkpoint
    from flyp.training import resolve_device

    evaluate_checkpoint(benchmark_name, data_dir, checkpoint, metrics_out=metrics_out,
                        provenance_out=provenance_out, batch_size=batch_size,
                        num_workers=workers, device=resolve_device(device), log=_log)


@main.command()
@benchmark_option
@click.option("--method", "methods", multiple=True, required=True,
              help="Method name, in table order (repeatable).")
@click.option("--results", "results_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder with <method>/metrics.json and <method>/provenance.json.")
@click.option("--table", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metrics-out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def report(benchmark_name, methods, results_dir, table, metrics_out):
    """Collect every method's metrics into the results table and the DVC metrics file."""
    from flyp.report import write_report

    df = write_report(benchmark_name, list(methods), results_dir, table, metrics_out)
    click.echo(df.to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
