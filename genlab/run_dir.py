"""The run directory's file names, in one torch-free place.

``genlab train --out RUN_DIR`` writes ``RUN_DIR/last.pt`` (the resume point) and ``RUN_DIR/best.pt``
(the epoch whose samples measured best); every stage that takes "a checkpoint or a run directory"
resolves it with :func:`checkpoint_file` (export prefers ``best.pt``).
"""

from __future__ import annotations

import os
from pathlib import Path

LAST_CHECKPOINT = "last.pt"  # the resume point, written every epoch
BEST_CHECKPOINT = "best.pt"  # the epoch with the best sample quality so far (same format)


def checkpoint_file(path: str | os.PathLike, prefer_best: bool = False) -> Path:
    """A checkpoint file, or a run directory -> the checkpoint it holds: ``RUN_DIR/last.pt``, or with
    ``prefer_best`` ``RUN_DIR/best.pt`` where the run wrote one."""
    path = Path(path)
    if not path.is_dir():
        return path
    return path / BEST_CHECKPOINT if prefer_best and (path / BEST_CHECKPOINT).is_file() else path / LAST_CHECKPOINT


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / LAST_CHECKPOINT).is_file()
