"""The project cache folder and the names of what lives in it.

Everything evaluation computes once and reuses (converted Inception weights, the cheap
extractor's weights, reference statistics) lives under ``$GENLAB_CACHE`` or
``~/.cache/genlab``, never inside site-packages. A cached file is named by every choice that
changes its content, so a stale file can never be picked up under other settings.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from genlab.files import file_sha256

_UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]+")


def cache_dir(sub: str = "") -> Path:
    """$GENLAB_CACHE (or ~/.cache/genlab)/sub, created on demand."""
    root = os.environ.get("GENLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genlab")
    path = Path(root) / sub if sub else Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe rendering of ``text``; long or unsafe text keeps a short hash suffix."""
    safe = _UNSAFE.sub("_", str(text)).strip("._") or "x"
    if safe != str(text) or len(safe) > limit:
        safe = f"{safe[:limit]}~{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"
    return safe


def cache_name(**choices: object) -> str:
    """key=value parts joined with '_', in the order given: one name per set of choices."""
    return "_".join(f"{key}={slug(str(value))}" for key, value in choices.items())


def file_digest(path: str | os.PathLike, length: int = 12) -> str:
    """Short sha256 of a file's bytes (identifies weights the user passes in)."""
    return file_sha256(path)[:length]
