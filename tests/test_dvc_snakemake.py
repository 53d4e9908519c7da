"""dvc.yaml is one stage that runs the Snakefile, so the DAG has one owner. What DVC believes the
stage reads (deps, params) and writes (outs) must cover exactly what Snakemake's jobs read and
write, for the main job's configuration and for a smoke one; and each rule's code hash must follow
the code its command runs."""

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, seeded_methods

# Raw archives and what they unpack to (data/raw/): deliberately not DVC outputs (hundreds of GB,
# licensed data that must not be pushed to a remote); their checksums are parameters (params.yaml),
# and DVC versions the prepared tables that index them.
RAW = "data/raw/"
JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


@cache
def dag_jobs(*config: str) -> list[dict]:
    """Every job of the DAG for results/table.csv, forced (rule, input and output files), as
    `snakemake -n` lists them; ``config``: KEY=VALUE overrides of params.yaml. Listed once per
    configuration (a dry run takes seconds); callers only read it."""
    extra = ["--config", *config] if config else []
    out = subprocess.run(
        ["snakemake", "-n", "--forceall", "--cores", "1", *extra, "--", "results/table.csv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs, job = [], None
    for line in out.splitlines():
        if m := JOB.match(line):
            job = {"rule": m.group(1), "input": [], "output": []}
            jobs.append(job)
        elif job is not None and line.startswith("    input: "):
            job["input"] = line[len("    input: ") :].split(", ")
        elif job is not None and line.startswith("    output: "):
            job["output"] = line[len("    output: ") :].split(", ")
    return jobs


def dvc_stage(root: Path = ROOT) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        assert len(stages) == 1, "dvc.yaml must hold one stage: the Snakefile owns the DAG"
        stage = stages[0]
        params = [d for d in stage.deps if type(d).__name__ == "ParamsDependency"]
        return {
            "cmd": stage.cmd,
            "outs": [str(o.def_path) for o in stage.outs],
            "deps": [str(d.def_path) for d in stage.deps if d not in params],
            "params": {str(p.def_path): list(p.params) for p in params},
        }


def under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


CONFIGS = {
    "main job": [],
    "smoke with few-shot draws": ["scale=smoke", "seeds=[0,1]"],
    "smoke with a sweep": [
        "scale=smoke",
        "seeds=[0,1]",
        "presets={embedded: {sweep: {flyp: {lr: [1e-5, 1e-4]}}}}",
    ],
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def dag(request):
    return dag_jobs(*CONFIGS[request.param])


@pytest.fixture(scope="module")
def stage():
    return dvc_stage()


def test_the_stage_runs_the_whole_snakefile(stage):
    assert stage["cmd"].endswith("snakemake --cores all results/table.csv")
    snakefile = (ROOT / "Snakefile").read_text()
    assert re.search(r"rule all:\s+input:\s+\"results/table.csv\"", snakefile)


@pytest.mark.slow
def test_every_file_a_job_writes_is_a_dvc_output(dag, stage):
    for job in dag:
        for path in job["output"]:
            if path.startswith(RAW):
                assert job["rule"] in {"download", "extract"}
                continue
            assert under(path, stage["outs"]), f"{path} ({job['rule']}) is not versioned by DVC"


@pytest.mark.slow
def test_every_dvc_output_is_written_by_a_job(dag, stage):
    written = [p for job in dag for p in job["output"]]
    for out in stage["outs"]:
        assert any(under(p, [out]) for p in written), f"DVC declares {out}; no job writes it"


@pytest.mark.slow
def test_every_file_a_job_reads_is_made_in_the_dag_or_a_raw_archive(dag, stage):
    written = {p for job in dag for p in job["output"]}
    for job in dag:
        for path in job["input"]:
            if path == "<TBD>":  # named once a sweep's pick is made (a checkpoint)
                continue
            assert path in written or path.startswith(RAW), f"{job['rule']} reads {path}"


def plotted_files(benchmark: str) -> list[str]:
    """Every file dvc.yaml's top-level plots name (``${benchmark}`` filled in)."""
    files = []
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        ((name, spec),) = entry.items()
        y = (spec or {}).get("y")
        files += list(y) if isinstance(y, dict) else [name]
    return [f.replace("${benchmark}", benchmark) for f in files]


@pytest.mark.slow
def test_every_plotted_file_is_written_by_the_main_job():
    written = [p for job in dag_jobs() for p in job["output"]]
    files = plotted_files("embedded")
    assert sum("pretrain_log" in f for f in files) == 3  # one curve per pretraining seed
    for path in files:
        if path == CURVES:  # written beside the training jobs' outputs, not as one of them
            continue
        assert any(under(path, [w]) for w in written), f"dvc.yaml plots {path}; no job writes it"


# Where training jobs write their DVCLive curves (flyp/progress.py; `flyp finetune --curves`).
CURVES = "logs/curves"


def test_the_runs_curves_are_plotted_from_outside_every_dvc_output(stage):
    from flyp.cli import finetune, pretrain
    from tests.test_progress import DVC_YAML_PLOTS

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert {CURVES: {"x": "step"}} in plots
    assert yaml.safe_load(DVC_YAML_PLOTS)["plots"] == [{CURVES: {"x": "step"}}]
    assert not under(CURVES, stage["outs"]) and not any(under(o, [CURVES]) for o in stage["outs"])
    for command in (finetune, pretrain):
        (curves,) = [p for p in command.params if p.name == "curves"]
        assert curves.default == CURVES and curves.envvar == "FLYP_CURVES"


def test_dvc_depends_on_all_parameters_and_all_code(stage):
    # all of params.yaml (no key list), which is the Snakefile's only config file
    assert stage["params"] == {"params.yaml": []}
    assert re.search(r'^configfile: "params.yaml"$', (ROOT / "Snakefile").read_text(), re.M)
    # the Snakefile, every file it includes or reads, and the library the jobs run
    included = re.findall(r'^include: "(.+)"$', (ROOT / "Snakefile").read_text(), re.M)
    for path in ["Snakefile", *included, "workflow/schemas/params.schema.yaml", "flyp/cli.py"]:
        assert under(path, stage["deps"]), f"{path} is not a DVC dependency"


def test_dvc_outputs_persist_so_snakemake_decides_what_is_stale():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["workflow"]
    for entry in spec["outs"] + spec.get("metrics", []):
        ((path, options),) = entry.items()
        assert options.get("persist") is True, f"{path}: DVC would delete it before the run"


def test_snakemake_lint_is_clean():
    done = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr


# What each rule's code hash reaches (flyp/workflow/codeversion.py): the definitions a step's
# command runs.
def reached_modules(*entries) -> set[str]:
    from flyp.workflow.codeversion import reached_code

    return {key.split(":")[0] for key in reached_code(*entries)}


def test_training_does_not_reach_test_time_evaluation():
    from flyp.methods import get_method, method_names

    for method in method_names():
        reached = reached_modules("flyp.cli:finetune", type(get_method(method)))
        assert "flyp.training" in reached and "flyp.scoring" in reached  # selection on ID-val
        assert not {"flyp.evaluation", "flyp.ensemble", "flyp.report"} & reached, method
    assert "flyp.evaluation" in reached_modules("flyp.cli:evaluate")


def test_a_method_reaches_its_own_module_and_not_the_others():
    from flyp.methods import get_method

    reached = reached_modules("flyp.cli:finetune", type(get_method("ft")))
    assert "flyp.methods.ft" in reached
    assert not {"flyp.methods.flyp", "flyp.methods.lp", "flyp.contrastive"} & reached


def test_preparing_data_does_not_reach_templates_or_torch_code():
    from flyp.datasets import get_benchmark
    from flyp.workflow.codeversion import reached_code

    bench = get_benchmark("embedded")
    reached = reached_code("flyp.cli:prepare", bench.prepare)
    assert "flyp.datasets.embedded:prepare" in reached
    assert "flyp.datasets.embedded:TEMPLATES" not in reached
    assert not {k for k in reached if k.startswith(("flyp.training", "flyp.models"))}


def test_the_code_hash_ignores_comments_and_follows_edits(tmp_path, monkeypatch):
    import shutil

    import flyp.workflow.codeversion as cv

    copy = tmp_path / "flyp"
    shutil.copytree(ROOT / "flyp", copy, ignore=shutil.ignore_patterns("__pycache__"))

    def version(*entries):
        cv._module.cache_clear()
        return cv.code_version(*entries)

    monkeypatch.setattr(cv, "ROOT", copy)
    before = version("flyp.cli:evaluate"), version("flyp.cli:finetune")
    scoring = copy / "scoring.py"
    text = scoring.read_text()
    scoring.write_text(
        text.replace('"""Top-1 accuracy.', '"""Top-1 accuracy (reworded).') + "\n# a comment\n"
    )
    assert (version("flyp.cli:evaluate"), version("flyp.cli:finetune")) == before
    evaluation = copy / "evaluation.py"
    evaluation.write_text(
        evaluation.read_text().replace(
            "    ood = [metrics[s.name] for s in bench.ood_sets]",
            "    ood = [metrics[s.name] for s in bench.ood_sets if s.ood]",
        )
    )
    assert version("flyp.cli:evaluate") != before[0]
    assert version("flyp.cli:finetune") == before[1]
    scoring.write_text(
        text.replace(
            "return (logits.argmax(dim=1) == labels)", "return (logits.argmax(dim=-1) == labels)"
        )
    )
    assert version("flyp.cli:evaluate") != before[0] and version("flyp.cli:finetune") != before[1]
    cv._module.cache_clear()


def test_provenance_names_the_commit_and_the_diff(tmp_path):
    from flyp.provenance import code_revision, revision_label

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "flyp").mkdir()
    (tmp_path / "flyp" / "a.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@e", "add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c")
    clean = code_revision(tmp_path)
    assert clean["diff_sha256"] is None and revision_label(clean) == clean["commit"]
    (tmp_path / "params.yaml").write_text("lr: 2\n")  # parameters are not code
    assert code_revision(tmp_path)["diff_sha256"] is None
    (tmp_path / "flyp" / "a.py").write_text("x = 2\n")
    (tmp_path / "flyp" / "new.py").write_text("y = 3\n")
    dirty = code_revision(tmp_path)
    assert "+x = 2" in dirty["diff"] and "y = 3" in dirty["diff"]
    assert revision_label(dirty) == f"{clean['commit']}+diff.{dirty['diff_sha256'][:12]}"
    assert revision_label(code_revision(Path("/"))) == "unknown"


def test_provenance_names_the_checkout_the_code_ran_from_wherever_the_job_runs(
    tmp_path, monkeypatch
):
    """A job run in another folder (Snakemake's -d, as `flyp fixture` prints it) names the commit
    of the checkout its flyp package was imported from, not "unknown"."""
    from flyp.provenance import CODE_ROOT, code_revision

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("the flyp package under test is not in a git checkout")
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert code_revision()["commit"] == head.stdout.strip()


def test_sync_gives_the_recorded_parameters_the_order_of_params_yaml():
    """DVC sorts the keys of the parameters it records; rules that walk a mapping (the data
    options) must see them in params.yaml's order, or every job looks changed."""
    from flyp.workflow.sync import ordered_like

    recorded = {"a": 1, "data": {"ood_size": 2, "seed": 0}, "z": [{"b": 1, "a": 2}]}
    current = {"z": [], "data": {"seed": 5, "ood_size": 3, "new": 1}, "lr": None}
    ordered = ordered_like(recorded, current)
    assert ordered == recorded
    assert list(ordered) == ["z", "data", "a"] and list(ordered["data"]) == ["seed", "ood_size"]


@pytest.mark.slow
def test_seedless_methods_run_once_and_every_seed_reuses_the_run():
    """Zero-shot and the linear probe do not depend on the seed (Method.seeded): with one
    pretrained model their full run is made and evaluated for the first seed only; the other
    seeds' result files are copies, and the methods built on them (LP-FT, every ensemble) read
    that one run."""
    jobs = dag_jobs("presets={embedded: {pretrain: {seeds: [0]}}}")
    made = {out for job in jobs for out in job["output"]}
    for method in ("zeroshot", "lp"):
        assert f"models/embedded/{method}/seed0/best.safetensors" in made
        assert f"models/embedded/{method}/seed1/best.safetensors" not in made
        for seed in (1, 2):
            reuse = [
                j
                for j in jobs
                if f"results/embedded/{method}/seed{seed}/metrics.json" in j["output"]
            ]
            assert [j["rule"] for j in reuse] == ["reuse_seedless"]
            assert all("/seed0/" in f for f in reuse[0]["input"])
    for job in jobs:
        if (
            job["rule"] == "finetune"
            and "models/embedded/lpft/seed2/best.safetensors" in job["output"]
        ):
            assert "models/embedded/lp/seed0/best.safetensors" in job["input"]
        if (
            job["rule"] == "evaluate_ensemble"
            and "results/embedded/ft/seed1/metrics.json" in job["output"]
        ):
            assert "models/embedded/zeroshot/seed0/best.safetensors" in job["input"]
            assert "results/embedded/zeroshot/seed0/metrics.json" in job["input"]
    # the seeded methods once per seed, the seedless ones once (a swept method's first seed is
    # its picked grid run, reused)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seeded = seeded_methods(params["methods"])
    trained = [j for j in jobs if j["rule"] in ("finetune", "reuse_sweep_run")]
    assert len(trained) == len(seeded) * len(params["seeds"]) + len(params["methods"]) - len(seeded)


def test_a_run_holds_dvcs_lock_so_no_dvc_command_starts(tmp_path):
    """What a Snakemake run takes at its first job (flyp.workflow.sync.hold_dvc_lock): DVC's own
    lock, so that DVC's commands refuse to start; a second holder is one line; no DVC project, no
    lock."""
    from dvc.lock import Lock, LockError

    from flyp.io import UserError
    from flyp.workflow.sync import DVC_LOCK, hold_dvc_lock

    assert hold_dvc_lock(tmp_path) is None
    (tmp_path / ".dvc").mkdir()
    held = hold_dvc_lock(tmp_path)
    try:
        with pytest.raises(UserError, match=r"lock: a DVC command is running in .*wait"):
            hold_dvc_lock(tmp_path)
        dvc = Lock(str(tmp_path / DVC_LOCK))
        with pytest.raises(LockError):
            dvc._do_lock()  # what each of DVC's attempts does
    finally:
        held.close()
    dvc = Lock(str(tmp_path / DVC_LOCK))
    dvc._do_lock()
    dvc.unlock()
