"""ONNX Runtime inside the process that answers HTTP: loading, warm-up and request merging.

Every worker process of the service opens its own sessions (:func:`load_model`) and runs them
in-process: a request never crosses to another process. Where merging concurrent requests pays
(a GPU, where one call on 32 images costs about what one call on a single image does), a
:class:`Merger` per graph concatenates the inputs of the requests waiting while the previous
call runs into one ONNX Runtime call, and splits the result. On a CPU a call on 64 images costs
~28x one on a single image, so merging gains little and its bookkeeping costs throughput:
there the graphs are called directly, on the event loop (a single-image call takes ~0.2 ms, less
than a hop to a thread). ``GENLAB_BATCHING=auto`` (default) picks by the execution provider.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from export.reader import ExportedModel, read_export, resolve
from service.settings import SETTINGS

log = logging.getLogger("genlab.service")


def resolve_reference(index: int) -> Path:
    """Position ``index`` in GENLAB_MODELS -> its export directory (a tag is looked up in the model store,
    which inside a built bento is the bento's own)."""
    return resolve(SETTINGS.models[index])


def load_model(directory: Path) -> ExportedModel:
    """The export's graphs in ONNX Runtime sessions; every file's sha256 is checked unless `genlab serve` just did."""
    model = read_export(directory, verify=not SETTINGS.already_verified(directory))
    # no spin-waiting: idle ONNX Runtime threads would take CPU from the request handling
    model.start_sessions(threads=SETTINGS.ort_threads, spinning=False)
    warm_up(model)
    return model


def warm_up(model: ExportedModel) -> None:
    """Run every graph once, so that the first requests do not pay for ONNX Runtime's first-run setup."""
    images = model.decode(np.zeros((2, model.latent_dim), np.float32))
    model.scores(images)
    if model.has_encoder:
        model.encode(images)


def uses_gpu(model: ExportedModel) -> bool:
    return any(provider != "CPUExecutionProvider" for provider in model.providers.values())


class Merger:
    """Merges concurrent calls of one graph into one call along the batch axis.

    A call that finds the merger idle starts a run on the next turn of the event loop, together with
    whatever arrived in the same turn, in a worker thread so the loop keeps accepting requests;
    calls that arrive while it runs wait and then run together as the next batch (up to
    ``max_batch`` images). There is no timer: an idle server adds no latency, a busy one forms
    batches as large as the time a call takes allows. ``fn`` maps an array [B, ...] to a dict of
    arrays [B, ...] and must be a pure function of its rows.
    """

    def __init__(self, fn: Callable[[np.ndarray], dict[str, np.ndarray]], max_batch: int):
        self.fn = fn
        self.max_batch = max_batch
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.running = False

    async def __call__(self, array: np.ndarray) -> dict[str, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((array, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, size = [], 0
                while self.pending and (not batch or size + len(self.pending[0][0]) <= self.max_batch):
                    batch.append(self.pending.pop(0))
                    size += len(batch[-1][0])
                inputs = np.concatenate([a for a, _ in batch]) if len(batch) > 1 else batch[0][0]
                try:
                    outputs = await asyncio.to_thread(self.fn, inputs)
                except Exception as err:  # every waiting request gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                start = 0
                for array, future in batch:
                    end = start + len(array)
                    if not future.done():
                        future.set_result({k: v[start:end] for k, v in outputs.items()})
                    start = end
        finally:
            self.running = False


class Runner:
    """One model's graphs for the endpoints: ``await runner.decode(z)``, ``.encode(images)``, ``.scores(images)``."""

    def __init__(self, model: ExportedModel, batching: bool, max_batch: int):
        self.model = model
        self.batching = batching
        graphs: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {
            "decode": lambda z: {"images": model.decode(z)},
            "scores": model.scores,
        }
        if model.has_encoder:
            graphs["encode"] = lambda images: dict(zip(("mu", "logvar"), model.encode(images)))
        self._graphs = graphs
        self._mergers = {name: Merger(fn, max_batch) for name, fn in graphs.items()} if batching else {}

    async def _run(self, graph: str, array: np.ndarray) -> dict[str, np.ndarray]:
        if self.batching:
            return await self._mergers[graph](array)
        return self._graphs[graph](array)

    async def decode(self, z: np.ndarray) -> np.ndarray:
        return (await self._run("decode", z))["images"]

    async def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = await self._run("encode", images)
        return out["mu"], out["logvar"]

    async def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self._run("scores", images)


def open_runners() -> dict[str, Runner]:
    """name -> Runner for every model in GENLAB_MODELS, in order (the first is the default)."""
    runners: dict[str, Runner] = {}
    for i in range(len(SETTINGS.models)):
        model = load_model(resolve_reference(i))
        if model.name in runners:
            raise RuntimeError(f"two models are named {model.name!r}; export one with another --bento name")
        batching = SETTINGS.batching == "on" or (SETTINGS.batching == "auto" and uses_gpu(model))
        runners[model.name] = Runner(model, batching, SETTINGS.max_batch_size)
        log.info("genlab: %s (%s) on %s, request merging %s", model.name, model.family,
                 ", ".join(sorted(set(model.providers.values()))), "on" if batching else "off")
    return runners


__all__ = ["Merger", "Runner", "load_model", "open_runners", "resolve_reference", "uses_gpu", "warm_up"]
