"""The code a result was made with, named so that anyone can get it back: the git commit, plus, when
the code differs from it, the hash of that difference (the diff itself travels with the result and
is saved beside the table), and the DVC experiment it ran under."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

# The code that makes the numbers. Parameters are not code: each result records their hash, and a
# `dvc exp run -S ...` changes params.yaml on purpose. Outputs (the table, which Snakemake deletes
# before the report job runs) and files outside these paths do not make a run "dirty".
CODE_PATHS = ["flyp", "workflow", "Snakefile", "pyproject.toml"]
# The checkout this flyp package was imported from: a step run from another folder (Snakemake's
# -d, as `flyp fixture` prints it) still names the code that ran. An install into site-packages
# is in no checkout: "unknown".
CODE_ROOT = Path(__file__).resolve().parents[1]


def code_revision(cwd: Path | None = None) -> dict:
    """{"commit", "diff_sha256", "diff"}: HEAD of the checkout ``cwd`` (default: the one this
    package was imported from, CODE_ROOT), and the uncommitted changes to CODE_PATHS (tracked
    files' diff plus untracked files' content) with their hash; diff "" and diff_sha256 None when
    there are none. {"commit": None, ...} outside a git checkout of this project."""
    cwd = cwd or CODE_ROOT

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "--no-color", "--no-ext-diff", "HEAD", "--", *CODE_PATHS)
        root = Path(git("rev-parse", "--show-toplevel").strip())
        for name in git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS).split():
            diff += f"--- /dev/null\n+++ b/{name} (untracked)\n{(root / name).read_text()}\n"
    except (OSError, UnicodeDecodeError, subprocess.CalledProcessError):
        return {"commit": None, "diff_sha256": None, "diff": ""}
    digest = hashlib.sha256(diff.encode()).hexdigest() if diff else None
    return {"commit": commit, "diff_sha256": digest, "diff": diff}


def revision_label(rev: dict | None) -> str:
    """ "<commit>" or "<commit>+diff.<first 12 of its hash>" (the diff is saved as
    results/code/<that>.diff); "unknown" outside git."""
    if not rev or not rev.get("commit"):
        return "unknown"
    if rev.get("diff_sha256"):
        return f"{rev['commit']}+diff.{rev['diff_sha256'][:12]}"
    return rev["commit"]


def experiment_name() -> str | None:
    """The DVC experiment this process runs under (`dvc exp run` sets DVC_EXP_NAME), else None."""
    return os.environ.get("DVC_EXP_NAME") or None
