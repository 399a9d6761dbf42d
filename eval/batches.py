"""Shared plumbing of the evaluations: open a model once, feed it inputs in batches (the one batching loop)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from genlab.errors import GenlabError

T = TypeVar("T")


def ensure_source(model: Any, device: str = "auto") -> Any:
    """A checkpoint / run dir / export dir path -> ModelSource; a ModelSource passes through."""
    if isinstance(model, (str, os.PathLike)):
        from genlab.eval.model_source import open_model

        return open_model(model, device=device)
    return model


def normal_class_of(source: Any) -> int | None:
    """The class a model was trained on alone (one-class setting), or None."""
    value = getattr(source, "normal_class", None)
    if value is None:
        value = (getattr(source, "info", None) or {}).get("normal_class")
    return None if value is None else int(value)


def in_batches(fn: Callable[[Any], T], inputs: Any, batch_size: int, desc: str | None = None) -> list[T]:
    """Apply ``fn`` to consecutive slices of ``inputs``; the list of outputs. ``desc`` shows a progress bar."""
    from tqdm import tqdm

    if int(batch_size) < 1:
        raise GenlabError(f"batch size must be >= 1, got {batch_size}")
    starts = range(0, len(inputs), int(batch_size))
    bar = tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=desc is None)
    return [fn(inputs[i : i + int(batch_size)]) for i in bar]
