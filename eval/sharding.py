"""Evaluation split over the processes ``torchrun`` starts (gloo on CPU, nccl on GPU).

The process group is training's (:func:`genlab.training.distributed.init_distributed`): one
process is a world of one and every call here is then a no-op. Work is split by item index:
rank r of K takes the contiguous slice ``[r * n // K, (r + 1) * n // K)`` of n items, so the items
(sample latents, reference images, bootstrap rounds) are the same whatever K is, and
:meth:`Shards.gather` puts the slices back in index order on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Shards:
    env: Any  # genlab.training.distributed.DistEnv

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def device(self) -> str:
        return str(self.env.device)

    def slice(self, n: int) -> slice:
        """This rank's share of n items, by index."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def gather(self, part: np.ndarray) -> np.ndarray:
        """Every rank's ``part`` (its :meth:`slice` of the items), concatenated in index order, on every rank."""
        from genlab.training.distributed import gather_objects

        parts = [p for p in gather_objects(self.env, part) if len(p)]
        return np.concatenate(parts) if parts else part

    def gather_list(self, part: list[Any]) -> list[Any]:
        from genlab.training.distributed import gather_objects

        return [item for p in gather_objects(self.env, part) for item in p]

    def main_first(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0, then on the others (what it caches, e.g. trained extractor weights, is made once)."""
        from genlab.training.distributed import barrier

        value = make() if self.is_main else None
        barrier(self.env)
        return value if self.is_main else make()

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a decision one rank makes for all, e.g. whether a cache is there)."""
        from genlab.training.distributed import gather_objects

        return gather_objects(self.env, value)[0]


def single(device: str = "cpu") -> Shards:
    """A world of one on ``device``, without a process group."""
    import torch
    from genlab.training.distributed import DistEnv

    return Shards(DistEnv(0, 1, torch.device(device)))


@contextmanager
def sharded(device: str = "auto") -> Iterator[Shards]:
    """Join torchrun's process group for the block (a world of one without torchrun); leave it afterwards."""
    from genlab.training.distributed import init_distributed, shutdown

    env = init_distributed(device)
    try:
        yield Shards(env)
    finally:
        shutdown(env)
