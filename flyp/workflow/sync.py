"""Make Snakemake's records agree with outputs that DVC restored.

DVC restores outputs by content (`dvc pull`, `dvc checkout`, a queued experiment's workspace) but
not their file dates, and a fresh workspace has no Snakemake records (`.snakemake/metadata`), so
Snakemake would judge the restored files by the order DVC happened to write them and rebuild most
of the DAG. When DVC finds the outputs and the code to be exactly what dvc.lock recorded, they are
the result of running the DAG with that code and dvc.lock's parameters: Snakemake is told so
(`snakemake --touch --forceall` with those parameters, which records them), and its next run then
reruns exactly the jobs that parameters changed since (a queued `dvc exp run -S lr=...`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from flyp.io import UserError

STAGE = "workflow"  # dvc.yaml's one stage
TARGET = "results/table.csv"
DVC_LOCK = Path(".dvc") / "tmp" / "lock"  # the lock every DVC command that may write takes first


def snakemake_has_records(root: Path) -> bool:
    metadata = root / ".snakemake" / "metadata"
    return metadata.is_dir() and any(metadata.iterdir())


def recorded_state(root: Path) -> tuple[dict | None, str]:
    """(dvc.lock's parameters, "") when DVC finds the stage's outputs and code to be what dvc.lock
    recorded; (None, why not) otherwise. Reads the workspace only (no DVC lock is taken, so this
    also runs inside the stage DVC is running)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not (root / "dvc.lock").is_file():
        return None, "no dvc.lock"
    try:
        with Repo(str(root)) as repo:
            stage = next(s for s in repo.stage.collect(STAGE))
            params = None
            for dep in stage.deps:
                if type(dep).__name__ == "ParamsDependency":
                    params = dict(dep.hash_info.value) if dep.hash_info else None
                elif dep.status():
                    return None, f"{dep.def_path} differs from what dvc.lock recorded"
            for out in stage.outs:
                # "not in cache": the file is what dvc.lock recorded, DVC's cache just lacks it
                if set(out.status().values()) - {"not in cache"}:
                    return None, f"{out.def_path} is not what dvc.lock recorded"
    except (DvcException, StopIteration) as e:
        return None, f"DVC cannot read stage {STAGE!r} ({e})"
    if not params:
        return None, "dvc.lock records no parameters"
    return params, ""


def check_no_run_in_progress(root: Path) -> None:
    """A Snakemake run holds locks in .snakemake/locks while it runs: a second run (the one DVC's
    stage starts under `dvc exp run`) must stop before touching anything."""
    locks = root / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        raise UserError(
            f"a snakemake run is in progress in {root} ({locks}): wait for it to end "
            "(or, if none is, run `snakemake --unlock`), then run again; under `dvc "
            "exp run`, `git checkout params.yaml` undoes the parameter change"
        )


def hold_dvc_lock(root: Path = Path(".")):
    """Take DVC's repository lock for as long as this process runs (or until ``.close()``), so
    that no DVC command starts in this workspace while a Snakemake run builds in it: `dvc exp run`
    then stops before it rewrites params.yaml, and `dvc checkout` or `dvc repro` before they touch
    an output. It is the lock DVC itself takes (zc.lockfile on .dvc/tmp/lock; a DVC configured
    with `core.hardlink_lock` uses another, which this does not see), released by the system
    however the process ends. None outside a DVC project or without DVC installed; a one-line
    UserError when a DVC command holds it now."""
    if not (root / ".dvc").is_dir():
        return None
    try:
        import zc.lockfile
    except ImportError:  # no DVC here: no DVC command can start either
        return None
    path = root / DVC_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return zc.lockfile.LockFile(str(path))
    except zc.lockfile.LockError:
        raise UserError(
            f"{path}: a DVC command is running in {root.resolve()} (it holds DVC's "
            "lock): wait for it to end, then run again"
        ) from None


def ordered_like(value, model):
    """``value`` (dvc.lock's parameters, whose keys DVC sorts) with its mappings' keys in the order
    of ``model`` (params.yaml), so that anything the rules build by walking a mapping comes out as
    it did in the run that made the outputs."""
    if not isinstance(value, dict) or not isinstance(model, dict):
        return value
    keys = [k for k in model if k in value] + [k for k in value if k not in model]
    return {k: ordered_like(value[k], model.get(k)) for k in keys}


def sync(root: Path, *, force: bool = False, log=print) -> bool:
    """Mark the DVC-restored outputs current for Snakemake; True when it did. Without ``force``
    only in a workspace where Snakemake has no records yet (its records, where they exist, know
    more than file dates). Stops first if a Snakemake run is in progress there."""
    root = Path(root)
    check_no_run_in_progress(root)
    if not force and snakemake_has_records(root):
        log("sync: Snakemake has its own records here; nothing to do (--force to replace them)")
        return False
    params, why = recorded_state(root)
    if params is None:
        log(f"sync: not marking outputs current: {why}; Snakemake judges them by file dates")
        return False
    current = yaml.safe_load((root / "params.yaml").read_text()) or {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=root, delete=False) as f:
        yaml.safe_dump(ordered_like(params, current), f, sort_keys=False)
    env = {**os.environ, "DVC_STAGE": os.environ.get("DVC_STAGE", "flyp-sync")}  # no recording
    try:
        done = subprocess.run(
            [
                "snakemake",
                "--touch",
                "--forceall",
                "--cores",
                "1",
                "--quiet",
                "all",
                "--configfile",
                f.name,
                "--",
                TARGET,
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"sync: snakemake --touch failed in {root}: {last}")
    log("sync: outputs restored by DVC marked current for Snakemake (dvc.lock's parameters)")
    return True
