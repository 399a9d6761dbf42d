"""A bounded pool of threads for the heavy part of a request, so that it never holds the event loop.

Decoding uploads (Pillow), resizing them and ONNX Runtime calls on many images release the GIL, so
in these threads they run beside the event loop, which keeps answering other requests and the
health probes. The pool has a fixed number of threads (``GENLAB_WORK_THREADS``); requests beyond
that wait in its queue, each within the request timeout. A request that times out (BentoML cancels
its handler) has its queued work dropped, and work that checks its ``stop`` event ends early.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class WorkPool:
    def __init__(self, threads: int):
        if threads < 1:
            raise ValueError(f"a work pool needs at least one thread, got {threads}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="genlab-work")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a pool thread."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    async def run_stoppable(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args, stop)`` in a pool thread; ``stop`` (a :class:`threading.Event`) is set if the request is
        cancelled meanwhile, for ``fn`` to check between steps."""
        stop = threading.Event()
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args, stop))
        except asyncio.CancelledError:
            stop.set()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
