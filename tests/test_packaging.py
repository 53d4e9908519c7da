"""Installs into the environment a GPU user already has: pyproject.toml requires torch and
torchvision as ranges (pip keeps a CUDA build already there), constraints.txt pins the tested pair
inside those ranges, and .ci/run and the rules' conda environment install with it."""

import tomllib

import yaml
from packaging.requirements import Requirement

from tests.conftest import ROOT


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_torch_is_a_range_and_the_tested_pair_is_pinned_within_it():
    required, pinned = requirements(), pins()
    for name in ("torch", "torchvision"):
        spec = required[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned in pyproject.toml"
        assert spec.contains(pinned[name]), (name, str(spec), pinned[name])
    for name, version in pinned.items():  # every pin is one pyproject allows
        assert required[name].specifier.contains(version), (name, version)


def test_ci_and_the_conda_environment_install_with_the_constraints():
    assert '-c constraints.txt -e ".[test]"' in (ROOT / ".ci" / "run").read_text()
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "flyp.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-c ../../constraints.txt", "-e ../.."]
    assert (
        ROOT / "workflow" / "envs" / "../../constraints.txt"
    ).resolve() == ROOT / "constraints.txt"
