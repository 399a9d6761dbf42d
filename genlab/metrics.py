"""genlab's Prometheus metrics for its HTTP services, labelled only by what the server defines.

Every label value comes from a fixed set the server knows: the route *template* a request matched (a path no route
takes is ``unmatched``), the HTTP method (an unknown one is ``other``), the status code, and the name of a served
model (set by the code that runs the model, never read from the request). No client can add a series, so the
metrics' size is bounded by the routes, methods, statuses and models.

Series, in the spirit of Triton's ``nv_inference_*`` family:

- ``genlab_http_requests_total{route, method, model, status}``
- ``genlab_http_request_duration_seconds{route, model}`` (histogram)
- ``genlab_inference_queue_duration_seconds{model, graph}``: the longest wait in the request merger of the requests
  merged into one ONNX Runtime call (histogram)
- ``genlab_inference_batch_size{model, graph}``: inputs per ONNX Runtime call, merged requests together (histogram)
- ``genlab_inference_compute_duration_seconds{model, graph}``: one ONNX Runtime call (histogram)

A server with several worker processes keeps its values in files (prometheus_client's multiprocess mode) in a
folder of its own (:func:`server_metrics_dir`), so two servers on one machine or one ``BENTOML_HOME`` never share
or clear each other's.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

METRICS_DIR_ENV = "GENLAB_METRICS_DIR"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set for a server's workers: prometheus_client then writes files
METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# the served model a request used, set by the code that runs it (a mutable holder per request, so that work done in
# tasks the request starts reaches the same holder)
_request_model: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("genlab_model", default=None)


def record_model(name: str) -> None:
    """Label the current request with the served model ``name`` (a no-op outside a request)."""
    holder = _request_model.get()
    if holder is not None:
        holder["model"] = name


def server_metrics_dir() -> Path:
    """This server's metrics folder: the first process of a server that asks (BentoML's arbiter, which loads the
    service before it starts the workers, which inherit its environment) makes a new one and removes it at exit."""
    existing = os.environ.get(METRICS_DIR_ENV)
    if existing:
        return Path(existing)
    made = tempfile.mkdtemp(prefix="genlab-metrics-")
    os.environ[METRICS_DIR_ENV] = made
    atexit.register(shutil.rmtree, made, True)
    return Path(made)


class RouteTemplates:
    """Request paths -> the route template that answers them (``unmatched`` for any other path)."""

    def __init__(self, templates: Iterable[str]):
        self.exact: set[str] = set()
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for template in templates:
            if "{" not in template:
                self.exact.add(template)
                continue
            regex = re.sub(r"\\{[^}]*\\}", "[^/]+", re.escape(template))
            self.patterns.append((re.compile(f"{regex}$"), template))

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        for pattern, template in self.patterns:
            if pattern.match(path):
                return template
        return UNMATCHED


class Metrics:
    """One server process's metrics (see the module docstring). ``multiprocess``: the values live in the server's
    metrics folder, shared by its workers (:func:`for_server`); otherwise in this object's own registry."""

    def __init__(self, service: str, templates: Iterable[str], directory: Path | None = None):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.route = RouteTemplates(templates)
        self.directory = directory
        self.registry = CollectorRegistry()
        own = None if directory is not None else self.registry
        self.requests = Counter(
            "genlab_http_requests",
            f"HTTP requests answered by {service}, by route template, method, served model and status",
            ["route", "method", "model", "status"],
            registry=own,
        )
        self.duration = Histogram(
            "genlab_http_request_duration_seconds",
            "time from a request's arrival to its response's last byte",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.queue = Histogram(
            "genlab_inference_queue_duration_seconds",
            "the longest wait in the request merger of the requests merged into one ONNX Runtime call",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.batch = Histogram(
            "genlab_inference_batch_size",
            "inputs per ONNX Runtime call (the requests the merger merged into it together)",
            ["model", "graph"],
            buckets=BATCH_BUCKETS,
            registry=own,
        )
        self.compute = Histogram(
            "genlab_inference_compute_duration_seconds",
            "one ONNX Runtime call",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        if directory is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, path=str(directory))

    @classmethod
    def for_server(cls, service: str, templates: Iterable[str]) -> Metrics:
        """The metrics of a worker of a running server: in its server's own folder when the server runs several
        processes (BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers, to a folder under ``BENTOML_HOME`` that
        every server on that home shares and clears when it starts: genlab's values go to the server's own)."""
        if MULTIPROCESS_ENV not in os.environ:
            return cls(service, templates)
        directory = server_metrics_dir()
        os.environ[MULTIPROCESS_ENV] = str(directory)  # where prometheus_client opens this process's value files
        return cls(service, templates, directory)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def observe_inference(self, model: str, graph: str, rows: int, queued_s: float, compute_s: float) -> None:
        self.batch.labels(model, graph).observe(rows)
        self.queue.labels(model, graph).observe(queued_s)
        self.compute.labels(model, graph).observe(compute_s)


class MetricsMiddleware:
    """ASGI middleware that counts and times every HTTP request the app answers (401s and 404s included) under its
    route template, and answers ``GET /metrics`` when ``expose`` lets the request through (the API key)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, expose: Callable[[Scope], bool] = lambda scope: True):
        self.app, self.metrics, self.expose = app, metrics, expose

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        holder: dict[str, str] = {}
        token = _request_model.set(holder)
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            if scope.get("path") == METRICS_PATH and scope.get("method") in ("GET", "HEAD") and self.expose(scope):
                await _plain(sending, self.metrics.exposition(), scope.get("method") == "HEAD")
            else:
                await self.app(scope, receive, sending)
        finally:
            _request_model.reset(token)
            route = self.metrics.route(scope.get("path", ""))
            method = scope.get("method", "")
            model = holder.get("model", "")
            self.metrics.requests.labels(route, method if method in METHODS else "other", model, str(status[0])).inc()
            self.metrics.duration.labels(route, model).observe(time.perf_counter() - started)


async def _plain(send: Send, body: bytes, head: bool) -> None:
    headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
