"""Files that appear whole or not at all, and their digests. Torch-free.

Every artifact genlab writes (checkpoints, sample grids, metrics, export directories) goes
through :func:`atomic_write` or :func:`publish_directory`: the content is written to a temp
name beside the target, flushed to disk (``fsync`` of the file, then of the directory that
holds it), and renamed into place. A crash or ``SIGKILL`` at any moment leaves either the old
content or the complete new content at the target, never half a file; at worst a hidden temp
file (``.NAME.*.tmp``) stays behind, which :func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)  # read once (setting it is the only way to read it) and put back at once
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would have given the file: mkstemp makes it private (0600)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see either the old or the complete new content."""
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temp files an interrupted :func:`atomic_write` of ``path`` left behind; returns them.

    Call it only where nothing else may be writing ``path`` at the same time (a run directory
    is written by one training process).
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def publish_directory(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Flush every file in the finished directory ``tmp`` to disk, then rename it to ``out`` (which must not exist)."""
    tmp, out = Path(tmp), Path(out)
    for file in tmp.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fsync_directory(tmp)
    os.replace(tmp, out)
    fsync_directory(out.parent)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
