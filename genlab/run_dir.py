"""The run directory's file names, in one torch-free place.

``genlab train --out RUN_DIR`` writes ``RUN_DIR/last.pt`` (the resume point); every stage that
takes "a checkpoint or a run directory" resolves it with :func:`checkpoint_file`.
"""

from __future__ import annotations

import os
from pathlib import Path

LAST_CHECKPOINT = "last.pt"


def checkpoint_file(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory -> the checkpoint it holds (``RUN_DIR/last.pt``)."""
    path = Path(path)
    return path / LAST_CHECKPOINT if path.is_dir() else path


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / LAST_CHECKPOINT).is_file()
