"""The HTTP face of the evaluation jobs: a Starlette app over a :class:`~genlab.eval.job_store.JobStore`.

::

    POST /jobs/fid       {"model": "vae-3", "n": 500, "extractor": "lenet"}   -> 202, the job (queued)
    POST /jobs/anomaly   {"model": "vae-3", "normal_class": 3}                -> 202, the job
    GET  /jobs?limit=N&after=CURSOR  -> {"jobs": [...], "next": CURSOR or null}: newest first, without results
    GET  /jobs/{id}                  -> the job: state, progress (fraction, images/s, ETA), result or error
    POST /jobs/{id}/cancel           -> the job (cancelled, or cancel_requested while it finishes its batch)
    GET  /models                     -> the names a job may use

A page of ``GET /jobs`` holds ``limit`` jobs (1 to 500, default 100); ``next`` is the cursor of the
following page (created time and id of the page's last job, so jobs submitted meanwhile shift nothing).

Every refusal is ``{"error", "field"}``: 400 for a bad job or query (unknown fields and query
parameters included: a typo is never ignored), 401 without the API key when one is set
(:class:`RequireKey`, which the service puts in front of all it answers), 404 for an unknown job
or route, 405 for a wrong method, 413 for a body over ``MAX_SUBMISSION_BYTES``, 429 when the queue
is full. Nothing in a job is trusted as a path: a model is a name directly under the models root,
a dataset a registry name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from genlab.eval.extractors import EXTRACTOR_CHOICES
from genlab.eval.fid import BOOTSTRAP_ROUNDS, METRICS, OF_CHOICES
from genlab.eval.job_store import MAX_PAGE, JobStore, QueueFull, UnknownJob, parse_cursor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from genlab.bearer import HEALTH_PATHS, REFUSAL, headers_authorized
from genlab.data import DATASETS, SPLITS
from genlab.run_dir import is_run_dir
from genlab.thresholds import DEFAULT_PERCENTILE

if TYPE_CHECKING:
    from starlette.exceptions import HTTPException

MODELS_ENV = "GENLAB_EVAL_MODELS"
MAX_FID_N = 50_000
MAX_SUBMISSION_BYTES = 64 << 10  # a job's parameters: a few short fields
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def models_root() -> Path:
    return Path(os.environ.get(MODELS_ENV, "runs")).resolve()


def available_models(root: Path | None = None) -> dict[str, dict[str, str]]:
    """Entries directly under the models root that can be evaluated: {name: {kind}}."""
    root = root or models_root()
    found: dict[str, dict[str, str]] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not NAME.fullmatch(entry.name) or ".." in entry.name or entry.is_symlink():
            continue
        if (entry / "manifest.json").is_file():
            found[entry.name] = {"kind": "onnx"}
        elif is_run_dir(entry):
            found[entry.name] = {"kind": "checkpoint"}
    return found


def model_path(name: str) -> Path:
    """A job's model name -> its directory under the root; anything else is refused."""
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError("must be a simple model name (letters, digits, '.', '_', '-'; no path separators or '..')")
    models = available_models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(models) or 'none'} (GET /models)")
    return models_root() / name


def _known_model(name: str) -> str:
    model_path(name)
    return name


ModelName = Annotated[
    str, Field(min_length=1, max_length=128, description="a name from GET /models"), AfterValidator(_known_model)
]
DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]  # the registry; never a folder path
Split = Literal[SPLITS]  # type: ignore[valid-type]


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AnomalyJob(_Job):
    """AUROC / AUPRC and TPR / FPR at the calibrated threshold per score (one-class or ``ood`` protocol)."""

    model: ModelName
    dataset: DatasetName | None = None
    normal_class: Annotated[int | None, Field(ge=0, le=10_000)] = None
    ood: DatasetName | None = None
    split: Split = "test"
    percentile: Annotated[float, Field(ge=0.0, le=100.0)] = DEFAULT_PERCENTILE


class FidJob(_Job):
    """FID / KID / precision-recall against a registered dataset split (``per_class``: a conditional model's
    numbers for each class too)."""

    model: ModelName
    reference: DatasetName | None = None
    split: Split = "test"
    n: Annotated[int, Field(ge=2, le=MAX_FID_N)] = 1000
    metrics: Annotated[list[Literal[METRICS]], Field(min_length=1, max_length=3)] = ["fid", "kid"]  # type: ignore[valid-type]  # noqa: B006
    of: Literal[OF_CHOICES] = "samples"  # type: ignore[valid-type]
    extractor: Literal[EXTRACTOR_CHOICES] = "inception"  # type: ignore[valid-type]
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    per_class: bool = False
    bootstrap: Annotated[int, Field(ge=0, le=1000)] = BOOTSTRAP_ROUNDS


JOB_KINDS: dict[str, type[_Job]] = {"fid": FidJob, "anomaly": AnomalyJob}
JOBS_ROUTES = ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/models")  # beside POST /jobs/<kind>, for metrics


def _cursor(text: str) -> str:
    parse_cursor(text)
    return text


class JobsPage(_Job):
    """The query of ``GET /jobs``."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100
    after: Annotated[str, Field(max_length=128), AfterValidator(_cursor)] | None = None


def _error(status: int, message: str, field: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def validation_error(err: ValidationError) -> Any:
    errors = err.errors()
    where = [".".join(map(str, e["loc"])) or "body" for e in errors]
    field = str(errors[0]["loc"][0]) if errors[0]["loc"] else "body"  # the request field, e.g. metrics for metrics.1
    return _error(400, "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors)), field)


async def _no_route(request: Any, exc: HTTPException) -> Any:
    """Starlette's routing misses (404, 405) as refusals."""
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}", "method")
    return _error(exc.status_code, f"no route {request.url.path}; the routes: /jobs, /jobs/ID, /models", "path")


async def _body(request: Any) -> bytes | None:
    """The request body, or None once it passes MAX_SUBMISSION_BYTES (read no further)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SUBMISSION_BYTES:
            return None
    return body


def jobs_app(store: JobStore) -> Any:
    """The Starlette app of the jobs routes over ``store``; the key is checked in front of it (:class:`RequireKey`)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def submit(request: Any) -> Any:
        body = await _body(request)
        if body is None:
            return _error(413, f"a job submission is at most {MAX_SUBMISSION_BYTES:,} bytes", "body")
        try:
            sent = json.loads(body or b"{}")
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested past the parser's depth
            return _error(400, f"request body is not JSON ({str(err)[:120]})", "body")
        kind = request.path_params["kind"]
        if kind not in JOB_KINDS:
            return _error(404, f"no job kind {kind!r}; POST /jobs/{' or /jobs/'.join(JOB_KINDS)}", "path")
        try:
            job = JOB_KINDS[kind].model_validate(sent)
            record = store.submit(kind, job.model_dump())
        except ValidationError as err:
            return validation_error(err)
        except QueueFull as err:
            return _error(429, str(err), "body", {"retry-after": "10"})
        return JSONResponse(record, status_code=202)

    async def one(request: Any) -> Any:
        try:
            return JSONResponse(store.get(request.path_params["job_id"]))
        except UnknownJob as err:
            return _error(404, str(err), "id")

    async def cancel(request: Any) -> Any:
        try:
            return JSONResponse(store.cancel(request.path_params["job_id"]))
        except UnknownJob as err:
            return _error(404, str(err), "id")

    async def every(request: Any) -> Any:
        try:
            page = JobsPage.model_validate(dict(request.query_params))
        except ValidationError as err:
            return validation_error(err)
        jobs, following = store.list(page.limit, page.after)
        return JSONResponse({"jobs": jobs, "next": following})

    async def models(request: Any) -> Any:
        return JSONResponse({"root": str(models_root()), "models": available_models()})

    kinds = "{kind:str}"
    routes = [
        Route(f"/jobs/{kinds}", submit, methods=["POST"]),
        Route("/jobs", every, methods=["GET"]),
        Route("/jobs/{job_id:str}", one, methods=["GET"]),
        Route("/jobs/{job_id:str}/cancel", cancel, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _no_route})


class RequireKey:
    """ASGI middleware: 401 unless the request carries the bearer key (health probes excepted)."""

    def __init__(self, app: Any, api_key: str):
        self.app, self.api_key = app, api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        open_path = scope["type"] != "http" or scope.get("path") in HEALTH_PATHS
        if not open_path and not headers_authorized(scope.get("headers", ()), self.api_key):
            response = _error(401, REFUSAL, "Authorization", {"www-authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)
