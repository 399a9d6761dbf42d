"""ONNX Runtime inside the process that answers HTTP: loading, warm-up and request merging.

Every worker process of the service opens its own sessions (:func:`load_model`) and runs them
in-process: a request never crosses to another process. A :class:`Merger` per graph concatenates
the inputs of the requests waiting while the previous call runs into one ONNX Runtime call, and
splits the result. It pays wherever one call on many images costs less than as many calls on
one: on a GPU, and on a CPU for the anomaly-score graph of a model with a fitted prior (its
mixture distances batch well; benchmarks/serve_load.py, part 2). A lone call on a small input
runs on the event loop, so a single client pays no hop to a thread. With ``GENLAB_BATCHING=off``
the graphs are called directly: a call on up to ``INLINE_ROWS`` images on the event loop (it
takes less than a hop to a thread), a larger one in the worker's :class:`WorkPool`, so that no
call holds the event loop for long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from genlab.export.reader import ExportedModel, read_export, resolve
from genlab.service.settings import Settings
from genlab.service.work import WorkPool

from genlab.metrics import Metrics

log = logging.getLogger("genlab.service")
INLINE_ROWS = 16  # unmerged graph calls on at most this many rows run on the event loop, larger ones in the pool
Observe = Callable[[int, float, float], None]  # a graph call's rows, queue time and compute time (seconds)


def load_model(directory: Path, settings: Settings) -> ExportedModel:
    """The export's graphs in ONNX Runtime sessions, each checked against its sha256 as it is loaded."""
    model = read_export(directory, verify=False)  # start_sessions verifies the bytes it loads
    # no spin-waiting: idle ONNX Runtime threads would take CPU from the request handling
    model.start_sessions(threads=settings.ort_threads, spinning=False)
    warm_up(model)
    model.latent_prior, model.calibration_curves  # noqa: B018  (prepared now, not by the first request)
    return model


def warm_up(model: ExportedModel) -> None:
    """Run every graph once, so that the first requests do not pay for ONNX Runtime's first-run setup (a conditional
    model's graphs with class 0; its score graph also infers a class, as a request without labels makes it do)."""
    labels = np.zeros(2, np.int64) if model.conditional else None
    images = model.decode(np.zeros((2, model.latent_dim), np.float32), labels)
    model.scores(images)
    if model.has_encoder:
        model.encode(images, labels)


class Merger:
    """Merges concurrent calls of one graph into one call along the batch axis.

    A call that finds the merger idle starts a run on the next turn of the event loop, together with
    whatever arrived in the same turn, in the work pool so the loop keeps accepting requests;
    calls that arrive while it runs wait and then run together as the next batch (up to
    ``max_batch`` images). There is no timer: an idle server adds no latency, a busy one forms
    batches as large as the time a call takes allows. A lone small call (at most ``INLINE_ROWS`` rows) after a
    lone one runs on the event loop itself, as an unmerged call would: with no concurrency there is nothing to merge,
    and the hop to the pool is most of what merging costs a single client. ``fn`` maps arrays [B, ...] (the graph's
    inputs, e.g. images and their class labels) to a dict of arrays [B, ...] and must be a pure
    function of its rows. Each input is concatenated with the same input of the other calls, and
    only calls with the same number of inputs are merged.
    """

    def __init__(
        self,
        fn: Callable[..., dict[str, np.ndarray]],
        max_batch: int,
        pool: WorkPool,
        observe: Observe | None = None,
    ):
        self.fn = fn
        self.max_batch = max_batch
        self.pool = pool
        self.observe = observe  # (rows, seconds the oldest call waited, seconds the call took) of every graph call
        self.pending: list[_Call] = []
        self.running = False
        self.alone = True  # the last batch was a single call

    async def __call__(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        call = _Call(inputs, asyncio.get_running_loop().create_future(), time.perf_counter())
        self.pending.append(call)
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        outputs: dict[str, np.ndarray] = await call.future
        return outputs

    def _next_batch(self) -> list[_Call]:
        """The oldest pending calls that fit in ``max_batch`` rows (at least one), with as many inputs as the first."""
        batch = [self.pending.pop(0)]
        size = batch[0].rows
        while (
            self.pending and self.pending[0].arity == batch[0].arity and size + self.pending[0].rows <= self.max_batch
        ):
            batch.append(self.pending.pop(0))
            size += batch[-1].rows
        return batch

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch = self._next_batch()
                # input k of the merged call: input k of every call, one after the other
                inputs = (
                    [np.concatenate(same) for same in zip(*(c.inputs for c in batch))]
                    if len(batch) > 1
                    else batch[0].inputs
                )
                inline = self.alone and len(batch) == 1 and batch[0].rows <= INLINE_ROWS
                self.alone = len(batch) == 1
                started = time.perf_counter()
                try:
                    outputs = self.fn(*inputs) if inline else await self.pool.run(self.fn, *inputs)
                except Exception as err:  # every waiting request gets the error, none hangs
                    for call in batch:
                        if not call.future.done():
                            call.future.set_exception(err)
                    continue
                if self.observe is not None:
                    rows = sum(call.rows for call in batch)
                    self.observe(rows, started - batch[0].arrived, time.perf_counter() - started)
                start = 0
                for call in batch:
                    end = start + call.rows
                    if not call.future.done():
                        call.future.set_result({k: v[start:end] for k, v in outputs.items()})
                    start = end
        finally:
            self.running = False


class _Call(NamedTuple):
    """One waiting call of a :class:`Merger`: its graph inputs (each [rows, ...]) and the future its caller awaits."""

    inputs: tuple[np.ndarray, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    arrived: float  # time.perf_counter() when the call came

    @property
    def rows(self) -> int:
        return len(self.inputs[0])

    @property
    def arity(self) -> int:
        return len(self.inputs)


class Runner:
    """One model's graphs for the endpoints: ``await runner.decode(z, labels)``, ``.encode(images, labels)``,
    ``.scores(images, labels, maps)``; ``labels`` (int64 [B]) only for a conditional model, which needs them to decode
    and encode. Scoring without labels makes it infer each image's class: the runner passes -1 ("unknown") for those,
    so such calls merge with calls that give labels. Scoring with anomaly maps asks the score graph for one more
    output: those calls merge among themselves (``scores_maps``), so that a merged batch is one ONNX Runtime call."""

    def __init__(
        self, model: ExportedModel, batching: bool, max_batch: int, pool: WorkPool, metrics: Metrics | None = None
    ):
        self.model = model
        self.batching = batching
        self.pool = pool
        self.metrics = metrics
        graphs: dict[str, Callable[..., dict[str, np.ndarray]]] = {
            "decode": lambda *inputs: {"images": model.decode(*inputs)},
            "scores": model.scores,
        }
        if model.has_encoder:
            graphs["encode"] = lambda *inputs: dict(zip(("mu", "logvar"), model.encode(*inputs)))
            graphs["scores_maps"] = functools.partial(model.scores, maps=True)
        self._graphs = graphs
        self._mergers = (
            {name: Merger(fn, max_batch, pool, self._observer(name)) for name, fn in graphs.items()} if batching else {}
        )

    def _observer(self, graph: str) -> Observe | None:
        if self.metrics is None:
            return None
        return functools.partial(self.metrics.observe_inference, self.model.name, graph)

    async def _run(self, graph: str, array: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        inputs = (array,) if labels is None else (array, np.ascontiguousarray(labels, dtype=np.int64))
        if self.batching:
            return await self._mergers[graph](*inputs)
        started = time.perf_counter()
        if len(array) <= INLINE_ROWS:
            outputs = self._graphs[graph](*inputs)
        else:
            outputs = await self.pool.run(self._graphs[graph], *inputs)
        if self.metrics is not None:
            self.metrics.observe_inference(self.model.name, graph, len(array), 0.0, time.perf_counter() - started)
        return outputs

    async def decode(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        return (await self._run("decode", z, labels))["images"]

    async def encode(self, images: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = await self._run("encode", images, labels)
        return out["mu"], out["logvar"]

    async def scores(
        self, images: np.ndarray, labels: np.ndarray | None = None, maps: bool = False
    ) -> dict[str, np.ndarray]:
        """Score components; a conditional model's result also has ``label``, the class each image was scored under,
        and with ``maps`` (models with an encoder) every result has ``anomaly_map`` (float32 [B, C, H, W]) from the
        same call (:meth:`ExportedModel.scores`)."""
        if labels is None and self.model.conditional:
            labels = np.full(len(images), -1, np.int64)
        return await self._run("scores_maps" if maps else "scores", images, labels)


def open_runners(settings: Settings, pool: WorkPool, metrics: Metrics | None = None) -> dict[str, Runner]:
    """name -> Runner for every model in ``settings.models``, in order (the first is the default); a model tag is looked
    up in the BentoML model store, which inside a built bento is the bento's own. What each model runs on is logged at
    INFO, which BentoML's server logging passes only for loggers given a level: genlab's get INFO unless set."""
    if logging.getLogger("genlab").level == logging.NOTSET:
        logging.getLogger("genlab").setLevel(logging.INFO)
    runners: dict[str, Runner] = {}
    for reference in settings.models:
        model = load_model(resolve(reference), settings)
        if model.name in runners:
            raise RuntimeError(f"two models are named {model.name!r}; export one with another --bento name")
        batching = settings.batching == "on"
        runners[model.name] = Runner(model, batching, settings.max_batch_size, pool, metrics)
        log.info(
            "genlab: %s (%s) on %s, request merging %s",
            model.name,
            model.family,
            ", ".join(sorted(set(model.providers.values()))),
            "on" if batching else "off",
        )
    return runners


__all__ = ["INLINE_ROWS", "Merger", "Runner", "load_model", "open_runners", "warm_up"]
