"""The CLI: each step runs by hand, and bad input is one clear line, never a traceback."""

import json

import pytest
from click.testing import CliRunner

from flyp.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output


def test_list_shows_benchmarks_and_methods():
    result = invoke("list")
    assert result.exit_code == 0
    assert "embedded" in result.output
    for method in ["zeroshot", "ft", "flyp"]:
        assert f"method {method}:" in result.output


def test_unknown_benchmark(tmp_path):
    assert_one_line_error(
        invoke("prepare", "--benchmark", "imagenet9", "--out", tmp_path),
        "unknown benchmark 'imagenet9'",
    )


def test_unknown_prepare_option(tmp_path):
    assert_one_line_error(
        invoke("prepare", "--benchmark", "embedded", "--out", tmp_path, "-o", "colour=red"),
        "unknown option 'colour'",
    )
    assert_one_line_error(
        invoke("prepare", "--benchmark", "embedded", "--out", tmp_path, "-o", "train_size=many"),
        "train_size",
        "int",
    )


def _finetune_args(tables, captions, pretrained, out, **over):
    args = dict(
        benchmark="embedded",
        data=tables,
        captions=captions,
        pretrained=pretrained,
        method="ft",
        epochs=1,
        lr=1e-3,
        wd=0.0,
        batch_size=32,
        out=out / "best.safetensors",
        log_csv=out / "log.csv",
    )
    args.update(over)
    flat = ["finetune"]
    for key, value in args.items():
        flat += [f"--{key.replace('_', '-')}", value]
    return flat


def test_finetune_bad_inputs(tiny_tables, tiny_captions, tiny_pretrained, tmp_path):
    assert_one_line_error(
        invoke(
            *_finetune_args(tiny_tables, tiny_captions, tiny_pretrained, tmp_path, method="sgd")
        ),
        "unknown method 'sgd'",
    )
    assert_one_line_error(
        invoke(
            *_finetune_args(tiny_tables, tiny_captions, tmp_path / "nope.safetensors", tmp_path)
        ),
        "nope.safetensors",
        "not found",
    )
    assert_one_line_error(
        invoke(*_finetune_args(tiny_tables, tiny_captions, tiny_pretrained, tmp_path, lr=-1)),
        "--lr",
    )
    assert_one_line_error(
        invoke(
            *_finetune_args(tiny_tables, tiny_captions, tiny_pretrained, tmp_path, batch_size="big")
        ),
        "--batch-size",
    )
    assert not (tmp_path / "best.safetensors").exists()


def test_zero_shot_then_evaluate_by_hand(tiny_tables, tiny_captions, tiny_pretrained, tmp_path):
    result = invoke(
        *_finetune_args(
            tiny_tables, tiny_captions, tiny_pretrained, tmp_path, method="zeroshot", epochs=0
        )
    )
    assert result.exit_code == 0, result.output
    result = invoke(
        "evaluate",
        "--benchmark",
        "embedded",
        "--data",
        tiny_tables,
        "--checkpoint",
        tmp_path / "best.safetensors",
        "--metrics-out",
        tmp_path / "metrics.json",
        "--provenance-out",
        tmp_path / "provenance.json",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"test", "v2", "sketch", "r", "a", "objectnet", "avg_ood"}
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["best_epoch"] == 0 and len(provenance["checkpoint_sha256"]) == 64


def test_finetuning_is_deterministic(tiny_tables, tiny_captions, tiny_pretrained, tmp_path):
    from flyp.io import sha256_file

    hashes = []
    for run in ["a", "b"]:
        out = tmp_path / run
        result = invoke(
            *_finetune_args(
                tiny_tables,
                tiny_captions,
                tiny_pretrained,
                out,
                method="flyp",
                epochs=2,
                batch_size=24,
            )
        )
        assert result.exit_code == 0, result.output
        hashes.append(sha256_file(out / "best.safetensors"))
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("bad", ["no-equals", "=value"])
def test_method_option_syntax(bad, tiny_tables, tiny_captions, tiny_pretrained, tmp_path):
    args = _finetune_args(tiny_tables, tiny_captions, tiny_pretrained, tmp_path)
    assert_one_line_error(invoke(*args, "-o", bad), "KEY=VALUE")
