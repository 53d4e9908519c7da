"""Faults and misuse: each case ends in one clear line, never in a silent wrong result."""

import os
import stat

import pytest

from flyp.io import atomic_path, write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_of_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "metrics.json", "{}\n")
        with atomic_path(tmp_path / "table.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("metrics.json", "table.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
