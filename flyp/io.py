"""Small file helpers: atomic writes and content hashes.

Every output is written to a temporary file beside its destination and renamed into place, so an
interrupted step never leaves a half-written file that a later step (or Snakemake) would trust. The
renamed file gets the mode any new file gets under the user's umask (not the temporary file's 0600),
so others on a shared machine can read the results the umask lets them read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback.

    One raised in a DataLoader worker reaches the main process as ``UserError(text)``, ``text``
    being the worker's whole traceback (torch's ``ExceptionWrapper.reraise``); the message is then
    its last line again, so the user sees the same line as without workers."""

    def __init__(self, message: str = ""):
        super().__init__(_worker_message(message))


class Preempted(Exception):
    """A training run stopped by a signal, its resume state written: the same command continues
    it (flyp.training.Stopping). Its message is empty on all ranks but rank 0."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum  # as a process killed by the signal: a failed job


def _worker_message(message: str) -> str:
    """The original message of a UserError re-raised from a DataLoader worker, else ``message``."""
    if not message.startswith(f"Caught {UserError.__name__} in DataLoader worker"):
        return message
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    _, found, original = message.rpartition(marker)
    return original.strip() if found else message


# Errors of writing a file that are the machine's state, not a bug: reported as one line.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def write_error(path: Path, e: OSError) -> UserError:
    return UserError(
        f"{path}: cannot write ({e.strerror or e}); check the folder's permissions and free space"
    )


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask (which can
    only be read by setting it, so it is set back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` if the block succeeds.

    A folder that cannot be written (read-only, no permission) or a disk that fills up while the
    block writes is a one-line UserError naming ``path``, and nothing is left behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())  # mkstemp made it 0600
        os.replace(tmp, path)
    except OSError as e:
        # only errors of writing this file (a full disk names none); one the block met reading
        # some other file keeps its own message
        if e.errno in WRITE_ERRNOS and e.filename in (None, str(tmp), str(path)):
            raise write_error(path, e) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
