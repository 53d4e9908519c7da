"""A cache for what building the workflow's DAG reads of the package itself (the method catalog,
the code hash of each step), so that `snakemake -n` and a no-op run neither import torch nor walk
the syntax trees again while nothing under flyp/ changed.

Entries live as JSON in the user's cache folder (``$FLYP_CACHE``, else ``$XDG_CACHE_HOME/flyp``,
else ``~/.cache/flyp``), in a file named after a hash of every file of the package: an edit
anywhere under flyp/ starts a new file. A cache that cannot be read or written is only slower.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from flyp.io import UserError, write_json

PACKAGE = Path(__file__).resolve().parents[1]  # the flyp package


def package_hash(package: Path = PACKAGE) -> str:
    """Hash of every file of the package (relative paths and bytes; bytecode excluded): about
    2 ms, so it is taken at every use, never from a copy an edit could have made stale."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    if os.environ.get("FLYP_CACHE"):
        return Path(os.environ["FLYP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flyp"


def _path(name: str, package: Path) -> Path:
    return cache_dir() / f"{name}-{package_hash(package)}.json"


def load(name: str, package: Path = PACKAGE) -> dict:
    """The cached entries of ``name`` for this version of the package ({} when none)."""
    try:
        data = json.loads(_path(name, package).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(name: str, data: dict, package: Path = PACKAGE) -> None:
    """Replace the entries of ``name`` (atomically; silently skipped if nothing can be written)."""
    try:
        write_json(_path(name, package), data)
    except (OSError, UserError):
        pass
