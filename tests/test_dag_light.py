"""Building the DAG stays light: what the workflow reads of the methods and of the code comes
from a cache keyed by the package's files, so `snakemake -n` on an unchanged package imports no
torch, and any edit under flyp/ reads the classes and the code again."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flyp.workflow import catalog, codeversion, parsecache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FLYP_CACHE", str(folder))
    catalog.methods.cache_clear()
    yield folder
    catalog.methods.cache_clear()


def test_the_catalog_says_what_the_method_classes_say(cache):
    from flyp.methods import get_method, method_names

    cached = catalog.methods()  # read from the classes, then stored
    assert sorted(cached) == method_names()
    catalog.methods.cache_clear()
    assert catalog.methods() == cached  # read back from the file
    for name, info in cached.items():
        method = get_method(name)
        assert info.trains == method.trains
        assert info.inputs == dict(method.inputs)
        assert info.option_specs() == method.option_specs()
        assert info.entry == f"{type(method).__module__}:{type(method).__qualname__}"


def test_a_cached_code_version_equals_the_walked_one(cache):
    from flyp.methods import get_method

    entry = type(get_method("l2sp"))
    first = codeversion.code_version("flyp.cli:finetune", entry)
    assert list(cache.glob("codeversion-*.json"))
    assert codeversion.code_version("flyp.cli:finetune", entry) == first
    assert codeversion.code_version(catalog.method_info("l2sp").entry, "flyp.cli:finetune") == first
    assert first != codeversion.code_version("flyp.cli:finetune", type(get_method("ft")))


def test_any_edit_under_the_package_starts_a_new_cache(tmp_path):
    package = tmp_path / "flyp"
    shutil.copytree(ROOT / "flyp", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = parsecache.package_hash(package)
    assert before == parsecache.package_hash()  # a copy is the same package
    (package / "models.py").write_text((package / "models.py").read_text() + "\n# edit\n")
    after = parsecache.package_hash(package)
    (package / "model_configs" / "extra.json").write_text("{}")
    assert len({before, after, parsecache.package_hash(package)}) == 3


def test_an_unreadable_or_unwritable_cache_is_only_slower(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("FLYP_CACHE", str(folder))
    (folder / f"methods-{parsecache.package_hash()}.json").write_text("{half a fi")
    assert parsecache.load("methods") == {}
    monkeypatch.setenv("FLYP_CACHE", str(folder / "file"))
    (folder / "file").write_text("not a folder")
    parsecache.store("methods", {"x": 1})  # no error
    assert parsecache.load("methods") == {}


def _dry_run(cwd, env):
    """`snakemake -n` of the main job; the modules its process imported (-X importtime)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "snakemake",
            "-n",
            "--forceall",
            "results/table.csv",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_building_the_dag_of_an_unchanged_package_imports_no_torch(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "workflow", project / "workflow")
    env = {
        **os.environ,
        "FLYP_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    first = _dry_run(project, env)  # an empty cache: the method classes are read once
    assert "torch" in first
    second = _dry_run(project, env)
    assert "torch" not in second and "open_clip" not in second
