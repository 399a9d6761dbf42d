"""genlab.files: atomic writes leave ordinary, whole files behind."""

import os
import stat

from genlab.files import atomic_write_bytes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_atomic_write_gets_the_mode_open_would_give(tmp_path):
    atomic_write_bytes(tmp_path / "samples.png", b"png")
    assert (tmp_path / "samples.png").read_bytes() == b"png"
    mode = stat.S_IMODE((tmp_path / "samples.png").stat().st_mode)
    assert mode == 0o666 & ~_umask() and mode & stat.S_IRGRP  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # no temp file left


def test_an_atomic_write_replaces_the_old_content_whole(tmp_path):
    atomic_write_bytes(tmp_path / "last.pt", b"old")
    atomic_write_bytes(tmp_path / "last.pt", b"new")
    assert (tmp_path / "last.pt").read_bytes() == b"new"
