"""Evaluation jobs over HTTP: FID / KID and anomaly AUROC as BentoML tasks.

Separate from the serving service (this one needs torch). Another system submits a job, gets a
task id, polls its status and fetches the JSON result::

    POST /anomaly/submit  {"model": "vae-3", "normal_class": 3}  -> {"task_id": ..., "status": ...}
    GET  /anomaly/status?task_id=...  -> {"status": "in_progress" | "completed" | "failed"}
    GET  /anomaly/get?task_id=...     -> the result (as ``genlab eval anomaly --json``)
    POST /fid/submit      {"model": "vae-3", "reference": "mnist-5k", "n": 500, "extractor": "lenet"}
                          (a conditional model: "per_class": true adds each class's numbers)
    GET  /models                      -> what can be evaluated

Nothing in a request is trusted as a path: the service is started with a fixed models root
(``$GENLAB_EVAL_MODELS``, default ``./runs``) and a request names a model by a simple name that
must be an entry directly under that root (a run directory with a checkpoint or an export
directory with a manifest); datasets come from genlab's registry only (no ``folder:``).
A bad request is answered 400 at submit time with ``{"error", "field"}``, as the serving API does. Serve with
``genlab eval serve-jobs --port 3001`` or ``bentoml serve genlab.eval.jobs_service:EvalJobs``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from genlab.eval.extractors import EXTRACTOR_CHOICES
from genlab.eval.fid import METRICS, OF_CHOICES
from pydantic import AfterValidator, Field, ValidationError

from genlab.data import DATASETS, SPLITS
from genlab.errors import GenlabError
from genlab.run_dir import is_run_dir
from genlab.thresholds import DEFAULT_PERCENTILE

MODELS_ENV = "GENLAB_EVAL_MODELS"
MAX_FID_N = 50_000
MAX_SUBMISSION_BYTES = 64 << 10  # a job's parameters: a few short fields
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def models_root() -> Path:
    return Path(os.environ.get(MODELS_ENV, "runs")).resolve()


def available_models(root: Path | None = None) -> dict[str, dict[str, str]]:
    """Entries directly under the models root that can be evaluated: {name: {kind, family?}}."""
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
    """A request's model name -> its directory under the root; anything else is refused."""
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
Metric = Literal[METRICS]  # type: ignore[valid-type]
Of = Literal[OF_CHOICES]  # type: ignore[valid-type]
ExtractorName = Literal[EXTRACTOR_CHOICES]  # type: ignore[valid-type]


def _data_dir() -> str:
    return os.environ.get("GENLAB_DATA_DIR", "data")


def _run(job: Any) -> dict[str, Any]:
    """Run an evaluation; a user-fixable problem becomes a 400 result, not a 500."""
    try:
        return job()
    except GenlabError as err:
        raise bentoml.exceptions.InvalidArgument(str(err)) from None


class ValidateSubmissions:
    """ASGI middleware: validate a task's input when it is submitted, so a bad job gets its 400 at once.

    (BentoML validates a task's input only when the task runs in the background; the submitter
    would see a 'failure' status much later.)
    """

    def __init__(self, app: Any, service: Any = None) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/submit"):
            return await self.app(scope, receive, send)
        name = path.strip("/").rsplit("/", 1)[0]
        api = EvalJobs.apis.get(name)
        if api is None:
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if len(body) > MAX_SUBMISSION_BYTES:
                return await _answer(
                    send, 413, {"error": f"a job submission is at most {MAX_SUBMISSION_BYTES:,} bytes", "field": "body"}
                )
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        error = _validation_error(api.input_spec, body)
        if error is not None:
            return await _answer(send, 400, error)

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _answer(send: Any, status: int, body: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _validation_error(spec: Any, body: bytes) -> dict[str, str] | None:
    """None for a valid submission, else ``{"error": message, "field": the first field at fault}``."""
    try:
        sent = json.loads(body or b"{}")
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested past the parser's depth
        return {"error": f"request body is not JSON ({str(err)[:120]})", "field": "body"}
    try:
        spec.model_validate(sent)
    except ValidationError as err:
        errors = err.errors()
        where = [".".join(map(str, e["loc"])) or "body" for e in errors]
        field = (
            str(errors[0]["loc"][0]) if errors[0]["loc"] else "body"
        )  # the request field, e.g. metrics for metrics.1
        return {"error": "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors)), "field": field}
    return None


def _catalog_app() -> Any:
    """GET /models: the names a job may use (a plain GET route beside the service's POST routes)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request: Any) -> Any:
        return JSONResponse({"root": str(models_root()), "models": available_models()})

    return Starlette(routes=[Route("/models", models, methods=["GET"])])


@bentoml.asgi_app(_catalog_app(), path="/")
@bentoml.service(name="genlab-eval-jobs", workers=1, traffic={"timeout": 3600})
class EvalJobs:
    """FID / KID and anomaly-detection jobs over models found under the models root."""

    @bentoml.task(route="/anomaly")
    def anomaly(
        self,
        model: ModelName,
        dataset: DatasetName | None = None,
        normal_class: Annotated[int | None, Field(ge=0, le=10_000)] = None,
        ood: DatasetName | None = None,
        split: Split = "test",
        percentile: Annotated[float, Field(ge=0.0, le=100.0)] = DEFAULT_PERCENTILE,
    ) -> dict[str, Any]:
        """AUROC / AUPRC and TPR / FPR at the calibrated threshold per score (one-class or --ood protocol)."""
        from genlab.eval.anomaly import evaluate_anomaly

        return _run(
            lambda: evaluate_anomaly(
                str(model_path(model)),
                dataset=dataset,
                normal_class=normal_class,
                ood=ood,
                split=split,
                data_dir=_data_dir(),
                percentile=percentile,
            )
        )

    @bentoml.task(route="/fid")
    def fid(
        self,
        model: ModelName,
        reference: DatasetName | None = None,
        split: Split = "test",
        n: Annotated[int, Field(ge=2, le=MAX_FID_N)] = 1000,
        metrics: Annotated[list[Metric], Field(min_length=1, max_length=3)] = ["fid", "kid"],  # noqa: B006
        of: Of = "samples",
        extractor: ExtractorName = "inception",
        seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
        per_class: bool = False,
    ) -> dict[str, Any]:
        """FID / KID / precision-recall of samples or reconstructions against a registered dataset split (``per_class``:
        a conditional model's numbers for each class too)."""
        from genlab.eval.fid import compute_fid

        return _run(
            lambda: compute_fid(
                str(model_path(model)),
                ref=reference,
                split=split,
                n=n,
                metrics=tuple(dict.fromkeys(metrics)),
                of=of,
                seed=seed,
                extractor=extractor,
                data_dir=_data_dir(),
                progress=False,
                per_class=per_class,
            )
        )


EvalJobs.add_asgi_middleware(ValidateSubmissions)
