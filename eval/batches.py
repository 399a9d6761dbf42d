"""Shared plumbing of the cheap evaluations: open a model once, feed it images in batches."""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import numpy as np

T = TypeVar("T")


def ensure_source(model: Any, device: str = "auto") -> Any:
    """A checkpoint / run dir / export dir path -> ModelSource; a ModelSource passes through."""
    if isinstance(model, (str, os.PathLike)):
        from eval.model_source import open_model

        return open_model(model, device=device)
    return model


def normal_class_of(source: Any) -> int | None:
    """The class a model was trained on alone (one-class setting), or None."""
    value = getattr(source, "normal_class", None)
    if value is None:
        value = (getattr(source, "info", None) or {}).get("normal_class")
    return None if value is None else int(value)


def in_batches(fn: Callable[[Any], T], images: Any, batch_size: int, desc: str) -> list[T]:
    """Apply ``fn`` to consecutive slices of ``images`` with a progress bar; the list of outputs."""
    from tqdm import tqdm

    if batch_size < 1:
        from genlab.errors import GenlabError

        raise GenlabError(f"batch size must be >= 1, got {batch_size}")
    starts = range(0, len(images), batch_size)
    return [fn(images[i : i + batch_size]) for i in tqdm(starts, desc=desc, leave=False, dynamic_ncols=True)]


def scores_of(source: Any, images: Any, batch_size: int) -> dict[str, np.ndarray]:
    """uint8 images -> {component: float64 [N]} through the model's (or export's) score graph."""
    parts = in_batches(source.scores, images, batch_size, "scoring")
    names = parts[0].keys() if parts else ()
    return {name: np.concatenate([np.asarray(p[name], np.float64) for p in parts]) for name in names}
