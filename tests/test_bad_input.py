"""The bad-input catalogue: every way a user can misuse flyp, or a machine can fail it, ends in one
line naming the file, image, parameter or checkpoint and what was expected, a non-zero exit, and
no output left behind that a later step would trust.

One test per case. Cases tested in other files are listed with their test, not repeated here
(``here``: this file; ``faults``: test_faults.py).

- corrupt Parquet table
      here: test_a_corrupt_parquet_table_is_one_line
- corrupt safetensors header
      test_models.py: test_foreign_or_missing_checkpoint_is_a_clear_error;
      here: test_a_truncated_checkpoint_is_one_line
- missing caption rows
      here: test_missing_caption_rows_are_one_line
- unknown parameters
      test_config.py: test_bad_params_give_one_line_error_naming_the_key
- bad CLI values
      test_cli.py: test_finetune_bad_inputs, test_unknown_prepare_option
- kill -9 / SIGTERM, then a rerun
      here: test_a_killed_finetune_resumes_to_the_same_checkpoint
      (SIGTERM has no handler in flyp: the same path as SIGKILL)
- SIGINT (Ctrl-C), then a rerun
      here: test_ctrl_c_is_one_line_and_leaves_no_checkpoint;
      test_training.py: test_interrupted_run_resumes_to_the_same_weights
- two Snakemake runs at once
      test_pipeline.py:
      test_a_rerun_from_pretraining_gives_the_same_table_and_nothing_runs_over_it
- a read-only results/
      here: test_report_into_a_read_only_folder_is_one_line
- shell quoting of method options
      faults: test_every_parameter_in_a_shell_command_is_quoted
- weights_only=True
      here: test_a_resume_state_that_is_not_weights_is_never_unpickled
- archive traversal
      test_download.py: test_a_malicious_tar_member_cannot_escape,
      test_a_malicious_zip_member_cannot_escape
- 1. a diverged run (lr 1000)
      faults: test_diverged_training_stops_with_one_line_and_no_checkpoint,
      test_a_non_finite_validation_score_is_never_best
- 1. random bytes in tensor data
      faults: test_checkpoint_content_hash_is_verified
- 2. dvc exp run during snakemake
      here: test_dvc_exp_run_during_a_snakemake_run_stops_before_touching_anything;
      test_pipeline.py:
      test_a_rerun_from_pretraining_gives_the_same_table_and_nothing_runs_over_it (DVC's lock);
      test_dvc_snakemake.py: test_dvc_outputs_persist_so_snakemake_decides_what_is_stale
      (DVC never deletes an output before its stage runs)
- 3. unknown method options
      faults: test_unknown_or_ill_typed_method_options_are_refused_*
- 4. parameters reaching the shell
      faults: test_runtime_device_is_validated_by_the_schema,
      test_every_parameter_in_a_shell_command_is_quoted
- 5. --device cuda without a GPU
      faults: test_device_cuda_without_a_gpu_stops_before_any_work;
      test_profiles.py: test_device_cuda_without_a_gpu_is_one_line_at_parse_time (runtime.device)
- 5. a garbage embedded image
      here: test_a_garbage_embedded_image_names_the_table_and_the_image
- 5. a checkpoint whose tensors do not fit its architecture
      here: test_a_checkpoint_that_does_not_fit_its_architecture_is_one_line
- 5. --ensemble-with a checkpoint of another architecture
      here: test_ensemble_with_another_architecture_is_refused_before_any_evaluation
- 5. flyp report by hand on a read-only results/
      here: test_report_into_a_read_only_folder_is_one_line
- 5. errors in DataLoader workers
      here: test_an_error_in_a_dataloader_worker_is_the_same_one_line
- 6. the DVC recording's reason
      test_pipeline.py: test_a_failed_dvc_recording_quotes_dvcs_reason
- 7. data_hash of the data
      here: test_data_hash_changes_when_a_table_changes_after_prepare,
      test_data_hash_of_a_path_table_follows_its_image_files
- 8. private outputs
      faults: test_outputs_get_the_mode_of_the_users_umask

More cases:
- disk full writing a checkpoint
      here: test_a_full_disk_during_a_checkpoint_write_leaves_nothing
- disk full writing a table
      here: test_a_full_disk_during_prepare_leaves_no_table
- captions of another template set
      here: test_a_caption_table_of_another_template_set_is_refused
- weights of another architecture
      here: test_a_weights_file_of_another_architecture_is_one_line
- a table without a column
      here: test_a_table_without_a_column_names_it
- a class without images (few-shot)
      here: test_a_class_without_images_stops_a_few_shot_run
- a class without images (LP head)
      here: test_a_linear_probe_head_covers_classes_without_images
- an empty train table
      here: test_an_empty_train_table_is_one_line
- a checkpoint of another benchmark
      here: test_a_checkpoint_of_another_benchmark_is_refused
- --ensemble-with a checkpoint without a head
      here: test_ensemble_with_a_headless_checkpoint_is_refused
- a failure while weight ensembling
      here: test_a_failure_while_ensembling_leaves_no_metrics
- a table's image file gone
      here: test_data_hash_of_a_path_table_follows_its_image_files
- a manifest's table deleted
      here: test_a_deleted_table_of_the_manifest_is_one_line
- a truncated metrics file
      here: test_a_truncated_metrics_file_stops_the_report
- your own data (a folder or CSV of images, flyp/datasets/owndata.py): an empty class folder, a
  class in test or an OOD set that train lacks, a zero-byte or unreadable image, a CSV without a
  column or with an unknown split, a classnames file naming a label without images or missing an
  image's label, a path listed twice
      here: test_own_data_*; a file that is not an image is skipped and counted:
      test_own_data.py: test_prepare_writes_path_tables_whose_labels_match_the_folders;
      a bad own-data preset: test_own_data.py: test_a_bad_own_data_preset_is_one_line
- an evaluation cache of another resolution, of changed tables, or a folder that is not one;
  bad input to `flyp evalcache`
      test_evalcache.py: test_a_cache_made_for_another_resolution_is_refused,
      test_a_cache_of_tables_that_changed_since_is_refused,
      test_evaluate_refuses_a_folder_that_is_not_a_cache, test_bad_input_to_evalcache_is_one_line
- a job too big for its GPU's free memory (runtime.grad_checkpointing, batch, precision)
      test_memplan.py: test_the_pre_flight_check_stops_a_job_that_would_not_fit_with_one_line,
      test_a_finetune_on_a_faked_small_gpu_stops_before_it_allocates
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from flyp.cli import main
from flyp.datasets import table_path
from flyp.datasets.manifest import data_hash
from flyp.datasets.parquet import read_table, write_table
from flyp.datasets.tables import ImageTable
from flyp.io import UserError, sha256_file
from flyp.models import create_clip, load_checkpoint, save_checkpoint
from flyp.scoring import predict
from tests.conftest import ROOT, TINY


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles, code=2) -> str:
    """The one ``Error:`` line of a failed command, checked for ``needles``; no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output
    return errors[0]


def files_in(folder) -> set[str]:
    """Every file under ``folder`` (temporary files included), relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def tables(tiny_tables, tmp_path):
    """A private copy of the tiny embedded tables, to damage."""
    return shutil.copytree(tiny_tables, tmp_path / "tables")


@pytest.fixture(scope="module")
def zeroshot(tiny_tables, tiny_captions, tiny_pretrained, tmp_path_factory):
    """The zero-shot classifier checkpoint of the tiny CLIP."""
    out = tmp_path_factory.mktemp("zeroshot")
    result = invoke(
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        tiny_tables,
        "--captions",
        tiny_captions,
        "--pretrained",
        tiny_pretrained,
        "--method",
        "zeroshot",
        "--epochs",
        0,
        "--lr",
        1e-3,
        "--wd",
        0,
        "--batch-size",
        32,
        "--out",
        out / "best.safetensors",
        "--log-csv",
        out / "log.csv",
    )
    assert result.exit_code == 0, result.output
    return out / "best.safetensors"


def evaluate(tables, checkpoint, out, *extra):
    return invoke(
        "evaluate",
        "--benchmark",
        "embedded",
        "--data",
        tables,
        "--checkpoint",
        checkpoint,
        "--metrics-out",
        out / "metrics.json",
        "--provenance-out",
        out / "provenance.json",
        *extra,
    )


def finetune(tables, captions, pretrained, out, method="ft", *extra, epochs=1, batch_size=32):
    return invoke(
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        tables,
        "--captions",
        captions,
        "--pretrained",
        pretrained,
        "--method",
        method,
        "--epochs",
        epochs,
        "--lr",
        1e-3,
        "--wd",
        0,
        "--batch-size",
        batch_size,
        "--out",
        out / "best.safetensors",
        "--log-csv",
        out / "log.csv",
        *extra,
    )


# -- tables --------------------------------------------------------------------------------------


def test_a_corrupt_parquet_table_is_one_line(tables, zeroshot, tmp_path):
    table_path(tables, "test").write_bytes(b"PAR1 this is not a table")
    one_line_error(
        evaluate(tables, zeroshot, tmp_path / "out"), "test.parquet", "not a readable Parquet table"
    )
    assert not (tmp_path / "out").exists()


def test_a_garbage_embedded_image_names_the_table_and_the_image(tables, zeroshot, tmp_path):
    path = table_path(tables, "test")
    df = read_table(path)
    df.loc[3, "image"] = b"\x89PNG garbage"
    write_table(df, path)
    one_line_error(
        evaluate(tables, zeroshot, tmp_path / "out"),
        str(path),
        f"image {df.loc[3, 'image_id']!r} (row 3) is not a readable image",
    )
    assert not (tmp_path / "out").exists()


def test_a_table_without_a_column_names_it(tables, tiny_captions, tmp_path):
    path = table_path(tables, "train")
    write_table(read_table(path).drop(columns="label"), path)
    one_line_error(
        invoke(
            "captions", "--benchmark", "embedded", "--data", tables, "--out", tmp_path / "captions"
        ),
        "train.parquet: missing columns ['label']",
    )
    assert not (tmp_path / "captions").exists()


def test_missing_caption_rows_are_one_line(tables, tiny_captions, tiny_pretrained, tmp_path):
    captions = shutil.copytree(tiny_captions, tmp_path / "captions")
    path = table_path(captions, "captions")
    write_table(read_table(path).iloc[5:], path)
    one_line_error(
        finetune(tables, captions, tiny_pretrained, tmp_path / "out", "flyp"),
        "captions.parquet: no caption row for 5 training images",
        "rerun the captions step",
    )
    assert not (tmp_path / "out" / "best.safetensors").exists()


def test_a_caption_table_of_another_template_set_is_refused(
    tables, tiny_captions, tiny_pretrained, tmp_path
):
    captions = shutil.copytree(tiny_captions, tmp_path / "captions")
    for name in ("captions", "templates"):
        df = (
            read_table(table_path(captions, name))
            if name == "captions"
            else pd.read_parquet(table_path(captions, name))
        )
        df["template_set"] = "imagenet"
        write_table(df, table_path(captions, name))
    one_line_error(
        finetune(tables, captions, tiny_pretrained, tmp_path / "out", "flyp"),
        "captions.parquet: template sets ['imagenet'], expected only benchmark 'embedded''s",
    )
    assert not (tmp_path / "out" / "best.safetensors").exists()


def test_an_empty_train_table_is_one_line(tables, tiny_captions, tiny_pretrained, tmp_path):
    path = table_path(tables, "train")
    write_table(read_table(path).iloc[:0], path)
    one_line_error(
        finetune(tables, tiny_captions, tiny_pretrained, tmp_path / "out"),
        "0 training examples",
        "is the train table empty?",
    )
    assert not (tmp_path / "out" / "best.safetensors").exists()


def test_a_class_without_images_stops_a_few_shot_run(
    tables, tiny_captions, tiny_pretrained, tmp_path
):
    path = table_path(tables, "train")
    df = read_table(path)
    write_table(df[df["label"] != 11], path)
    one_line_error(
        finetune(tables, tiny_captions, tiny_pretrained, tmp_path / "out", "ft", "--shots", 1),
        "presets.embedded.fewshot.shots: k=1, but class 11",
        "has only 0 train images",
    )
    assert not (tmp_path / "out" / "best.safetensors").exists()


def test_a_linear_probe_head_covers_classes_without_images():
    from flyp.methods.lp import fit_linear_probe

    torch.manual_seed(0)
    x, y = torch.randn(40, 8), torch.arange(40) % 3  # classes 3 and 4 have no images
    head, _, _ = fit_linear_probe((x, y), (x, y), [1.0], n_classes=5)
    assert head.weight.shape == (5, 8)
    assert (head(x).argmax(1) < 3).all()  # a class never seen can never win


def test_a_deleted_table_of_the_manifest_is_one_line(tables, zeroshot, tmp_path):
    table_path(tables, "pretrain").unlink()
    one_line_error(
        evaluate(tables, zeroshot, tmp_path / "out"),
        "pretrain.parquet: table listed in manifest.json not found",
    )
    assert not (tmp_path / "out").exists()


# -- data_hash hashes the tables themselves, not only manifest.json --------------------------------


def test_data_hash_changes_when_a_table_changes_after_prepare(tables):
    before = data_hash(tables)
    manifest = (tables / "manifest.json").read_bytes()
    path = table_path(tables, "test")
    write_table(read_table(path).iloc[1:], path)
    assert (tables / "manifest.json").read_bytes() == manifest
    assert data_hash(tables) != before


def _path_table(folder, n=4):
    """A path-based table (as the real benchmarks write): image files beside it."""
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    df = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "path": [f"img{i}.png" for i in range(n)],
        }
    )
    write_table(df, table_path(folder, "test"))
    (folder / "manifest.json").write_text(json.dumps({"tables": {"test": {}}}))
    return table_path(folder, "test")


def test_data_hash_of_a_path_table_follows_its_image_files(tmp_path):
    _path_table(tmp_path)
    before = data_hash(tmp_path)
    assert data_hash(tmp_path) == before
    image = tmp_path / "img2.png"
    Image.fromarray(np.full((9, 8, 3), 1, np.uint8)).save(image)  # replaced after prepare
    assert data_hash(tmp_path) != before
    image.unlink()
    with pytest.raises(UserError, match=r"test.parquet: image file 'img2.png' not readable"):
        data_hash(tmp_path)


def test_an_error_in_a_dataloader_worker_is_the_same_one_line(tmp_path):
    from torchvision.transforms import ToTensor

    _path_table(tmp_path)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    dataset = ImageTable(table_path(tmp_path, "test"), ToTensor())
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    messages = []
    for workers in (0, 1):
        try:  # (not pytest.raises: its traceback would keep the worker alive until teardown)
            predict(model, dataset, batch_size=2, num_workers=workers)
        except UserError as e:
            messages.append(str(e))
    assert len(messages) == 2
    assert messages[0] == messages[1]
    assert "\n" not in messages[1]
    assert "img2.png: cannot read image 'img2' of test.parquet" in messages[1]


# -- checkpoints and weights ---------------------------------------------------------------------


def test_a_truncated_checkpoint_is_one_line(zeroshot, tables, tmp_path):
    broken = tmp_path / "half.safetensors"
    broken.write_bytes(zeroshot.read_bytes()[: zeroshot.stat().st_size // 2])
    one_line_error(
        evaluate(tables, broken, tmp_path / "out"),
        "half.safetensors",
        "not a readable safetensors checkpoint",
    )
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_does_not_fit_its_architecture_is_one_line(zeroshot, tables, tmp_path):
    ckpt = load_checkpoint(zeroshot)
    clip = dict(ckpt.clip)
    del clip["visual.trunk.conv1.0.weight"]
    clip["text_projection"] = torch.zeros(3, 3)
    path = tmp_path / "misfit.safetensors"
    save_checkpoint(path, ckpt.model_name, clip, ckpt.head, ckpt.info)  # a valid content hash
    line = one_line_error(
        evaluate(tables, path, tmp_path / "out"),
        "misfit.safetensors: its tensors do not fit its declared architecture 'flyp-tiny-rn10t'",
        "1 missing (e.g. 'visual.trunk.conv1.0.weight')",
        "1 of another shape (e.g. 'text_projection': [3, 3]",
    )
    assert len(line) < 400
    assert not (tmp_path / "out").exists()


def test_a_weights_file_of_another_architecture_is_one_line(tmp_path):
    from safetensors.torch import save_file

    vit = create_clip("flyp-fixture-vit").state_dict()
    save_file({k: v.contiguous() for k, v in vit.items()}, str(tmp_path / "vit.safetensors"))
    one_line_error(
        invoke(
            "pretrained",
            "--model",
            "flyp-tiny-rn10t",
            "--pretrained",
            tmp_path / "vit.safetensors",
            "--out",
            tmp_path / "out/p.safetensors",
            "--log-csv",
            tmp_path / "out/log.csv",
        ),
        "cannot load weights",
        "vit.safetensors",
        "do not fit this architecture",
    )
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_benchmark_is_refused(zeroshot, tables, tmp_path):
    ckpt = load_checkpoint(zeroshot)
    head = {"weight": ckpt.head["weight"][:10], "bias": ckpt.head["bias"][:10]}
    path = tmp_path / "ten.safetensors"
    save_checkpoint(path, ckpt.model_name, ckpt.clip, head, ckpt.info)
    one_line_error(
        evaluate(tables, path, tmp_path / "out"),
        "ten.safetensors: its head scores 10 classes, but benchmark 'embedded' has 12",
    )
    assert not (tmp_path / "out").exists()


def _ensemble(tables, checkpoint, zs, out):
    return evaluate(
        tables,
        checkpoint,
        out,
        "--ensemble-with",
        zs,
        "--alphas",
        "0,0.5,1",
        "--curve-out",
        out / "curve.csv",
        "--wise-out",
        out / "wise.json",
    )


def test_ensemble_with_another_architecture_is_refused_before_any_evaluation(
    zeroshot, tables, tmp_path
):
    vit = create_clip("flyp-fixture-vit")
    other = tmp_path / "vit.safetensors"
    save_checkpoint(other, "flyp-fixture-vit", vit, nn.Linear(vit.text_projection.shape[1], 12))
    result = _ensemble(tables, zeroshot, other, tmp_path / "out")
    one_line_error(
        result,
        "--ensemble-with",
        "vit.safetensors: a 'flyp-fixture-vit' checkpoint",
        "is 'flyp-tiny-rn10t'",
        "needs the same architecture",
    )
    assert "accuracy" not in result.output  # no test set was scored
    assert not (tmp_path / "out").exists()


def test_ensemble_with_a_headless_checkpoint_is_refused(
    zeroshot, tiny_pretrained, tables, tmp_path
):
    ft = load_checkpoint(zeroshot)
    path = tmp_path / "ft.safetensors"
    save_checkpoint(path, ft.model_name, ft.clip, ft.head, {**ft.info, "head_from_text": False})
    one_line_error(
        _ensemble(tables, path, tiny_pretrained, tmp_path / "out"),
        "pretrained.safetensors: its tensors do not fit those of",
        "2 missing",
    )
    assert not (tmp_path / "out").exists()


def test_a_failure_while_ensembling_leaves_no_metrics(zeroshot, tables, tmp_path):
    ft = load_checkpoint(zeroshot)
    path = tmp_path / "ft.safetensors"
    clip = {k: v + 0.01 if v.is_floating_point() else v for k, v in ft.clip.items()}
    save_checkpoint(path, ft.model_name, clip, ft.head, ft.info)
    val = table_path(tables, "val")
    df = read_table(val)
    df.loc[0, "image"] = b"garbage"
    write_table(df, val)  # the val set is read only by weight ensembling, after the test sets
    out = tmp_path / "out"
    one_line_error(_ensemble(tables, path, zeroshot, out), "val.parquet", "not a readable image")
    assert files_in(out) == set()


# -- writing outputs -----------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_write_leaves_nothing(
    tables, tiny_captions, tiny_pretrained, tmp_path, monkeypatch
):
    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # a part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("flyp.models.save_file", full_disk)
    out = tmp_path / "out"
    one_line_error(
        finetune(tables, tiny_captions, tiny_pretrained, out, "zeroshot", epochs=0),
        f"{out / 'best.safetensors'}: cannot write (No space left on device)",
    )
    assert files_in(out) == set()


def test_a_full_disk_during_prepare_leaves_no_table(tmp_path, monkeypatch):
    def full_disk(table, where, **kwargs):
        open(where, "wb").close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("flyp.datasets.parquet.pq.write_table", full_disk)
    out = tmp_path / "tables"
    options = [f"-o{k}={v}" for k, v in {**TINY, "pretrain_size": 24}.items()]
    one_line_error(
        invoke("prepare", "--benchmark", "embedded", "--out", out, *options),
        "cannot write (No space left on device)",
    )
    assert files_in(out) == set()


def _results(root):
    from tests.test_report import SETS, _write

    for seed in (0, 1):
        _write(root, "zeroshot", f"seed{seed}", dict.fromkeys(SETS, 0.5))


def _report(results, out):
    return invoke(
        "report",
        "--benchmark",
        "embedded",
        "--results",
        results,
        "--methods",
        "zeroshot",
        "--seeds",
        "0,1",
        "--table",
        out / "table.csv",
        "--metrics-out",
        out / "metrics.json",
    )


def test_report_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    _results(tmp_path / "results")
    out = tmp_path / "results"
    before = files_in(out)
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse as a read-only folder would

        def read_only(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)

        monkeypatch.setattr("flyp.io.tempfile.mkstemp", read_only)
    try:
        one_line_error(_report(out, out), f"{out / 'table.csv'}: cannot write (Permission denied)")
    finally:
        out.chmod(0o755)
    assert files_in(out) == before


def test_a_truncated_metrics_file_stops_the_report(tmp_path):
    _results(tmp_path / "results")
    metrics = tmp_path / "results/zeroshot/seed1/metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    one_line_error(_report(tmp_path / "results", tmp_path / "out"), str(metrics), "not valid JSON")
    assert not (tmp_path / "out").exists()


# -- interruptions -------------------------------------------------------------------------------


def test_a_resume_state_that_is_not_weights_is_never_unpickled(tmp_path):
    from flyp.training import fit
    from tests.test_training import CFG, ToyTask

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    work = tmp_path / ".best.pt.resume"
    work.mkdir()
    torch.save({"run_hash": "x", "payload": Exploit()}, work / "state.pt")
    messages = []
    fit(
        ToyTask([0.1, 0.2, 0.3, 0.4]),
        CFG,
        out=tmp_path / "best.pt",
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        info={},
        progress=messages.append,
    )
    assert not (tmp_path / "pwned").exists()
    assert any("not a resume state of this loop" in m for m in messages)
    assert (tmp_path / "best.pt").is_file()


def test_ctrl_c_is_one_line_and_leaves_no_checkpoint(
    tables, tiny_captions, tiny_pretrained, tmp_path, monkeypatch
):
    def interrupted(module):  # Ctrl-C at the end of the first epoch
        raise KeyboardInterrupt

    monkeypatch.setattr("flyp.training.weights_finite", interrupted)
    result = finetune(tables, tiny_captions, tiny_pretrained, tmp_path / "out")
    assert result.exit_code == 1 and result.output.strip().endswith("Aborted!"), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "best.safetensors").exists()


def test_a_killed_finetune_resumes_to_the_same_checkpoint(
    tables, tiny_captions, tiny_pretrained, tmp_path
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = finetune(tables, tiny_captions, tiny_pretrained, straight, epochs=3, batch_size=16)
    assert done.exit_code == 0, done.output
    args = [
        "finetune",
        "--benchmark",
        "embedded",
        "--data",
        tables,
        "--captions",
        tiny_captions,
        "--pretrained",
        tiny_pretrained,
        "--method",
        "ft",
        "--epochs",
        3,
        "--lr",
        1e-3,
        "--wd",
        0,
        "--batch-size",
        16,
        "--out",
        killed / "best.safetensors",
        "--log-csv",
        killed / "log.csv",
        "--threads",
        torch.get_num_threads(),
        "--checkpoint-minutes",
        0,
    ]  # a state after every step: one is there to kill at
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flyp.cli", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / ".best.safetensors.resume" / "state.pt"
    try:
        # Ends as soon as the state is there; generous for a loaded CI machine (60 s was not).
        deadline = time.time() + 300
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert state.exists() and not (killed / "best.safetensors").exists()
    result = finetune(tables, tiny_captions, tiny_pretrained, killed, epochs=3, batch_size=16)
    assert result.exit_code == 0 and "resuming from" in result.output, result.output
    assert sha256_file(killed / "best.safetensors") == sha256_file(straight / "best.safetensors")


def test_dvc_exp_run_during_a_snakemake_run_stops_before_touching_anything(tmp_path, monkeypatch):
    """DVC's stage starts with `flyp sync`, which refuses while another Snakemake run holds its
    locks in the directory (before, DVC deleted that run's outputs)."""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("models/embedded/pretrained.safetensors\n")
    output = tmp_path / "models" / "embedded" / "pretrained.safetensors"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"being written")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sync"])
    one_line_error(result, "a snakemake run is in progress in ", "git checkout params.yaml", code=2)
    assert output.read_bytes() == b"being written"


# ----------------------------------------------------------------------------------------------
# Your own data: `flyp prepare` on a folder or CSV stops with one line naming the file or folder,
# and writes nothing.


def _own_folder(root, classes=("cat", "dog"), splits=("train", "test")):
    for split in splits:
        for c in classes:
            for i in range(3):
                _own_image(root / split / c / f"{i}.png")
    return root


def _own_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def _own_prepare(tmp_path, needle, **spec):
    """`flyp prepare` of the source ``spec`` names (imagefolder unless it says csv): one line with
    ``needle``, and nothing written."""
    if "csv" not in spec:
        spec = {"dataset": "imagefolder", "root": str(tmp_path / "images"), **spec}
    out = tmp_path / "tables"
    one_line_error(invoke("prepare", "--benchmark", json.dumps(spec), "--out", out), needle)
    assert files_in(out) == set() if out.exists() else True


def test_own_data_an_empty_class_folder_is_named(tmp_path):
    (_own_folder(tmp_path / "images") / "train" / "bird").mkdir()
    _own_prepare(tmp_path, f"{tmp_path}/images/train/bird: empty class folder")


def test_own_data_a_class_that_train_lacks_is_named(tmp_path):
    root = _own_folder(tmp_path / "images")
    _own_image(root / "ood" / "night" / "bird" / "0.png")
    _own_prepare(tmp_path, "split 'night' has class(es) ['bird'] that train lacks")


def test_own_data_a_zero_byte_image_is_named(tmp_path):
    root = _own_folder(tmp_path / "images")
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    _own_prepare(tmp_path, f"{root}/train/cat/empty.jpg: zero-byte image")


def test_own_data_an_unreadable_image_is_named(tmp_path):
    root = _own_folder(tmp_path / "images")
    (root / "test" / "dog" / "bad.png").write_bytes(b"not a png at all")
    _own_prepare(tmp_path, f"{root}/test/dog/bad.png: not a readable image")


def _own_csv(tmp_path, rows, header="path,label,split"):
    _own_folder(tmp_path / "images")
    lines = [header, *rows]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "data.csv")


def _csv_rows():
    return [
        f"images/{s}/{c}/{i}.png,{c},{s}"
        for s in ("train", "test")
        for c in ("cat", "dog")
        for i in range(3)
    ]


def test_own_data_a_csv_without_a_column_is_named(tmp_path):
    csv_file = _own_csv(tmp_path, [r.rsplit(",", 1)[0] for r in _csv_rows()], header="path,label")
    _own_prepare(tmp_path, f"{csv_file}: missing column(s) ['split']", dataset="csv", csv=csv_file)


def test_own_data_an_unknown_split_is_named(tmp_path):
    rows = _csv_rows()
    rows[3] = rows[3].replace(",train", ",validation")
    csv_file = _own_csv(tmp_path, rows)
    _own_prepare(
        tmp_path, f"{csv_file}: line 5: unknown split 'validation'", dataset="csv", csv=csv_file
    )


def test_own_data_a_path_listed_twice_is_named(tmp_path):
    rows = _csv_rows()
    csv_file = _own_csv(tmp_path, [*rows, rows[0].replace(",train", ",test")])
    _own_prepare(
        tmp_path,
        "path 'images/train/cat/0.png' is listed more than once",
        dataset="csv",
        csv=csv_file,
    )


def test_own_data_a_classname_without_images_is_named(tmp_path):
    _own_folder(tmp_path / "images")
    names = tmp_path / "names.csv"
    names.write_text("label,name\ncat,cat\ndog,dog\nbird,bird\n")
    _own_prepare(tmp_path, f"{names}: label(s) ['bird'] have no images", classnames=str(names))


def test_own_data_a_label_without_a_name_is_named(tmp_path):
    _own_folder(tmp_path / "images")
    names = tmp_path / "names.json"
    names.write_text('{"cat": "cat"}')
    _own_prepare(tmp_path, f"{names}: no name for label(s) ['dog']", classnames=str(names))
