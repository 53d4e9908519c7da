"""What `flyp fixture` writes, for every preset with a fixture: a config overlay that, layered over
params.yaml as Snakemake layers it, is a valid run of that preset whose every archive is a file
with the size and sha256 it states (or a folder, linked), and a tiny model's weights. The run
itself: tests/test_fixtures_e2e.py (slow).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from snakemake.utils import update_config

from flyp.cli import main
from flyp.datasets import get_benchmark
from flyp.datasets.download import local_source, read_in_place
from flyp.fixtures import MODEL, fixture_names
from flyp.io import UserError
from flyp.workflow.config import load_params, read_yaml
from tests.conftest import ROOT


@pytest.fixture(scope="module", params=fixture_names())
def written(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fixture-{request.param}")
    done = CliRunner().invoke(main, ["fixture", "--benchmark", request.param, "--out", str(out)])
    assert done.exit_code == 0, done.output
    return request.param, out, done.stdout


def layered(overlay: Path) -> dict:
    """params.yaml with the overlay deep-merged over it, as `--configfile` does."""
    config = read_yaml(ROOT / "params.yaml")
    update_config(config, read_yaml(overlay))
    return config


def test_the_overlay_is_a_valid_run_of_the_preset_on_the_fixture(written):
    preset, out, _ = written
    run = load_params(layered(out / "fixture.yaml"), ROOT / "workflow/schemas/params.schema.yaml")
    assert run["benchmark"] == preset and run["seeds"] == [0]
    assert run["finetune"]["precision"] == "fp32" and run["finetune"]["epochs"] <= 2
    assert run["model"] == {"name": MODEL, "pretrained": str(out / f"{MODEL}.safetensors")}
    for d in get_benchmark(preset).downloads:
        value = run["data"][d.name]
        if isinstance(value, dict):  # a file: fetched, and checked against what it states
            path = local_source(value["source"])
            assert read_in_place(value["source"]) is None and path.is_absolute()
            assert path.stat().st_size == value["size"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == value["sha256"]
        else:  # a folder, linked where it is
            assert Path(value).is_absolute() and Path(value).is_dir(), d.name


def test_the_printed_command_runs_the_dag_in_the_fixture_folder(written):
    _, out, printed = written
    command = printed.strip().splitlines()[-1]
    assert command.startswith("snakemake --cores all ")
    assert f"-s {ROOT / 'Snakefile'} -d {out} " in command
    assert (
        f"--configfile {ROOT / 'params.yaml'} {out / 'fixture.yaml'} -- results/table.csv"
        in command
    )


def test_the_weights_are_a_local_file_of_the_tiny_model(written):
    from flyp.models import create_clip

    _, out, _ = written
    weights = out / f"{MODEL}.safetensors"
    assert "openai" not in weights.name
    model = create_clip(MODEL, str(weights))
    assert model.visual.image_size == (32, 32)


def test_an_unknown_fixture_is_a_one_line_error(tmp_path):
    from flyp.fixtures import make_fixture

    with pytest.raises(UserError, match="no fixture for benchmark 'imagenet9'"):
        make_fixture("imagenet9", tmp_path)


def test_the_imagenet_archives_are_the_same_bytes_for_the_same_seed(tmp_path):
    import numpy as np

    from flyp.fixtures.imagenet import build_archives, fixture_layout

    layouts = [fixture_layout(np.random.default_rng(0)) for _ in range(2)]
    assert layouts[0] == layouts[1]
    small = layouts[0]
    small.train = dict(list(small.train.items())[:3])
    a = build_archives(tmp_path / "a", small)
    b = build_archives(tmp_path / "b", small)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)


def test_a_fixture_that_leaves_out_an_archive_is_refused(tmp_path, monkeypatch):
    from flyp.fixtures import FIXTURES, Fixture, make_fixture

    def partial(out, rng):
        (out / "x.tar").write_bytes(b"x")
        return Fixture(sources={"imagenet_val": out / "x.tar"})

    fixture_names()
    monkeypatch.setitem(FIXTURES, "imagenet", partial)
    with pytest.raises(UserError, match="expected one source for each archive"):
        make_fixture("imagenet", tmp_path)
