"""The one batching loop of the evaluations: feed a model its inputs in slices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from genlab.errors import GenlabError

T = TypeVar("T")


def in_batches(fn: Callable[[Any], T], inputs: Any, batch_size: int, desc: str | None = None) -> list[T]:
    """Apply ``fn`` to consecutive slices of ``inputs``; the list of outputs. ``desc`` shows a progress bar."""
    from tqdm import tqdm

    if int(batch_size) < 1:
        raise GenlabError(f"batch size must be >= 1, got {batch_size}")
    starts = range(0, len(inputs), int(batch_size))
    bar = tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=desc is None)
    return [fn(inputs[i : i + int(batch_size)]) for i in bar]
