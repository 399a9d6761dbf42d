"""The genlab HTTP service: one application genlab owns (FastAPI), run by BentoML.

    bentoml serve genlab.service.service:Genlab          (or: genlab serve --model NAME|EXPORT_DIR ...)

Routes (:func:`build_app`):
    POST /generate        n, seed, z, temperature, label, format, model -> PNG grid | base64 PNGs | array | .npy
    POST /interpolate     seeds | images | array, steps, method, temperature, label, format, model -> as /generate
    POST /reconstruct     images (files) or array, label, format, model -> reconstructions, latent means, errors
    POST /anomaly-score   images (files) or array, percentile | threshold, label, maps, maps_format, maps_size, model
                          -> scores (and anomaly maps, at the model's size or each image's own: service.maps)
    POST /batch/decode    z (.npy float32 [N, latent]), labels (.npy), model -> .npy uint8 images [N, C, H, W]
    POST /batch/score     images (.npy uint8 [N, C, H, W]), labels (.npy), model -> .npy float32 scores [N, K]
    GET|POST /models      the served models, their classes, manifests and execution providers
    /v2/...               the Open Inference Protocol (:mod:`service.oip`)
    GET /                 the browser page (:mod:`service.page`); /docs Swagger UI; /docs.json the OpenAPI document

BentoML runs the workers, the probes (``/livez``, ``/readyz``) and the bento; :func:`build_service` mounts the
application on a BentoML service whose worker holds the ONNX Runtime sessions (:class:`Served`), with genlab's
metrics, the API key and the body limit in front of everything the process answers. Conditional models draw,
reconstruct and score each image under a class ``label`` (:func:`service.inputs.labels_from_request`). Nothing here
imports torch or training code.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import os
import secrets
from collections.abc import Sequence
from typing import Any, TypeVar

import bentoml
import numpy as np
from fastapi import APIRouter, FastAPI, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from genlab.export.reader import ANOMALY_MAP, ExportedModel, sample_latents
from genlab.service.inputs import (
    Images,
    array_to_images,
    check_image_source,
    images_from_npy,
    images_from_uploads,
    labels_from_npy,
    labels_from_request,
    latents_from_npy,
    latents_from_request,
)
from genlab.service.maps import MapAnswer, check_array_map_values, maps_to_answers
from genlab.service.oip import OPEN_PATHS as PROTOCOL_OPEN_PATHS
from genlab.service.oip import ROUTE_TEMPLATES as PROTOCOL_ROUTES
from genlab.service.oip import SERVER_METADATA, protocol_app
from genlab.service.page import PAGE_DIR, PAGE_PREFIX, SECURITY_HEADERS, PageFiles
from genlab.service.runtime import Runner, open_runners
from genlab.service.schemas import (
    ERRORS,
    AnomalyScores,
    Batch,
    Generate,
    ImageScore,
    Interpolate,
    ModelInfo,
    Reconstruct,
    Reconstruction,
    Request,
    Score,
    drawn_responses,
    npy_responses,
    request_body,
)
from genlab.service.settings import SERVING_ENVIRONMENT, Settings, load_settings
from genlab.service.work import WorkPool
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Match
from starlette.staticfiles import StaticFiles

from genlab import __version__
from genlab.bearer import HEALTH_PATHS
from genlab.families import FAMILIES
from genlab.imageio import encode_png, tile
from genlab.latents import balanced_labels
from genlab.latents import interpolate as interpolate_latents
from genlab.measures import recon_error
from genlab.metrics import METRICS_PATH, Metrics, MetricsMiddleware, record_model, server_metrics_dir
from genlab.thresholds import DEFAULT_PERCENTILE, normalized, percentiles_of, quantile
from genlab.web import (
    EXCEPTION_HANDLERS,
    FORM_TYPES,
    BodyLimit,
    RequestError,
    RequireKey,
    media_type,
    read_form,
    read_json,
)

log = logging.getLogger("genlab.service")
R = TypeVar("R", bound=Request)
Uploads = dict[str, list[UploadFile]]
PATH_ROW = 16  # /interpolate's PNG: the path in rows of at most this many images
NPY = "application/octet-stream"
LABELS_HEADER = "X-Genlab-Labels"  # the class index of every image, comma-separated (conditional models)
IMAGES_HELP = "image files (PNG, JPEG, ...; any size or mode: converted to the model's channels and size)"
LABELS_NPY_HELP = "conditional models: at most one .npy file of int64 class indices [N], one per row"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CATCH_ALL = "/{path:path}"  # every path no other route takes: a 405 or a 404 in genlab's error shape
SWAGGER_ASSETS = "/static_content"  # Swagger UI's files, as the bentoml package ships them


class Served:
    """What a worker serves: the ONNX Runtime sessions of the models (in request mergers) and the work pool."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.work = WorkPool(settings.work_threads)
        self.runners: dict[str, Runner] = open_runners(settings, self.work, metrics)
        self.default = next(iter(self.runners))
        self.json_values = max_json_values([r.model for r in self.runners.values()], settings.max_images)
        log.info("genlab %s serving %s (default %s)", __version__, ", ".join(self.runners), self.default)

    def runner(self, name: str | None, encoder: bool = False) -> Runner:
        """The runner of the model ``name`` (None: the default); ``encoder``: refuse a model without one."""
        name = self.default if name is None else name
        if name not in self.runners:
            raise RequestError("model", f"unknown model {name!r}; this server has: {', '.join(self.runners)}", 404)
        record_model(name)
        runner = self.runners[name]
        if encoder and not runner.model.has_encoder:
            with_encoder = " or ".join(f.name for f in FAMILIES.values() if f.has_encoder)
            family = runner.model.family
            message = f"{name} is a {family} model and has no encoder; this needs a {with_encoder} model"
            raise RequestError("model", message, 422)
        return runner

    async def read(self, request: HttpRequest, model: type[R], files: Sequence[str] = ()) -> tuple[R, Uploads]:
        """The request's body as ``model``: JSON, or a form with file parts ``files`` (the uploads by field)."""
        kind = media_type(request)
        if kind in FORM_TYPES:
            return await read_form(request, model, files, self.settings.max_images + 32)
        if kind not in ("", "application/json"):
            raise RequestError("body", f"Content-Type {kind[:60]!r}: send application/json or a form", 415)
        return await read_json(request, model, self.json_values, files), {name: [] for name in files}

    async def images(self, files: Sequence[UploadFile], array: Any, model: ExportedModel) -> Images:
        """A request's images (uploads, decoded in the work pool, or a JSON array) -> uint8 [N, C, H, W] and each
        one's size as sent."""
        check_image_source(files, array)
        if files:
            limits = self.settings.upload_limits
            return await self.work.run_stoppable(images_from_uploads, files, model.image_shape, limits)
        return Images.at_model_size(array_to_images(array, "array", model.image_shape, self.settings.max_images))


def served() -> Served:
    """This worker's :class:`Served` (the BentoML service instance holds it)."""
    try:
        instance = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        raise RequestError("server", "the server is starting: its models are not loaded yet", 503) from None
    state: Served = instance.served
    return state


# -- answers ------------------------------------------------------------------------------------------------------
def _png_base64(images: np.ndarray) -> list[str]:
    return [base64.b64encode(encode_png(image.transpose(1, 2, 0))).decode() for image in images]


def _npy(array: np.ndarray, headers: dict[str, str]) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY, headers=headers)


def _labels_header(labels: np.ndarray | None) -> dict[str, str]:
    return {} if labels is None else {LABELS_HEADER: ",".join(map(str, labels.tolist()))}


def _label_fields(model: ExportedModel, labels: np.ndarray | None) -> dict[str, Any]:
    """The label fields of a conditional model's answer (none for other models)."""
    if labels is None:
        return {}
    return {"labels": labels.tolist(), "label_names": [model.class_names[k] for k in labels]}


def _label_source(requested: np.ndarray | None) -> str:
    """Whether a conditional model's classes were the request's or the ones that explain the images best."""
    return "request" if requested is not None else "inferred"


def _json(answer: BaseModel) -> JSONResponse:
    """A response model as JSON, without the fields that do not apply (those left unset)."""
    return JSONResponse(answer.model_dump(mode="json", exclude_unset=True))


def _decoded(
    model: ExportedModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    format: str,
    fields: dict[str, Any],
    headers: dict[str, str],
    per_row: int | None = None,
) -> Response:
    """Decoded images as ``format``: ``png`` (one image as itself, several as a grid of ``per_row`` columns), ``npy``
    with ``headers``; ``png_list`` / ``array`` as JSON with ``fields``, the shape and the labels."""
    headers = {"X-Genlab-Model": model.name, **headers, **_labels_header(labels)}
    if format == "png":
        png = encode_png(images[0].transpose(1, 2, 0) if len(images) == 1 else tile(images, per_row))
        return Response(png, media_type="image/png", headers=headers)
    if format == "npy":
        return _npy(images, headers)
    body: dict[str, Any] = {"model": model.name, **fields, "shape": list(images.shape)}
    body["images"] = _png_base64(images) if format == "png_list" else images.tolist()
    return JSONResponse({**body, **_label_fields(model, labels)}, headers=headers)


def _classes(model: ExportedModel) -> list[str] | None:
    """The class names a request's labels choose from; None for a model that takes no labels."""
    return model.class_names if model.conditional else None


def _at_most(count: int, field: str, limit: int) -> None:
    if count > limit:
        raise RequestError(field, f"{count} images; the limit is {limit}", 413)


def _one_file(files: list[UploadFile], field: str) -> UploadFile | None:
    """The one file part ``field``, or None when absent."""
    if len(files) > 1:
        raise RequestError(field, f"{len(files)} files; send at most one")
    return files[0] if files else None


def _the_file(files: list[UploadFile], field: str, what: str) -> UploadFile:
    """The one file part ``field``, which the route needs: ``what`` says what it holds."""
    found = _one_file(files, field)
    if found is None:
        raise RequestError(field, f"send {what} as a file part {field!r}")
    return found


# -- the application ----------------------------------------------------------------------------------------------
def build_app(settings: Settings) -> FastAPI:
    """genlab's application for ``settings``: the routes (:data:`router`), the page, Swagger UI, the Open Inference
    Protocol, one exception-handler map, and a 404 or 405 in genlab's shape for anything else."""
    app = FastAPI(
        title="genlab",
        version=__version__,
        description="Generate, reconstruct and anomaly-score images with exported VAE / GAN / VAE-GAN models.",
        openapi_url="/docs.json",
        docs_url=None,
        redoc_url=None,
        exception_handlers=EXCEPTION_HANDLERS,
        # FastAPI's own OpenTelemetry instrumentation: off (genlab.metrics counts; BentoML's tracing traces)
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # with a key, the document names the bearer scheme on every route (the key itself is checked in front)
        dependencies=[Security(HTTPBearer(auto_error=False, scheme_name="bearer"))] if settings.api_key else None,
    )
    app.include_router(router)
    app.add_api_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2", protocol_server, methods=["GET"], include_in_schema=False)
    app.mount(PAGE_PREFIX, PageFiles(), name="page")
    app.mount(SWAGGER_ASSETS, StaticFiles(packages=[("bentoml", "_internal/server/static_content")]), name="swagger")
    app.mount("/v2", protocol_app(settings), name="open-inference-protocol")
    app.add_api_route(CATCH_ALL, elsewhere, methods=[*METHODS], include_in_schema=False)
    return app


async def page() -> Response:
    return FileResponse(PAGE_DIR / "index.html", headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS})


async def swagger() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/docs.json",
        title="genlab API",
        swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-light-32x32.png",
    )


async def protocol_server() -> JSONResponse:
    return JSONResponse(SERVER_METADATA)


async def elsewhere(request: HttpRequest) -> Response:
    """Any other path: a method its route does not take (405), or no route at all (404)."""
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    for route in routes:
        if route.matches(request.scope)[0] == Match.PARTIAL:
            allowed = ", ".join(sorted(route.methods or ()))
            raise RequestError("method", f"{route.path} does not take {request.method}; use {allowed}", 405)
    paths = ", ".join(sorted({r.path for r in routes if r.include_in_schema}))
    message = f"no route {request.url.path[:200]!r}; the API's routes: {paths} (OpenAPI document: /docs.json)"
    raise RequestError("path", message, 404)


router = APIRouter()  # the API's routes


@router.post(
    "/generate",
    responses=drawn_responses(("X-Genlab-Model", "X-Genlab-Seed", "X-Genlab-Labels")),
    openapi_extra=request_body(Generate, {}),
)
async def generate(request: HttpRequest) -> Response:
    """Sample images from the prior (or decode the given latents `z`, which override n and temperature). The seed
    used is returned (JSON `seed`, header X-Genlab-Seed), so any sample can be drawn again. Conditional models
    draw under `label`, or under labels drawn from the seed, every class equally often."""
    state = served()
    body, _ = await state.read(request, Generate)
    runner = state.runner(body.model)
    m, max_images = runner.model, state.settings.max_images
    latents = None if body.z is None else latents_from_request(body.z, m.latent_dim, max_images)
    rows = body.n if latents is None else len(latents)
    _at_most(rows, "n", max_images)
    labels = labels_from_request(body.label, rows, _classes(m), m.name)
    draws_labels = m.conditional and labels is None
    seed = body.seed
    if latents is not None and not draws_labels:
        seed = None  # nothing is drawn
    elif seed is None:
        seed = secrets.randbelow(2**63)
    if draws_labels:
        labels = balanced_labels(rows, len(m.class_names), seed)
    if latents is None:
        latents = sample_latents(rows, m.latent_dim, seed, body.temperature, m.latent_prior, labels=labels)
    images = await runner.decode(latents, labels)
    seed_header = "" if seed is None else str(seed)
    return _decoded(m, images, labels, body.format, {"seed": seed}, {"X-Genlab-Seed": seed_header})


@router.post(
    "/interpolate",
    responses=drawn_responses(("X-Genlab-Model", "X-Genlab-Method", "X-Genlab-Seeds", "X-Genlab-Labels")),
    openapi_extra=request_body(Interpolate, {"images": "two image files, the path's ends"}),
)
async def interpolate(request: HttpRequest) -> Response:
    """Decode `steps` latents on the path between two ends, both included: the latents of two `seeds` (those
    /generate with n=1 draws), or the encoder means of two images (`images` uploads or an `array` of two).
    `method`: slerp (default) or linear. Conditional models decode the whole path under one `label`."""
    state = served()
    body, uploads = await state.read(request, Interpolate, ["images"])
    files = uploads["images"]
    if (body.seeds is None) == (not files and body.array is None):
        raise RequestError("seeds", "give two `seeds`, or two images (`images` or `array`), not both")
    runner = state.runner(body.model, encoder=body.seeds is None)
    m = runner.model
    _at_most(body.steps, "steps", state.settings.max_images)
    if isinstance(body.label, list):
        raise RequestError("label", "one class for the whole path, by name or index, not a list", 422)
    if m.conditional and body.label is None:
        raise RequestError("label", f"{m.name} is a conditional model: give the class of the path", 422)
    labels = labels_from_request(body.label, 2, _classes(m), m.name)
    if body.seeds is not None:
        first = None if labels is None else labels[:1]  # each end as /generate n=1 draws it for its seed
        ends = np.concatenate(
            [sample_latents(1, m.latent_dim, s, body.temperature, m.latent_prior, labels=first) for s in body.seeds]
        )
    else:
        x = (await state.images(files, body.array, m)).pixels
        if len(x) != 2:
            raise RequestError("images" if files else "array", f"{len(x)} images; the path runs between 2", 422)
        ends = np.ascontiguousarray((await runner.encode(x, labels))[0])
    path = interpolate_latents(ends[0], ends[1], body.steps, body.method)
    path_labels = None if labels is None else np.full(body.steps, labels[0], np.int64)
    decoded = await runner.decode(path, path_labels)
    fields: dict[str, Any] = {"method": body.method, "t": np.linspace(0.0, 1.0, body.steps).round(6).tolist()}
    headers = {"X-Genlab-Method": body.method, "X-Genlab-Seeds": ""}
    if body.seeds is not None:
        fields["seeds"] = list(body.seeds)
        headers["X-Genlab-Seeds"] = ",".join(map(str, body.seeds))
    return _decoded(m, decoded, path_labels, body.format, fields, headers, per_row=min(body.steps, PATH_ROW))


@router.post(
    "/reconstruct",
    response_model=Reconstruction,
    responses=ERRORS,
    openapi_extra=request_body(Reconstruct, {"images": IMAGES_HELP}),
)
async def reconstruct(request: HttpRequest) -> Response:
    """Reconstruct uploaded images (file parts `images`) or `array` (uint8 [N, C, H, W]) through the encoder mean
    and the decoder; exactly one of the two. Conditional models work under `label`, or the class that explains
    each image best (`label_source` says which)."""
    state = served()
    body, uploads = await state.read(request, Reconstruct, ["images"])
    runner = state.runner(body.model, encoder=True)
    m = runner.model
    x = (await state.images(uploads["images"], body.array, m)).pixels
    requested = labels_from_request(body.label, len(x), _classes(m), m.name)
    used = requested
    if m.conditional and requested is None:  # the class that explains each image best
        used = (await runner.scores(x))["label"]
    mu, _ = await runner.encode(x, used)
    recon = await runner.decode(np.ascontiguousarray(mu), used)
    labelled = _label_fields(m, used)
    if used is not None:
        labelled["label_source"] = _label_source(requested)
    answer = Reconstruction(
        model=m.name,
        images=_png_base64(recon) if body.format == "png_list" else recon.tolist(),
        mu=mu.tolist(),
        recon_error=recon_error(x, recon).tolist(),
        **labelled,
    )
    return _json(answer)


@router.post(
    "/anomaly-score",
    response_model=AnomalyScores,
    responses=ERRORS,
    openapi_extra=request_body(Score, {"images": IMAGES_HELP}),
)
async def anomaly_score(request: HttpRequest) -> Response:
    """Score images (files or `array`, exactly one): the raw score, the score normalised to [0, 1] with the
    threshold at 0.5, its percentile among held-out normal images, `is_anomaly`, and every component. The threshold
    is the calibrated `percentile` (default 99) or a raw `threshold`. `maps=true`: each image's anomaly map too,
    from the same graph call, at the model's size or (`maps_size=image`) laid over each upload as sent.
    Conditional models score under `label`, or the class that explains the image best."""
    state = served()
    body, uploads = await state.read(request, Score, ["images"])
    runner = state.runner(body.model)
    m = runner.model
    _check_scoring(m, body)
    sent = await state.images(uploads["images"], body.array, m)
    x = sent.pixels
    requested = labels_from_request(body.label, len(x), _classes(m), m.name)
    scores = await runner.scores(x, requested, body.maps)  # with maps: the maps too, from the same graph call
    used = scores.pop("label", None)
    maps = scores.pop(ANOMALY_MAP, None)
    values = {name: v.astype(np.float64) for name, v in scores.items()}
    curves = m.calibration_curves
    if body.threshold is not None:
        threshold_percentile, cut = None, float(body.threshold)
    elif curves is None:
        raise RequestError("threshold", f"{m.name} has no calibration (its training did not finish)", 422)
    else:
        threshold_percentile = DEFAULT_PERCENTILE if body.percentile is None else body.percentile
        cut = quantile(curves, "score", threshold_percentile)
    answered_maps = None if maps is None else await _maps(state, maps, sent, body)
    answer = AnomalyScores(
        model=m.name,
        score_name="score",
        meaning=m.score_descriptions.get("score", ""),
        threshold=cut,
        threshold_percentile=threshold_percentile,
        threshold_source="request" if body.threshold is not None else "calibration",
        results=_image_scores(m, values, cut, requested, used, answered_maps),
    )
    return _json(answer)


@router.post(
    "/batch/decode",
    responses=npy_responses(("X-Genlab-Model",)),
    openapi_extra=request_body(
        Batch, {"z": "a .npy file of float32 latents [N, latent]", "labels": LABELS_NPY_HELP}, json=False
    ),
)
async def batch_decode(request: HttpRequest) -> Response:
    """Decode latents sent as a .npy file (file part `z`) into a .npy file of uint8 images [N, C, H, W].
    Conditional models need `labels` (a .npy of class indices [N], one per latent)."""
    state = served()
    body, uploads = await state.read(request, Batch, ["z", "labels"])
    runner = state.runner(body.model)
    m, limit, max_images = runner.model, state.settings.max_upload_bytes, state.settings.max_images
    z = _the_file(uploads["z"], "z", "the latents (a .npy of float32 [N, latent])")
    latents = latents_from_npy(z, "z", m.latent_dim, max_images, limit)
    labels_file = _one_file(uploads["labels"], "labels")
    if m.conditional and labels_file is None:
        raise RequestError(
            "labels",
            f"{m.name} is a conditional model: send 'labels', a .npy of int64 class indices [{len(latents)}]",
            422,
        )
    labels = None
    if labels_file is not None:
        labels = labels_from_npy(labels_file, "labels", len(latents), _classes(m), m.name, limit)
    return _npy(await runner.decode(latents, labels), {"X-Genlab-Model": m.name})


@router.post(
    "/batch/score",
    responses=npy_responses(("X-Genlab-Model", "X-Genlab-Scores", "X-Genlab-Labels")),
    openapi_extra=request_body(
        Batch, {"images": "a .npy file of uint8 images [N, C, H, W]", "labels": LABELS_NPY_HELP}, json=False
    ),
)
async def batch_score(request: HttpRequest) -> Response:
    """Score images sent as a .npy file (file part `images`); answers a .npy of float32 [N, components], the
    columns named in the X-Genlab-Scores header (the first is `score`). Conditional models: `labels` (-1: infer
    the class)."""
    state = served()
    body, uploads = await state.read(request, Batch, ["images", "labels"])
    runner = state.runner(body.model)
    m, limit, max_images = runner.model, state.settings.max_upload_bytes, state.settings.max_images
    images = _the_file(uploads["images"], "images", "the images (a .npy of uint8 [N, C, H, W])")
    x = images_from_npy(images, "images", m.image_shape, max_images, limit)
    labels_file = _one_file(uploads["labels"], "labels")
    labels = None
    if labels_file is not None:
        labels = labels_from_npy(labels_file, "labels", len(x), _classes(m), m.name, limit, unknown_allowed=True)
    scores = await runner.scores(x, labels)
    table = np.stack([scores[name] for name in m.score_names], axis=1).astype(np.float32)
    headers = {"X-Genlab-Model": m.name, "X-Genlab-Scores": ",".join(m.score_names)}
    return _npy(table, {**headers, **_labels_header(scores.get("label"))})


@router.get("/models", responses=ERRORS, operation_id="models")
@router.post("/models", responses=ERRORS, operation_id="models_post")
async def list_models() -> list[ModelInfo]:
    """The models this server holds (the first is the default), their classes, manifests and providers."""
    state = served()
    rows = []
    for name, runner in state.runners.items():
        m = runner.model
        manifest = {k: v for k, v in m.manifest.items() if k != "calibration"}
        manifest["latent"] = {k: v for k, v in manifest["latent"].items() if k != "fitted_prior"}
        rows.append(
            ModelInfo(
                name=name,
                family=m.family,
                default=name == state.default,
                has_encoder=m.has_encoder,
                latent_dim=m.latent_dim,
                image_shape=list(m.image_shape),
                score_names=m.score_names,
                providers=m.providers,
                conditional=m.conditional,
                classes=_classes(m) or [],
                request_merging=runner.batching,
                max_images=state.settings.max_images,
                manifest=manifest,
            )
        )
    return rows


def _check_scoring(model: ExportedModel, body: Score) -> None:
    """Refuse the /anomaly-score requests ``model`` cannot answer."""
    if body.maps and not model.has_encoder:
        raise RequestError(
            "maps", f"{model.name} has no encoder; anomaly maps compare an image with its reconstruction", 422
        )
    if body.percentile is not None and body.threshold is not None:
        raise RequestError("threshold", "give either 'percentile' or a raw 'threshold', not both")
    if body.threshold is not None and not math.isfinite(body.threshold):
        raise RequestError("threshold", "must be a finite number", 422)


async def _maps(state: Served, maps: np.ndarray, sent: Images, body: Score) -> list[MapAnswer]:
    """The anomaly maps (float [N, C, s, s]) of the images ``sent`` as ``body`` asks for them: at the model's size, or
    laid over each image as sent (made in the work pool: an upload may be large)."""
    if body.maps_size == "model":
        return maps_to_answers(maps, Images.at_model_size(sent.pixels).sizes, body.maps_format)
    if body.maps_format == "array":
        check_array_map_values(maps.shape[1], sent.sizes)
    return await state.work.run(maps_to_answers, maps, sent.sizes, body.maps_format)


def _image_scores(
    model: ExportedModel,
    scores: dict[str, np.ndarray],
    cut: float,
    requested: np.ndarray | None,
    used: np.ndarray | None,
    maps: list[MapAnswer] | None,
) -> list[ImageScore]:
    """One result per image: its ``scores`` against the threshold ``cut`` and the model's calibration, the class it
    was scored under (``used``) and its anomaly map (as answered, or None)."""
    cal = model.calibration_curves
    pct: dict[str, np.ndarray | None] = dict.fromkeys(scores)
    if cal:
        pct.update(percentiles_of(cal, {name: v for name, v in scores.items() if name in cal.names}))
    norm = normalized(cal, "score", scores["score"], cut) if cal and "score" in cal.names else None
    source = _label_source(requested)
    results = []
    for i in range(len(scores["score"])):
        extra: dict[str, Any] = {}
        if used is not None:
            extra.update(label=int(used[i]), label_name=model.class_names[used[i]], label_source=source)
        if maps is not None:
            extra.update(anomaly_map=maps[i].anomaly_map, anomaly_map_size=list(maps[i].size))
        results.append(
            ImageScore(
                score=float(scores["score"][i]),
                normalized_score=_at(norm, i),
                percentile=_at(pct["score"], i),
                is_anomaly=bool(scores["score"][i] > cut),
                components={
                    name: {"value": float(v[i]), "percentile": _at(pct[name], i)} for name, v in scores.items()
                },
                **extra,
            )
        )
    return results


def _at(values: np.ndarray | None, i: int) -> float | None:
    return None if values is None else float(values[i])


def max_json_values(models: list[ExportedModel], max_images: int) -> int:
    """The most values a valid JSON request holds: a full batch of the largest images (or latents), and the rest."""
    per_image = max(max(math.prod(m.image_shape), int(m.latent_dim)) for m in models)
    return max_images * per_image + 4096


# -- the BentoML service ------------------------------------------------------------------------------------------
def build_service(settings: Settings) -> bentoml.Service[Any]:
    """The BentoML service serving ``settings``: genlab's application mounted at ``/``; its workers, request timeout
    and access log; a model reference for every BentoML model tag it serves (what ``bentoml build`` packs into the
    bento); genlab's metrics, the API key and the body limit in front of every route, BentoML's own included."""
    app = build_app(settings)
    routes = [r.path for r in router.routes if isinstance(r, APIRoute)]
    pages = ["/", "/docs", "/docs.json", f"{PAGE_PREFIX}/{{file}}", f"{SWAGGER_ASSETS}/{{file}}"]
    templates = [*routes, *pages, *HEALTH_PATHS, METRICS_PATH, *PROTOCOL_ROUTES]
    metrics = Metrics.for_server("genlab serve", templates)

    class Genlab:
        """A worker of the service: it holds the served models (:class:`Served`) that the routes use."""

        def __init__(self) -> None:
            self.served = Served(settings, metrics)

    for i, reference in enumerate(settings.store_tags):
        setattr(Genlab, f"model_{i}", bentoml.models.BentoModel(reference))  # packed into the bento by `bentoml build`
    service = bentoml.service(
        name="genlab",
        workers=settings.workers,
        traffic={"timeout": settings.request_timeout_s},
        logging={"access": {"enabled": settings.access_log}},
        # BentoML labels its traffic metrics with the raw request path: any client could add series without bound
        metrics={"enabled": False},
        tracing=tracing_settings(),
    )(Genlab)
    service.mount_asgi_app(app, path="/", name="genlab")
    service.add_asgi_middleware(MetricsMiddleware, metrics=metrics, expose=_key_check(settings.api_key))
    service.add_asgi_middleware(
        RequireKey,
        api_key=settings.api_key,
        open_paths=(*HEALTH_PATHS, *PROTOCOL_OPEN_PATHS, "/"),
        open_prefixes=(f"{PAGE_PREFIX}/",),
    )
    service.add_asgi_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return service


def tracing_settings() -> dict[str, Any]:
    """BentoML's tracing: with the OpenTelemetry SDK disabled (the serving default, ``OTEL_SDK_DISABLED``), every
    path excluded, so that its middleware hands each request on at once instead of describing it for a tracer that
    records nothing."""
    return {"excluded_urls": [".*"]} if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" else {}


def _key_check(api_key: str) -> Any:
    from genlab.bearer import headers_authorized

    return lambda scope: headers_authorized(scope.get("headers", ()), api_key)


@functools.cache
def environment_service() -> bentoml.Service[Any]:
    """The service for this process's environment (:func:`~service.settings.load_settings`), built once."""
    for variable, value in SERVING_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    server_metrics_dir()  # made by the first process of the server, before it starts its workers
    return build_service(load_settings(os.environ))


def __getattr__(name: str) -> Any:
    """``Genlab``: :func:`environment_service`, what ``bentoml serve`` and ``bentoml build`` load."""
    if name == "Genlab":
        return environment_service()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
