"""The few-shot protocol belongs to the presets that use it: ImageNet's DAG has no few-shot job,
SST2's has the paper's k = 4, 16, 32 x 50 draws (snakemake -n in an empty copy of the workflow)."""

import re

from tests.test_imagenet import job_counts, workflow_copy


def dry_run(work, benchmark: str, *args: str) -> str:
    import os
    import subprocess

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [
            "snakemake",
            "-n",
            "--cores",
            "all",
            "--config",
            f"benchmark={benchmark}",
            *args,
            "--",
            "results/table.csv",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def draws(out: str, benchmark: str) -> set[tuple[str, int, int]]:
    """(method, k, draw) of every few-shot checkpoint the dry run would train."""
    pattern = rf"models/{benchmark}/(\w+)/k(\d+)/draw(\d+)/best\.safetensors"
    return {(m, int(k), int(d)) for m, k, d in re.findall(pattern, out)}


def test_imagenet_dry_run_has_no_few_shot_jobs(tmp_path):
    out = dry_run(workflow_copy(tmp_path), "imagenet")
    counts = job_counts(out)
    assert "finetune_fewshot" not in counts and counts["report"] == 1
    assert not re.search(r"k\d+/draw\d+", out)


def test_sst2_dry_run_has_the_papers_few_shot_protocol(tmp_path):
    out = dry_run(workflow_copy(tmp_path), "sst2", "--printshellcmds")
    counts = job_counts(out)
    expected = {(m, k, d) for m in ("lp", "ft", "flyp") for k in (4, 16, 32) for d in range(50)}
    assert draws(out, "sst2") == expected
    assert counts["finetune_fewshot"] == len(expected) == 450
    # the whole k-shot training set in one batch: k x 2 classes
    k32 = next(
        line
        for line in out.splitlines()
        if "--shots 32 --draw 49" in line and "--method flyp" in line
    )
    assert "--batch-size 64 " in k32 and "--lr 1e-05 " in k32 and "--wd 0.2 " in k32
    # the reference's few-shot code: the later epoch on a val-loss tie, one transformed batch for
    # all epochs (methods that train), np.std over the draws in the table
    assert " --shots 32 --draw 49 --val-loss-tie later --augmentation once " in k32
    lp = [line for line in out.splitlines() if "--method lp" in line and "--shots" in line]
    assert lp and not any("--val-loss-tie" in line or "--augmentation" in line for line in lp)
    report = next(line for line in out.splitlines() if "flyp report" in line)
    assert " --draws 50 --fewshot-std-ddof 0 " in report


def test_the_smoke_scale_plans_the_main_jobs_dag_with_the_default_params(tmp_path):
    """`--config scale=smoke` (the tiny world the tests build) with params.yaml as it is: the same
    jobs as the main job, few-shot draws included (`snakemake -n`)."""
    work = workflow_copy(tmp_path)
    out = dry_run(work, "embedded", "--printshellcmds")
    main = job_counts(out)
    smoke = job_counts(dry_run(work, "embedded", "scale=smoke"))
    assert smoke == main and smoke["finetune_fewshot"] > 0
    # the embedded preset keeps the protocol's defaults, which no command names
    for option in ("--val-loss-tie", "--augmentation", "--fewshot-std-ddof"):
        assert option not in out


def test_every_class_of_the_smoke_world_has_the_smoke_scales_k(tmp_path):
    """The few-shot k of the smoke scale fits its world: every class has k train and k val images
    for every k (the check a few-shot job makes before it trains)."""
    import yaml

    from flyp.datasets import get_benchmark, table_path
    from flyp.datasets.tables import read_table
    from flyp.methods import Context
    from flyp.workflow.config import load_params
    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["scale"] = "smoke"
    run = load_params(params, ROOT / "workflow/schemas/params.schema.yaml")
    bench = get_benchmark("embedded")
    bench.prepare(tmp_path, **run["data"])
    assert run["fewshot"]["shots"] and run["fewshot"]["draws"]
    for split in ("train", "val"):
        labels = read_table(table_path(tmp_path, split), columns=["label"])["label"].to_numpy()
        for k in run["fewshot"]["shots"]:
            for draw in range(run["fewshot"]["draws"]):
                ctx = Context(
                    benchmark=bench,
                    pretrained=None,
                    data_dir=tmp_path,
                    captions_dir=None,
                    device=None,
                    tokenizer=None,
                    train_transform=None,
                    eval_transform=None,
                    seed=0,
                    shots=k,
                    draw=draw,
                )
                assert len(ctx.subset(labels, split)) == k * len(bench.classnames)
