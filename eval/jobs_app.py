"""The HTTP face of the evaluation jobs: an application (FastAPI, on :mod:`genlab.web`) over a
:class:`~genlab.eval.job_store.JobStore`.

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
(:class:`genlab.web.RequireKey`, which the service puts in front of all it answers), 404 for an unknown job
or route, 405 for a wrong method, 413 for a body over ``MAX_SUBMISSION_BYTES``, 429 when the queue
is full. Nothing in a job is trusted as a path: a model is a name directly under the models root,
a dataset a registry name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from genlab.eval.extractors import EXTRACTOR_CHOICES
from genlab.eval.fid import BOOTSTRAP_ROUNDS, METRICS, OF_CHOICES
from genlab.eval.job_store import MAX_PAGE, JobStore, QueueFull, UnknownJob, parse_cursor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from genlab.data import DATASETS, SPLITS
from genlab.run_dir import is_run_dir
from genlab.thresholds import DEFAULT_PERCENTILE
from genlab.web import EXCEPTION_HANDLERS, BodyLimit, RequestError, read_json, validated

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


def jobs_app(store: JobStore) -> FastAPI:
    """The application of the jobs routes over ``store``: genlab's error handlers and body reading
    (:mod:`genlab.web`), a body limit of ``MAX_SUBMISSION_BYTES``; the key is checked in front of it
    (:class:`RequireKey`)."""
    app = FastAPI(
        title="genlab evaluation jobs",
        openapi_url="/docs.json",
        docs_url=None,
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_SUBMISSION_BYTES)

    @app.post("/jobs/{kind}", status_code=202, responses=ERRORS)
    async def submit(kind: str, request: Request) -> JSONResponse:
        """Queue a job of ``kind`` (fid, anomaly); the answer is the job, queued."""
        if kind not in JOB_KINDS:
            raise RequestError("path", f"no job kind {kind[:100]!r}; POST /jobs/{' or /jobs/'.join(JOB_KINDS)}", 404)
        job = await read_json(request, JOB_KINDS[kind], MAX_SUBMISSION_BYTES)
        try:
            return JSONResponse(store.submit(kind, job.model_dump()), status_code=202)
        except QueueFull as err:
            raise RequestError("body", str(err), 429, {"retry-after": "10"}) from None

    @app.get("/jobs/{job_id}", responses=ERRORS)
    async def one(job_id: str) -> JSONResponse:
        """The job: its state, progress (fraction, images/s, ETA), result or error."""
        return JSONResponse(_known(store.get, job_id))

    @app.post("/jobs/{job_id}/cancel", responses=ERRORS)
    async def cancel(job_id: str) -> JSONResponse:
        """Cancel a job: at once while it waits, at its next progress report while it runs."""
        return JSONResponse(_known(store.cancel, job_id))

    @app.get("/jobs", responses=ERRORS)
    async def every(request: Request) -> JSONResponse:
        """A page of jobs, newest first, without their results; ``next``: the cursor of the following page."""
        page = validated(JobsPage, dict(request.query_params))
        jobs, following = store.list(page.limit, page.after)
        return JSONResponse({"jobs": jobs, "next": following})

    @app.get("/models", responses=ERRORS)
    async def models() -> JSONResponse:
        """The names a job may use, found under the models root."""
        return JSONResponse({"root": str(models_root()), "models": available_models()})

    return app


def _known(action: Callable[[str], dict[str, Any]], job_id: str) -> dict[str, Any]:
    try:
        return action(job_id)
    except UnknownJob as err:
        raise RequestError("id", str(err), 404) from None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        400: "a bad job or query (named in `field`)",
        401: "no API key, or a wrong one",
        404: "no such job or job kind",
        413: f"a submission over {MAX_SUBMISSION_BYTES:,} bytes",
        429: "the queue is full",
    }.items()
}
