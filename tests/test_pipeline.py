"""End to end, as a user runs it, on the `smoke` scale with a shortened method list (one per kind:
no training, a linear probe, a method built on another's checkpoint, FLYP), one seed, a coarse
weight-ensembling grid and one few-shot draw: Snakemake to the table, a no-op rerun, the same table
from the same seed; code changes that rerun what they touch; `dvc exp run -S lr=...` (in the
workspace and queued), `dvc metrics diff`, `dvc exp show`; a DVC remote shared with a fresh clone;
a fresh clone that rebuilds the committed numbers.

Everything runs in a temporary copy of the project (its own git repo, DVC cache and Snakemake
state), so the working tree is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, set_embedded

# One worker runs every test of this module, in order: they share (and some edit) one project.
pytestmark = pytest.mark.xdist_group("pipeline")

SMOKE_METHODS = ["zeroshot", "lp", "lpft", "flyp"]
# What a fresh clone holds (outputs of earlier runs are left behind).
PROJECT_FILES = [
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


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src, dst = ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(scale="smoke", seeds=[0], methods=SMOKE_METHODS, alphas=[0.0, 0.5, 1.0])
    # One pretrained model and no sweep (tests/test_pretrain_seeds.py and test_sweep.py run those
    # end to end): the runs below retrain and compare one model.
    set_embedded(params, sweep={}, pretrain_seeds=0)
    # One draw of one k for FLYP (set on the scale, whose few-shot k overrides the preset's).
    params["scales"]["smoke"]["fewshot"] = {
        "shots": [2],
        "draws": 1,
        "methods": ["flyp"],
        "finetune": {"epochs": 2, "batch_size": None, "warmup_steps": 0},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "DVC_SITE_CACHE_DIR": str(root / ".dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    env.pop("DVC_STAGE", None)
    env["PYTHONPATH"] = str(root)  # the jobs run this copy's code (tests below edit it)
    run(["git", "init", "-q"], root, env)
    run(["git", "config", "user.name", "test"], root, env)
    run(["git", "config", "user.email", "t@example.org"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return root, env


@pytest.fixture(scope="module")
def built(project):
    root, env = project
    first = run(["snakemake", "--cores", "2", "results/table.csv"], root, env)
    return root, env, first


def test_snakemake_builds_the_table(built):
    root, env, _ = built
    table = pd.read_csv(root / "results/table.csv")
    assert list(table["method"]) == [
        *SMOKE_METHODS,
        "lp+wise",
        "lpft+wise",
        "flyp+wise",
        "flyp@2shot",
    ]
    for column in [
        "id",
        "id_std",
        "v2",
        "sketch",
        "r",
        "a",
        "objectnet",
        "avg_ood",
        "runs",
        "eff_robustness",
        "best_epoch",
        "seed",
        "alpha",
        "checkpoint_sha256",
        "data_hash",
        "params_hash",
        "git_revision",
    ]:
        assert column in table.columns
    assert (
        table[["id", "v2", "sketch", "r", "a", "objectnet"]]
        .apply(lambda c: c.between(0, 100))
        .all()
        .all()
    )
    ood = table[["v2", "sketch", "r", "a", "objectnet"]].mean(axis=1)
    assert (ood - table["avg_ood"]).abs().max() < 0.02
    plain = table[~table["method"].str.contains(r"\+|@")]
    assert plain["checkpoint_sha256"].is_unique and plain["params_hash"].is_unique
    assert table.loc[table["method"] == "flyp+wise", "alpha"].iloc[0] in (0, 0.5, 1)
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert set(metrics) == set(table["method"])
    assert {"id", "id_std", "v2", "avg_ood", "eff_robustness"} <= set(metrics["flyp"])
    assert (root / "results/plots/id_vs_ood.png").stat().st_size > 10_000
    curve = pd.read_csv(root / "results/plots/id_vs_ood.csv")
    assert set(curve["method"]) == {"lp", "lpft", "flyp"} and set(curve["alpha"]) == {0, 0.5, 1}
    log = pd.read_csv(root / "models/embedded/flyp/seed0/train_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"lr", "train_loss", "val_metric", "val_score", "val_loss"} <= set(log.columns)
    assert (root / "dvc.lock").is_file()  # the run was recorded in DVC
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env).stdout
    # a run on a clean checkout names its commit, not a "-dirty" tree nobody has
    commit = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert set(table["git_revision"]) == {commit} and set(table["eval_revision"]) == {commit}
    assert table["pretrained_sha256"].nunique() == 1


def test_second_run_does_nothing(built):
    root, env, _ = built
    before = (root / "results/table.csv").stat().st_mtime_ns
    again = run(["snakemake", "--cores", "2", "results/table.csv"], root, env)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (root / "results/table.csv").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_failed_dvc_recording_quotes_dvcs_reason(built):
    """When DVC cannot record a run, the note quotes DVC's own error, not "unknown"; the next run
    that can record does."""
    root, env, _ = built
    manifest = "data/embedded/tables/manifest.json"
    run(["git", "add", "-f", manifest], root, env)  # a DVC out now also tracked by git
    try:
        done = run(
            ["snakemake", "--cores", "2", "--forcerun", "report", "--", "results/table.csv"],
            root,
            env,
        )
        note = [line for line in done.stderr.splitlines() if "not recorded in DVC" in line]
        assert len(note) == 1, done.stderr
        assert "already tracked by SCM" in note[0], note
    finally:
        run(["git", "rm", "-q", "--cached", manifest], root, env)
    done = run(
        ["snakemake", "--cores", "2", "--forcerun", "report", "--", "results/table.csv"], root, env
    )
    assert "not recorded in DVC" not in done.stderr
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env).stdout


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors (names, dtypes, shapes, values)."""
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return left.keys() == right.keys() and all(
        left[k].dtype == right[k].dtype and torch.equal(left[k], right[k]) for k in left
    )


def jobs_to_run(root: Path, env: dict) -> dict[str, int]:
    """{rule: jobs} that `snakemake -n` would run now."""
    out = run(
        ["snakemake", "-n", "--quiet", "rules", "--cores", "2", "results/table.csv"], root, env
    ).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in {"job", "total"}:
            counts[parts[0]] = int(parts[1])
    return counts


def edited(path: Path, old: str, new: str):
    """A context in which ``path`` has ``old`` replaced by ``new`` (which must occur)."""
    import contextlib

    @contextlib.contextmanager
    def edit():
        text = path.read_text()
        assert old in text, f"{path} lost the line this test edits: {old!r}"
        path.write_text(text.replace(old, new))
        try:
            yield
        finally:
            path.write_text(text)

    return edit()


# A few-shot draw's job trains and evaluates (its checkpoint is a temp file: hundreds of draws on
# SST2), so a change to test-time evaluation reruns finetune_fewshot.
CODE_CHANGES = {
    "test-time evaluation": (
        "flyp/evaluation.py",
        "    ood = [metrics[s.name] for s in bench.ood_sets]",
        "    ood = [metrics[s.name] for s in bench.ood_sets if s.ood]",
        {"evaluate_ensemble", "finetune_fewshot", "report"},
    ),
    "the training loop": (
        "flyp/training.py",
        "    def factor(step: int) -> float:",
        "    assert total_steps >= 0\n\n    def factor(step: int) -> float:",
        {
            "pretrain",
            "features",
            "eval_cache",
            "finetune",
            "finetune_fewshot",
            "evaluate_ensemble",
            "report",
        },
    ),
    "a caption template": (
        "flyp/datasets/embedded.py",
        '    "a small {}.",',
        '    "a small {}.",\n    "a tiny {}.",',
        {"captions", "finetune", "finetune_fewshot", "evaluate_ensemble", "report"},
    ),
    "a comment": ("flyp/scoring.py", "def accuracy(", "# a comment\ndef accuracy(", set()),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CODE_CHANGES))
def test_code_changes_rerun_what_they_touch_and_nothing_else(built, change):
    root, env, _ = built
    path, old, new, expected = CODE_CHANGES[change]
    with edited(root / path, old, new):
        assert set(jobs_to_run(root, env)) == expected
    assert jobs_to_run(root, env) == {}


# Jobs that no finetuning parameter reaches: an experiment over one reruns none of them.
DATA_AND_MODEL_RULES = r"^(?:local)?rule (prepare_data|captions|pretrain|features|eval_cache):"


@pytest.mark.slow
def test_dvc_experiment_reruns_only_what_the_parameter_touches(built):
    root, env, _ = built
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline results"], root, env)
    pretrained = (root / "models/embedded/pretrained.safetensors").read_bytes()
    exp = run(["dvc", "exp", "run", "-S", "lr=3e-4"], root, env)
    out = exp.stdout + exp.stderr
    ran = re.findall(r"^(?:local)?rule (\w+):\n(?:.*\n)*?    wildcards: (.*)$", out, re.M)
    trained = {w for rule, w in ran if rule.startswith("finetune")}
    # lr reaches the methods that train; zero-shot and the linear probe do not train
    assert trained == {
        "method=lpft, seed=0",
        "method=flyp, seed=0",
        "method=flyp, shots=2, draw=0",
    }, out
    assert not re.search(DATA_AND_MODEL_RULES, out, re.M)
    assert (root / "models/embedded/pretrained.safetensors").read_bytes() == pretrained
    assert yaml.safe_load((root / "params.yaml").read_text())["lr"] in (3e-4, "3e-4", "0.0003")
    table = pd.read_csv(root / "results/table.csv")
    assert table["experiment"].dropna().str.len().gt(0).any()  # named after the DVC experiment

    diff = run(["dvc", "metrics", "diff", "--json"], root, env)
    changes = json.loads(diff.stdout)["results/metrics.json"]
    assert any(key.startswith("flyp.") for key in changes)
    assert any(key.startswith("lpft.") for key in changes)
    # lr touches neither zero-shot nor the linear probe (whose rows stay as they were)
    assert not any(key.startswith(("zeroshot.id", "lp.id")) for key in changes)

    show = run(["dvc", "exp", "show", "--json"], root, env)
    assert "0.0003" in show.stdout or "3e-4" in show.stdout or "3e-04" in show.stdout
    assert "avg_ood" in show.stdout
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "lr=3e-4"], root, env)


@pytest.mark.slow
def test_queued_experiments_run_the_grid_from_the_recorded_outputs(built):
    root, env, _ = built
    run(["dvc", "exp", "run", "--queue", "-S", "lr=1e-4,2e-4"], root, env)
    run(["dvc", "queue", "start", "--jobs", "1"], root, env)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    for name in re.findall(r"^\w+\s+(\S+)\s.*Success", status, re.M):
        log = run(["dvc", "queue", "logs", name], root, env).stdout
        # the workspace DVC made for it held the recorded outputs: flyp sync told Snakemake
        assert "sync: outputs restored by DVC marked current" in log, log
        assert not re.search(DATA_AND_MODEL_RULES, log, re.M), log
    show = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    text = json.dumps(show)
    assert "0.0001" in text or "1e-4" in text or "1e-04" in text
    assert "0.0002" in text or "2e-4" in text or "2e-04" in text


@pytest.fixture(scope="module")
def remote(built, tmp_path_factory):
    """The built project with a local-directory DVC remote, pushed and committed."""
    root, env, _ = built
    store = tmp_path_factory.mktemp("dvc-remote")
    run(["dvc", "remote", "add", "-d", "shared", str(store)], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "results and remote"], root, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env).stdout
    run(["dvc", "push"], root, env)
    return root, env


def clone(root: Path, env: dict, dest: Path) -> tuple[Path, dict]:
    run(["git", "clone", "-q", str(root), str(dest)], dest.parent, env)
    return dest, {**env, "PYTHONPATH": str(dest)}


@pytest.mark.slow
def test_dvc_pull_in_a_fresh_clone_leaves_nothing_to_do(remote, tmp_path):
    root, env = remote
    here, env = clone(root, env, tmp_path / "clone")
    run(["dvc", "pull"], here, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], here, env).stdout
    sync = run(["flyp", "sync"], here, env)
    assert "marked current" in sync.stderr, sync.stderr
    assert jobs_to_run(here, env) == {}
    assert "Data and pipelines are up to date" in run(["dvc", "status"], here, env).stdout


@pytest.fixture(scope="module")
def rebuilt(remote, tmp_path_factory):
    """The README's main command on a fresh clone of the pushed project (no remote pulled): it
    rebuilds everything from pretraining on. While it builds, a second Snakemake run that would
    write the table and `dvc exp run` are tried in the clone; what they said is returned with the
    clone. (The rebuild and the tests reading it share one build.)"""
    root, env = remote
    here, env = clone(root, env, tmp_path_factory.mktemp("rebuild") / "project")
    params = (here / "params.yaml").read_bytes()
    build = subprocess.Popen(
        ["snakemake", "--cores", "2", "results/table.csv"],
        cwd=here,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        log = here / "logs/embedded/pretrain.log"
        while not log.exists():
            assert time.time() < deadline and build.poll() is None, "pretraining never started"
            time.sleep(0.5)
        second = run(
            ["snakemake", "--cores", "1", "--forcerun", "report", "--", "results/table.csv"],
            here,
            env,
            check=False,
        )
        exp = run(["dvc", "exp", "run", "-S", "lr=2e-4"], here, env, check=False)
        params_during = (here / "params.yaml").read_bytes()
        still_running = build.poll() is None
    finally:
        out, _ = build.communicate(timeout=900)
    assert build.returncode == 0, out
    return (
        here,
        env,
        {
            "second": second,
            "exp": exp,
            "params": params,
            "params_during": params_during,
            "still_running": still_running,
        },
    )


@pytest.mark.slow
def test_a_fresh_clone_rebuilds_the_committed_numbers(rebuilt):
    """The README's main command on a fresh clone (no remote pulled) rebuilds the table, and
    `dvc metrics diff` finds the numbers equal to the committed ones (same machine)."""
    here, env, _ = rebuilt
    # rebuilt, not taken as up to date because the committed table is there
    assert (here / "models/embedded/pretrained.safetensors").is_file()
    assert (here / "results/embedded/table_inputs.json").is_file()
    diff = run(["dvc", "metrics", "diff", "--json"], here, env)
    assert json.loads(diff.stdout or "{}") == {}, diff.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], here, env).stdout


@pytest.mark.slow
def test_a_rerun_from_pretraining_gives_the_same_table_and_nothing_runs_over_it(remote, rebuilt):
    """The same seeds rebuild the same table from pretraining on (the fresh clone's rebuild:
    every number, checkpoint and hash as committed); and while that run builds, a second Snakemake
    run that would write the table is refused (Snakemake's lock), and so is `dvc exp run` (DVC's
    own lock, which the run holds), before it rewrites params.yaml or touches an output."""
    root, _ = remote
    here, env, during = rebuilt
    assert during["still_running"], "the run ended before the checks"
    assert during["second"].returncode != 0
    assert "cannot be locked" in during["second"].stdout + during["second"].stderr
    assert during["exp"].returncode != 0
    assert "Unable to acquire lock" in during["exp"].stdout + during["exp"].stderr
    assert during["params_during"] == during["params"] == (here / "params.yaml").read_bytes()
    committed = pd.read_csv(root / "results/table.csv")
    again = pd.read_csv(here / "results/table.csv")
    # What differs: the commit each was made at (the clone's has the results committed), which
    # every checkpoint's header records too, so the files' hashes differ but not their tensors;
    # and the experiment (the committed table was made under `dvc exp run`, named after it).
    assert list(again.columns) == list(committed.columns)
    same = [
        c
        for c in committed.columns
        if c
        not in (
            "git_revision",
            "eval_revision",
            "experiment",
            "checkpoint_sha256",
            "pretrained_sha256",
        )
    ]
    pd.testing.assert_frame_equal(committed[same], again[same])
    checkpoints = sorted(p.relative_to(root) for p in root.glob("models/**/*.safetensors"))
    assert checkpoints == sorted(p.relative_to(here) for p in here.glob("models/**/*.safetensors"))
    for path in checkpoints:
        assert same_tensors(root / path, here / path), path
    assert "Data and pipelines are up to date" in run(["dvc", "status"], here, env).stdout
