"""What a person watching a job sees: training's progress lines (step, images/s, lr, loss, time
left), its DVCLive curves (and a run without dvclive), and long steps' lines in a log file."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flyp.progress import StepLog, Watch, curves_folder, mean_since, progress_bar
from flyp.training import fit
from tests.test_training import CFG, ToyTask


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_shows_step_epoch_rate_lr_loss_and_time_left():
    clock, lines = FakeClock(), []
    log = StepLog(100, 8, lines.append, Watch(every_steps=10, every_seconds=60), clock)
    log.start(0)
    for step in range(1, 10):
        clock.now += 0.5
        assert not log.due(step)
    clock.now += 0.5
    assert log.due(10)
    values = log.line(10, 1, 2, 1e-3, 1.5)
    assert lines == [
        "step 10/100 (10.0%), epoch 1/2, 16.0 images/s, lr 0.001, loss 1.5000, "
        "elapsed 0:00:05, left 0:00:45"
    ]
    assert values == {"train/loss": 1.5, "lr": 1e-3, "images_per_second": 16.0}


def test_a_line_is_due_after_the_interval_before_the_step_count():
    clock = FakeClock()
    log = StepLog(10_000, 8, print, Watch(every_steps=1000, every_seconds=60), clock)
    log.start(0)
    clock.now += 59.9
    assert not log.due(3)
    clock.now += 0.1
    assert log.due(3)


def test_a_resumed_run_counts_its_rate_and_time_left_from_its_own_steps():
    clock, lines = FakeClock(), []
    log = StepLog(1000, 4, lines.append, Watch(every_steps=0, every_seconds=10), clock)
    log.start(600)  # 600 steps trained before the resume
    clock.now += 100.0
    log.line(700, 3, 5, 1e-4, 0.25)
    assert "step 700/1000 (70.0%)" in lines[0]
    assert "4.0 images/s" in lines[0] and "left 0:05:00" in lines[0]  # 1 s a step, 300 left


def test_the_rate_after_a_validation_pass_counts_only_the_steps_after_it():
    clock, lines = FakeClock(), []
    log = StepLog(1000, 10, lines.append, Watch(every_steps=0, every_seconds=60), clock)
    log.start(0)
    clock.now += 10.0
    log.line(100, 1, 10, 1e-3, 1.0)  # 100 steps in 10 s
    clock.now += 20.0  # 200 more steps, then the epoch ends at step 300 ...
    clock.now += 30.0  # ... and its validation pass takes 30 s
    log.restart_window(300)
    clock.now += 10.0
    log.line(400, 2, 10, 1e-3, 1.0)  # 100 steps in the 10 s since validation
    assert "100.0 images/s" in lines[0] and "100.0 images/s" in lines[1]


def test_the_loss_of_a_line_is_the_mean_since_the_previous_one():
    assert mean_since(None, 1, 4, 10.0) == 2.5  # the epoch so far
    assert mean_since((1, 4, 10.0), 1, 8, 14.0) == 1.0  # steps 5..8
    assert mean_since((1, 4, 10.0), 2, 2, 3.0) == 1.5  # a new epoch: its own steps


def _fit(tmp_path, messages, watch=None, task=None):
    return fit(
        task or ToyTask([0.2, 0.9, 0.5, 0.8]),
        CFG,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=messages.append,
        watch=watch,
    )


def test_training_logs_step_lines_with_throughput_and_time_left(tmp_path):
    messages = []
    _fit(tmp_path, messages, Watch(every_steps=3, every_seconds=3600))
    steps = [m for m in messages if m.startswith("step ")]
    assert messages[0] == (
        "training: 16 steps (4 epochs of 4), batch 16; a progress line every 3 steps or 3600 s"
    )
    assert [m.split(" ")[1].rstrip(",") for m in steps] == [
        "3/16",
        "6/16",
        "9/16",
        "12/16",
        "15/16",
    ]
    pattern = r"epoch \d/4, [\d.]+ images/s, lr [\d.e-]+, loss [\d.]+, elapsed \S+, left \S+"
    assert all(re.search(pattern, m) for m in steps), steps


def test_progress_lines_change_no_number(tmp_path):
    quiet, chatty = tmp_path / "quiet", tmp_path / "chatty"
    _fit(quiet, [], Watch(every_steps=10_000, every_seconds=3600))
    _fit(chatty, [], Watch(every_steps=1, every_seconds=0))
    a, b = torch.load(quiet / "best.pt"), torch.load(chatty / "best.pt")
    assert torch.equal(a["w"], b["w"])
    drop_seconds = [line.rsplit(",", 1)[0] for line in (quiet / "log.csv").read_text().split()]
    assert drop_seconds == [
        line.rsplit(",", 1)[0] for line in (chatty / "log.csv").read_text().split()
    ]


def test_training_without_dvclive_runs_and_says_curves_are_off(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dvclive", None)  # `import dvclive` raises ImportError
    messages = []
    result = _fit(tmp_path, messages, Watch(curves=tmp_path / "curves"))
    assert result.best_epoch == 2
    assert "training curves off: dvclive is not installed (pip install dvclive)" in messages
    assert not (tmp_path / "curves").exists()


def test_curves_folder_is_named_after_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models" / "embedded" / "flyp" / "full" / "seed0" / "best.safetensors"
    assert (
        curves_folder(tmp_path / "logs", out)
        == tmp_path / "logs/models/embedded/flyp/full/seed0/best"
    )
    assert curves_folder(tmp_path / "c", "/elsewhere/a.pt") == tmp_path / "c/elsewhere/a"


def test_a_long_step_in_a_log_file_writes_lines_not_carriage_returns(capsys, monkeypatch):
    monkeypatch.setattr("flyp.progress.LINE_SECONDS", 0)
    for _ in progress_bar(range(5), desc="caching val", unit="img"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("caching val: 100%") and "5/5" in lines[-1]


def test_a_short_step_in_a_log_file_logs_no_progress_line(capsys):
    for _ in progress_bar(range(5), desc="evaluating test", unit="img"):
        pass
    assert capsys.readouterr().err == ""


def _points(folder, name):
    """(step, value) rows of a DVCLive metric file."""
    header, *rows = (folder / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    assert header == f"step\t{name.rsplit('/', 1)[-1]}"
    return [(int(r.split("\t")[0]), float(r.split("\t")[1])) for r in rows]


def test_dvclive_curves_of_a_run_render_in_dvc_plots(tmp_path, monkeypatch):
    pytest.importorskip("dvclive")
    if shutil.which("dvc") is None:
        pytest.skip("dvc not installed")
    monkeypatch.chdir(tmp_path)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], check=True)
    messages = []
    folder = tmp_path / "logs" / "curves" / "run"
    _fit(tmp_path / "models", messages, Watch(every_steps=2, every_seconds=3600, curves=folder))
    assert f"training curves (DVCLive) in {folder}: dvc plots show" in messages
    assert [s for s, _ in _points(folder, "train/loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert _points(folder, "val/score") == [(4, 0.2), (8, 0.9), (12, 0.5), (16, 0.8)]
    assert [s for s, _ in _points(folder, "epoch/train_loss")] == [4, 8, 12, 16]
    assert sorted(p.name for p in folder.iterdir()) == ["plots"]  # no dvc.yaml, no summary
    (tmp_path / "dvc.yaml").write_text(DVC_YAML_PLOTS)
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json"], check=True, capture_output=True, text=True
    )
    plotted = json.loads(shown.stdout)
    assert "errors" not in plotted, plotted["errors"]
    names = {
        Path(k).relative_to("logs/curves/run/plots/metrics").as_posix() for k in plotted["data"]
    }
    assert names == {
        "train/loss.tsv",
        "lr.tsv",
        "images_per_second.tsv",
        "epoch/train_loss.tsv",
        "val/score.tsv",
        "val/loss.tsv",
    }
    (score,) = plotted["data"]["logs/curves/run/plots/metrics/val/score.tsv"]
    assert [row["score"] for row in score["content"]["data"]["values"]] == [
        "0.2",
        "0.9",
        "0.5",
        "0.8",
    ]


def test_a_resumed_run_continues_its_curves_without_repeating_steps(tmp_path):
    pytest.importorskip("dvclive")
    folder, scores = tmp_path / "curves", [0.2, 0.9, 0.5, 0.8]
    watch = Watch(every_steps=2, every_seconds=3600, curves=folder)
    with pytest.raises(KeyboardInterrupt):  # in epoch 3's validation, after its steps
        _fit(tmp_path, [], watch, task=ToyTask(scores, fail_at_epoch=3))
    assert [s for s, _ in _points(folder, "train/loss")] == [2, 4, 6, 8, 10, 12]
    task = ToyTask(scores)
    task.epoch = 2
    _fit(tmp_path, [], watch, task=task)
    assert [s for s, _ in _points(folder, "train/loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [s for s, _ in _points(folder, "val/score")] == [4, 8, 12, 16]


# What dvc.yaml's top-level plots say of the runs' curves (tests/test_dvc_snakemake.py checks that
# the project's dvc.yaml says the same).
DVC_YAML_PLOTS = "plots:\n  - logs/curves:\n      x: step\n"


def test_a_training_command_names_its_curves_after_its_checkpoint_or_has_none(
    tmp_path, monkeypatch
):
    from flyp.cli import _watch

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models" / "x" / "best.safetensors"
    train = {"progress_seconds": 5.0, "progress_steps": 0, "curves": "logs/curves", "lr": 1.0}
    assert _watch(out, train) == Watch(0, 5.0, Path("logs/curves/models/x/best"))
    assert train == {"lr": 1.0}  # the rest is the training settings'
    off = {"progress_seconds": 60.0, "progress_steps": 1000, "curves": "off"}
    assert _watch(out, off) == Watch()


@pytest.mark.slow  # about 25 s: a real finetuning job
def test_flyp_finetune_logs_progress_and_writes_curves_named_after_its_checkpoint(
    tiny_tables, tiny_captions, tiny_pretrained, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from flyp.cli import main
    from tests.test_cli import _finetune_args

    pytest.importorskip("dvclive")
    monkeypatch.chdir(tmp_path)
    args = _finetune_args(tiny_tables, tiny_captions, tiny_pretrained, tmp_path / "run")
    env = {"FLYP_PROGRESS_STEPS": "1", "FLYP_CURVES": "logs/curves"}  # as the rules leave them
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if "] step " in line]
    assert [line.split()[2] for line in steps] == ["1/3", "2/3", "3/3"]  # 96 images, batch 32
    assert all("images/s" in line and ", left " in line for line in steps)
    folder = tmp_path / "logs" / "curves" / "run" / "best"
    assert [s for s, _ in _points(folder, "train/loss")] == [1, 2, 3]
    assert [s for s, _ in _points(folder, "val/score")] == [3]
