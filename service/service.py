"""The genlab HTTP service: generate, reconstruct and anomaly-score over exported ONNX models.

    bentoml serve genlab.service.service:Genlab          (or: genlab serve --model NAME|EXPORT_DIR ...)

:func:`build_service` makes the BentoML service for some :class:`~service.settings.Settings`; ``Genlab``, what
``bentoml serve`` and ``bentoml build`` load, is the one for the settings in the environment
(:func:`environment_service`). Importing this module configures nothing.

Endpoints (all POST):
    /generate        n, seed, z, temperature, label, format, model -> PNG grid | base64 PNGs | array | .npy
    /reconstruct     images (files) or array, label, model         -> reconstructions, latent means, errors
    /anomaly-score   images (files) or array, label, model, percentile | threshold -> per-image scores
    /batch/decode    z (a .npy file, float32 [N, latent]), labels (.npy), model -> .npy uint8 images [N, C, H, W]
    /batch/score     images (a .npy file, uint8 [N, C, H, W]), labels (.npy), model
                     -> .npy float32 scores [N, components]
    /models          -> loaded models, their classes, manifests and the execution provider of each graph

Beside them, on the same port and behind the same edge: the browser page at ``/`` (:mod:`service.page`), BentoML's
Swagger UI at ``/docs`` and the Open Inference Protocol under ``/v2`` (:mod:`service.oip`), on the same runners.

A conditional model (``genlab train --conditional``) draws, reconstructs and scores each image under a
class: ``label`` names it (one for all images or one per image, by name or index; see
:func:`service.inputs.labels_from_request`). Without one, /generate draws balanced seeded labels and
the image endpoints use the class that explains each image best; every response says which classes
it used. Other models refuse ``label``.

Each worker process holds the ONNX Runtime sessions and runs them in-process
(:mod:`service.runtime`); genlab's edge (:mod:`service.edge`) refuses what BentoML would
mishandle before it is parsed. Nothing here imports torch or training code.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import os
import secrets
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import bentoml
import numpy as np
from annotated_types import Ge, Gt, Le
from genlab.export.reader import ANOMALY_MAP, ExportedModel, read_export, resolve, sample_latents
from genlab.service.edge import Edge
from genlab.service.forms import FormLimits
from genlab.service.inputs import (
    Labels,
    RequestError,
    array_to_images,
    check_image_source,
    images_from_npy,
    images_from_uploads,
    labels_from_npy,
    labels_from_request,
    latents_from_npy,
    latents_from_request,
    optional_file,
)
from genlab.service.oip import OPEN_PATHS as PROTOCOL_OPEN_PATHS
from genlab.service.oip import ROUTE_TEMPLATES as PROTOCOL_ROUTES
from genlab.service.oip import protocol_app
from genlab.service.openapi import fix_spec
from genlab.service.page import PAGE_PREFIX, PAGE_ROUTES, PageFiles
from genlab.service.runtime import Runner, open_runners
from genlab.service.settings import SERVING_ENVIRONMENT, Settings, load_settings
from genlab.service.work import WorkPool
from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictInt, ValidationError
from starlette.responses import JSONResponse, Response

from genlab import __version__
from genlab.bearer import HEALTH_PATHS, headers_authorized
from genlab.families import FAMILIES
from genlab.imageio import encode_png, tile
from genlab.latents import balanced_labels
from genlab.latents import interpolate as interpolate_latents
from genlab.measures import ANOMALY_MAP_MEANING, RECON_ERROR_MEANING, recon_error
from genlab.metrics import METRICS_PATH, Metrics, MetricsMiddleware, record_model, server_metrics_dir
from genlab.thresholds import DEFAULT_PERCENTILE, normalized, percentiles_of, quantile

log = logging.getLogger("genlab.service")
PATH_ROW = 16  # /interpolate's PNG: the path in rows of at most this many images
F = TypeVar("F", bound=Callable[..., Any])
NPY = "application/octet-stream"
LABELS_HEADER = "X-Genlab-Labels"  # the class index of every image, comma-separated (conditional models)
LABEL_HELP = (
    "conditional models: the class of every image, by name or index (see /models), or a list with one per image; "
    "other models refuse it"
)
# one optional file part, declared as a list: BentoML 1.4.39 cannot build an endpoint with an Optional[Path] argument
BATCH_LABELS_HELP = (
    "conditional models: at most one .npy file of int64 class indices [N], one per row; other models refuse it"
)
LabelSource = Literal["request", "inferred"] | None
LABEL_SOURCE_HELP = (
    "'request': the request's `label`; 'inferred': the class that explains the image best (lowest score); "
    "null for models that are not conditional"
)


def _named(value: object) -> object:
    """A model field sent as null is refused (leave the field out for the default model)."""
    if value is None:
        raise ValueError("give a model name from /models, or leave the field out for the default model")
    return value


# a served model's name; left out, the default model (the first of /models)
ModelName = Annotated[
    str | None, BeforeValidator(_named), Field(description="a model from /models; default: the first")
]


class ModelInfo(BaseModel):
    name: str
    family: str
    default: bool
    has_encoder: bool
    latent_dim: int
    image_shape: list[int]
    score_names: list[str]
    providers: dict[str, str]
    conditional: bool = Field(
        description="whether the model draws, reconstructs and scores images under a class `label`"
    )
    classes: list[str] = Field(
        description="the classes `label` takes, label k being classes[k]; empty unless conditional"
    )
    request_merging: bool = Field(description="whether concurrent requests are merged into one ONNX Runtime call")
    max_images: int = Field(description="the most images (or latents) one request may hold (GENLAB_MAX_IMAGES)")
    manifest: dict[str, Any]


class Reconstruction(BaseModel):
    """What /reconstruct answers; a field that does not apply to the model (the labels of a model that is not
    conditional) is left out of the response."""

    model: str
    images: list[str] | list[Any] = Field(
        description="the reconstructions: base64 PNGs (format=png_list) or uint8 [N, C, H, W] (format=array)"
    )
    mu: list[list[float]] = Field(description="posterior means, [N, latent]")
    recon_error: list[float] = Field(description=RECON_ERROR_MEANING)
    labels: list[int] | None = Field(
        None, description="conditional models: the class index each image was encoded and decoded under"
    )
    label_names: list[str] | None = Field(None, description="conditional models: the names of those classes")
    label_source: LabelSource = Field(None, description=LABEL_SOURCE_HELP)


class ImageScore(BaseModel):
    """One image's scores; fields that do not apply (the label of a model that is not conditional, a map that was
    not asked for) are left out of the response."""

    score: float = Field(description="the raw primary score; larger is more anomalous")
    normalized_score: float | None = Field(
        description="the score mapped to [0, 1] with the threshold at exactly 0.5 (anomalib's convention): "
        "(score - threshold) / (max - min of held-out normal scores) + 0.5, clipped; null without calibration"
    )
    percentile: float | None = Field(
        description="percentile of the score among held-out normal images (0-100); null without calibration"
    )
    is_anomaly: bool = Field(description="score > threshold (equivalently normalized_score > 0.5)")
    components: dict[str, dict[str, float | None]] = Field(description="name -> {value, percentile}")
    label: int | None = Field(None, description="conditional models: the class index the image was scored under")
    label_name: str | None = Field(None, description="conditional models: the name of that class")
    label_source: LabelSource = Field(None, description=LABEL_SOURCE_HELP)
    anomaly_map: str | list[Any] | None = Field(
        None,
        description="with maps=true: the anomaly map, as a base64 PNG of uint8 |image - reconstruction| "
        f"(maps_format=png) or as float [C, H, W], {ANOMALY_MAP_MEANING} (maps_format=array)",
    )


class AnomalyScores(BaseModel):
    model: str
    score_name: str
    meaning: str
    threshold: float
    threshold_percentile: float | None
    threshold_source: Literal["calibration", "request"]
    results: list[ImageScore]


class _NoTracebackForBadInput(logging.Filter):
    """BentoML logs every request that fails validation (or that it refuses with a 4xx) as an error with a full
    traceback; a client's bad input is not a server fault, so it gets one warning line (the response already names
    the field). Real errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client_fault = isinstance(error, ValidationError) or (
            isinstance(error, bentoml.exceptions.BentoMLException) and int(error.error_code) < 500
        )
        if client_fault:
            if isinstance(error, ValidationError):
                reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
            else:
                reason = str(error)
            where = record.getMessage().removeprefix("Exception on ")
            record.msg, record.args = f"refused {where}: {reason[:300]}", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


BAD_INPUT_LOG_FILTER = _NoTracebackForBadInput()  # one instance, so that adding it again changes nothing
BAD_INPUT_LOGGER = "bentoml._internal.server.http_app"


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _png_base64(images: np.ndarray) -> list[str]:
    return [base64.b64encode(encode_png(image.transpose(1, 2, 0))).decode() for image in images]


def _npy(array: np.ndarray, headers: dict[str, str]) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY, headers=headers)


def _classes(model: ExportedModel) -> list[str] | None:
    """The class names a request's labels choose from; None for a model that takes no labels."""
    return model.class_names if model.conditional else None


def _label_indices(labels: np.ndarray | None) -> list[int]:
    return [] if labels is None else labels.tolist()


def _label_names(model: ExportedModel, labels: np.ndarray | None) -> list[str]:
    return [] if labels is None else [model.class_names[k] for k in labels]


def _label_source(requested: np.ndarray | None, used: np.ndarray | None) -> str | None:
    return None if used is None else "request" if requested is not None else "inferred"


def _decoded(
    model: ExportedModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    format: str,
    fields: dict[str, Any],
    headers: dict[str, str],
    per_row: int | None = None,
) -> Response:
    """Decoded images in ``format``: ``png`` (one image as itself, several as a grid of ``per_row`` columns, square by
    default) and ``npy`` with ``headers`` (plus the model and the labels); ``png_list`` / ``array`` as JSON with
    ``fields``, the shape and the labels."""
    headers = {"X-Genlab-Model": model.name, **headers, **_labels_header(labels)}
    if format == "png":
        png = encode_png(images[0].transpose(1, 2, 0) if len(images) == 1 else tile(images, per_row))
        return Response(png, media_type="image/png", headers=headers)
    if format == "npy":
        return _npy(images, headers)
    body: dict[str, Any] = {"model": model.name, **fields, "shape": list(images.shape)}
    body["images"] = _png_base64(images) if format == "png_list" else images.tolist()
    if labels is not None:
        body["labels"], body["label_names"] = _label_indices(labels), _label_names(model, labels)
    return JSONResponse(body, headers=headers)


def _labels_header(labels: np.ndarray | None) -> dict[str, str]:
    return {} if labels is None else {LABELS_HEADER: ",".join(map(str, labels.tolist()))}


def _fresh_seed() -> int:
    return secrets.randbelow(2**63)


def served_models(settings: Settings) -> list[ExportedModel]:
    """The manifests of the models ``settings`` serves (no sessions)."""
    return [read_export(resolve(reference), verify=False) for reference in settings.models]


def model_names(settings: Settings) -> list[str]:
    return [model.name for model in served_models(settings)]


def max_json_values(models: list[ExportedModel], max_images: int) -> int:
    """The most values a valid JSON request can hold: a full batch (``max_images``) of the largest images (or latents),
    and room for the other fields."""
    per_image = max(max(math.prod(m.image_shape), int(m.latent_dim)) for m in models)
    return max_images * per_image + 4096


def endpoint(route: str) -> Callable[[F], F]:
    """Marks a :class:`GenlabService` method as the endpoint at ``route``; :func:`build_service` makes it a BentoML
    API."""

    def mark(method: F) -> F:
        method.route = route  # type: ignore[attr-defined]
        return method

    return mark


class GenlabService:
    """What every worker holds (the ONNX Runtime sessions of the served models, a work pool) and the endpoints; the
    BentoML service classes :func:`build_service` makes derive from it, each with its ``settings``."""

    settings: Settings
    metrics: Metrics

    def __init__(self) -> None:
        logging.getLogger(BAD_INPUT_LOGGER).addFilter(BAD_INPUT_LOG_FILTER)
        self.work = WorkPool(self.settings.work_threads)
        self.runners: dict[str, Runner] = open_runners(self.settings, self.work, self.metrics)
        self.default = next(iter(self.runners))
        log.info("genlab %s serving %s (default %s)", __version__, ", ".join(self.runners), self.default)

    def _runner(self, name: str | None) -> Runner:
        if name is None:
            name = self.default
        if name not in self.runners:
            raise RequestError("model", f"unknown model {name!r}; this server has: {', '.join(self.runners)}", 404)
        record_model(name)
        return self.runners[name]

    async def _images(self, files: list[Path], array: list[Any] | None, model: ExportedModel) -> np.ndarray:
        """A request's images (uploads, decoded in the work pool, or a JSON array) -> uint8 [N, C, H, W]."""
        check_image_source(files, array)
        if files:
            limits = self.settings.upload_limits
            return await self.work.run_stoppable(images_from_uploads, files, model.image_shape, limits)
        return array_to_images(array, "array", model.image_shape, self.settings.max_images)

    def _encoder_runner(self, name: str | None) -> Runner:
        runner = self._runner(name)
        if not runner.model.has_encoder:
            with_encoder = " or ".join(f.name for f in FAMILIES.values() if f.has_encoder)
            raise RequestError(
                "model",
                f"{runner.model.name} is a {runner.model.family} model and has no encoder; "
                f"this needs a {with_encoder} model",
                422,
            )
        return runner

    # -- endpoints ------------------------------------------------------------------------------
    @endpoint("/generate")
    async def generate(
        self,
        n: Annotated[StrictInt, Ge(1)] = 16,  # at most settings.max_images: see build_service
        seed: Annotated[StrictInt, Ge(0), Le(2**63 - 1)] | None = None,
        z: list[list[float]] | None = None,
        temperature: Annotated[float, Gt(0), Le(10)] = 1.0,
        label: Annotated[Labels, Field(description=LABEL_HELP)] = None,
        format: Literal["png", "png_list", "array", "npy"] = "png",
        model: ModelName = None,
    ) -> Any:  # a PNG, a .npy file or JSON, chosen by `format`
        """Sample images from the prior (or decode the given latents `z`, which override n and temperature).

        format: png = one PNG grid (image/png); png_list = JSON list of base64 PNGs; array = JSON uint8
        [n, C, H, W]; npy = the same array as a .npy file. The seed used is returned (JSON field or
        the X-Genlab-Seed header; empty when nothing was drawn), so any sample can be drawn again.

        Conditional models: `label` is the class of every image (a name or an index, see /models) or a list of
        one per image (as many as `z` has rows). Without it the labels are drawn, every class equally often, from
        the seed. The labels used are returned: `labels` and `label_names` in JSON, the X-Genlab-Labels header
        (comma-separated class indices) with png and npy. Other models refuse `label`.
        """
        try:
            runner = self._runner(model)
            m = runner.model
            latents = None if z is None else latents_from_request(z, m.latent_dim, self.settings.max_images)
            rows = n if latents is None else len(latents)
            labels = labels_from_request(label, rows, _classes(m), m.name)
            draws_labels = m.conditional and labels is None
            if latents is not None and not draws_labels:
                seed = None  # nothing is drawn
            elif seed is None:
                seed = _fresh_seed()
            if draws_labels:
                labels = balanced_labels(rows, len(m.class_names), seed)
            if latents is None:
                latents = sample_latents(n, m.latent_dim, seed, temperature, m.latent_prior, labels=labels)
        except RequestError as err:
            return _error(err)
        images = await runner.decode(latents, labels)
        seed_header = "" if seed is None else str(seed)
        return _decoded(m, images, labels, format, {"seed": seed}, {"X-Genlab-Seed": seed_header})

    @endpoint("/interpolate")
    async def interpolate(
        self,
        seeds: Annotated[list[Annotated[StrictInt, Ge(0), Le(2**63 - 1)]], Field(min_length=2, max_length=2)]
        | None = None,
        images: list[Path] = [],  # noqa: B006 (pydantic copies defaults)
        array: list[Any] | None = None,
        steps: Annotated[StrictInt, Ge(2)] = 8,  # at most settings.max_images: see build_service
        method: Literal["slerp", "linear"] = "slerp",
        temperature: Annotated[float, Gt(0), Le(10)] = 1.0,
        label: Annotated[Labels, Field(description=LABEL_HELP)] = None,
        format: Literal["png", "png_list", "array", "npy"] = "png",
        model: ModelName = None,
    ) -> Any:  # a PNG, a .npy file or JSON, chosen by `format`, as /generate
        """Decode `steps` latents on the path between two ends, both included: the latents of two `seeds` (those
        /generate with n=1 draws for each seed, at `temperature`), or the encoder means of two images (`images`
        uploads or an `array` of two, as for /reconstruct; models with an encoder). Exactly one of the two sources.
        `method`: slerp (default; the great circle, for Gaussian latents) or linear. Conditional models decode every
        step under one class, `label` (required: a class by name or index). `format` as for /generate; JSON holds
        `t` (0..1 per step) and `method`, and the seeds when the ends were drawn."""
        try:
            runner = self._runner(model)
            m = runner.model
            if (seeds is None) == (not images and array is None):
                raise RequestError("seeds", "give two `seeds`, or two images (`images` or `array`), not both")
            if isinstance(label, list):
                raise RequestError("label", "one class for the whole path, by name or index, not a list", 422)
            if m.conditional and label is None:
                raise RequestError("label", f"{m.name} is a conditional model: give the class of the path", 422)
            labels = labels_from_request(label, 2, _classes(m), m.name)
            if seeds is not None:
                first = None if labels is None else labels[:1]  # each end as /generate n=1 draws it for its seed
                ends = np.concatenate(
                    [sample_latents(1, m.latent_dim, s, temperature, m.latent_prior, labels=first) for s in seeds]
                )
            else:
                runner = self._encoder_runner(model)
                x = await self._images(images, array, m)
                if len(x) != 2:
                    raise RequestError(
                        "images" if images else "array", f"{len(x)} images; the path runs between exactly 2", 422
                    )
        except RequestError as err:
            return _error(err)
        if seeds is None:
            mu, _ = await runner.encode(x, labels)
            ends = np.ascontiguousarray(mu)
        path = interpolate_latents(ends[0], ends[1], steps, method)
        path_labels = None if labels is None else np.full(steps, labels[0], np.int64)
        decoded = await runner.decode(path, path_labels)
        extra: dict[str, Any] = {"method": method, "t": np.linspace(0.0, 1.0, steps).round(6).tolist()}
        headers: dict[str, str] = {"X-Genlab-Method": method}
        if seeds is not None:
            extra["seeds"] = list(seeds)
            headers["X-Genlab-Seeds"] = ",".join(map(str, seeds))
        return _decoded(m, decoded, path_labels, format, extra, headers, per_row=min(steps, PATH_ROW))

    @endpoint("/reconstruct")
    async def reconstruct(
        self,
        images: list[Path] = [],  # noqa: B006 (pydantic copies defaults)
        array: list[Any] | None = None,
        label: Annotated[Labels, Field(description=LABEL_HELP)] = None,
        format: Literal["png_list", "array"] = "png_list",
        model: ModelName = None,
    ) -> Reconstruction:
        """Reconstruct uploaded images (multipart file parts `images`, PNG/JPEG, any size or mode: converted to the
        model's channels and size) or `array` (JSON, uint8 [N, C, H, W] as nested lists) through encoder mean and
        decoder. Exactly one of the two: neither or both is a 400 naming `images`.

        Conditional models encode and decode each image under a class: `label` (one for all images or a list of one
        per image, by name or index; a multipart form field or JSON), or without it the class that explains the
        image best. The response's `labels`, `label_names` and `label_source` say which. Other models refuse
        `label`."""
        try:
            runner = self._encoder_runner(model)
            m = runner.model
            x = await self._images(images, array, m)
            requested = labels_from_request(label, len(x), _classes(m), m.name)
        except RequestError as err:
            return _error(err)  # type: ignore[return-value]
        used = requested
        if m.conditional and requested is None:  # the class that explains each image best
            used = (await runner.scores(x))["label"]
        mu, _ = await runner.encode(x, used)
        recon = await runner.decode(np.ascontiguousarray(mu), used)
        result = Reconstruction(
            model=m.name,
            images=_png_base64(recon) if format == "png_list" else recon.tolist(),
            mu=mu.tolist(),
            recon_error=recon_error(x, recon).tolist(),
            **_labels_used(m, requested, used),
        )
        return _json(result)  # type: ignore[return-value]

    @endpoint("/anomaly-score")
    async def anomaly_score(
        self,
        images: list[Path] = [],  # noqa: B006 (pydantic copies defaults)
        array: list[Any] | None = None,
        percentile: Annotated[float, Ge(0), Le(100)] | None = None,
        threshold: float | None = None,
        label: Annotated[Labels, Field(description=LABEL_HELP)] = None,
        maps: StrictBool = False,
        maps_format: Literal["png", "array"] = "png",
        model: ModelName = None,
    ) -> AnomalyScores:
        """Score images (files or `array`, exactly one of them, as for /reconstruct): the raw score, the score
        normalised to [0, 1] with the threshold at 0.5, its percentile among held-out normal images, `is_anomaly` =
        score above the threshold, and every component with its percentile. The threshold is the calibrated
        `percentile` (default 99) of the normal scores, or a raw `threshold`. With `maps=true` (models with an
        encoder), each image also gets a per-pixel anomaly map, |image - reconstruction|, as a PNG or an array.

        Conditional models score each image under a class: `label` (one for all images or a list of one per image,
        by name or index), or without it the class that explains the image best (lowest score). Each result's
        `label`, `label_name` and `label_source` say which. Other models refuse `label`."""
        try:
            runner = self._runner(model)
            m = runner.model
            _check_scoring(m, maps, percentile, threshold)
            x = await self._images(images, array, m)
            requested = labels_from_request(label, len(x), _classes(m), m.name)
        except RequestError as err:
            return _error(err)  # type: ignore[return-value]
        scores = await runner.scores(x, requested, maps)  # with maps: the anomaly maps too, from the same graph call
        used = scores.pop("label", None)
        diff = scores.pop(ANOMALY_MAP, None)
        scores = {name: v.astype(np.float64) for name, v in scores.items()}
        if threshold is None:
            threshold_percentile = DEFAULT_PERCENTILE if percentile is None else percentile
            curves = m.calibration_curves
            if curves is None:  # refused by _check_scoring already
                raise RuntimeError(f"{m.name} has no calibration")
            cut = quantile(curves, "score", threshold_percentile)
        else:
            threshold_percentile, cut = None, float(threshold)
        return _json(
            AnomalyScores(
                model=m.name,
                score_name="score",
                meaning=m.score_descriptions.get("score", ""),
                threshold=cut,
                threshold_percentile=threshold_percentile,
                threshold_source="request" if threshold is not None else "calibration",
                results=_image_scores(m, scores, cut, requested, used, diff, maps_format),
            )
        )  # type: ignore[return-value]

    @endpoint("/batch/decode")
    async def batch_decode(
        self,
        z: Path,
        labels: Annotated[list[Path], Field(description=BATCH_LABELS_HELP)] = [],  # noqa: B006 (see BATCH_LABELS_HELP)
        model: ModelName = None,
    ) -> Any:
        """Decode latents sent as a .npy file (multipart file part `z`, float32 [N, latent]) into a .npy file
        of uint8 images [N, C, H, W]: the binary path for machines (no JSON lists of numbers either way).

        Conditional models need `labels` (a file part, .npy of integer class indices [N], one per latent: the classes
        the latents were drawn for); without it the answer is a 422 naming `labels`, since a latent drawn from one
        class's prior decoded under another gives no sensible image. Other models refuse `labels`."""
        try:
            runner = self._runner(model)
            m = runner.model
            latents = latents_from_npy(z, "z", m.latent_dim, self.settings.max_images, self.settings.max_upload_bytes)
            labels_file = optional_file(labels, "labels")
            if m.conditional and labels_file is None:
                raise RequestError(
                    "labels",
                    f"{m.name} is a conditional model: send 'labels', a .npy of int64 class "
                    f"indices [{len(latents)}], one per latent (classes: see /models)",
                    422,
                )
            class_labels = (
                None
                if labels_file is None
                else labels_from_npy(
                    labels_file, "labels", len(latents), _classes(m), m.name, self.settings.max_upload_bytes
                )
            )
        except RequestError as err:
            return _error(err)
        return _npy(await runner.decode(latents, class_labels), {"X-Genlab-Model": m.name})

    @endpoint("/batch/score")
    async def batch_score(
        self,
        images: Path,
        labels: Annotated[list[Path], Field(description=BATCH_LABELS_HELP)] = [],  # noqa: B006 (see BATCH_LABELS_HELP)
        model: ModelName = None,
    ) -> Any:
        """Score images sent as a .npy file (multipart file part `images`, uint8 [N, C, H, W]); returns a .npy file
        of float32 [N, components], one column per score component in the order of the X-Genlab-Scores header
        (the first is the primary `score`). Thresholds and percentiles: see /anomaly-score and /models.

        Conditional models score each image under a class: `labels` (a file part, .npy of integer class indices [N];
        -1 for an image whose class is unknown), or without it, and where it says -1, the class that explains the
        image best. The X-Genlab-Labels header lists the class index each image was scored under, comma-separated.
        Other models refuse `labels`."""
        try:
            runner = self._runner(model)
            m = runner.model
            limit = self.settings.max_upload_bytes
            x = images_from_npy(images, "images", m.image_shape, self.settings.max_images, limit)
            labels_file = optional_file(labels, "labels")
            class_labels = (
                None
                if labels_file is None
                else labels_from_npy(labels_file, "labels", len(x), _classes(m), m.name, limit, unknown_allowed=True)
            )
        except RequestError as err:
            return _error(err)
        scores = await runner.scores(x, class_labels)
        names = m.score_names
        table = np.stack([scores[name] for name in names], axis=1).astype(np.float32)
        headers = {"X-Genlab-Model": m.name, "X-Genlab-Scores": ",".join(names), **_labels_header(scores.get("label"))}
        return _npy(table, headers)

    @endpoint("/models")
    async def list_models(self) -> list[ModelInfo]:
        """The models this server holds (the first is the default), their classes (what a conditional model's `label`
        takes), manifests and execution providers."""
        rows = []
        for name, runner in self.runners.items():
            m = runner.model
            manifest = {k: v for k, v in m.manifest.items() if k != "calibration"}
            manifest["latent"] = {k: v for k, v in manifest["latent"].items() if k != "fitted_prior"}  # its numbers
            rows.append(
                ModelInfo(
                    name=name,
                    family=m.family,
                    default=name == self.default,
                    has_encoder=m.has_encoder,
                    latent_dim=m.latent_dim,
                    image_shape=list(m.image_shape),
                    score_names=m.score_names,
                    providers=m.providers,
                    conditional=m.conditional,
                    classes=_classes(m) or [],
                    request_merging=runner.batching,
                    max_images=self.settings.max_images,
                    manifest=manifest,
                )
            )
        return rows


def _check_scoring(model: ExportedModel, maps: bool, percentile: float | None, threshold: float | None) -> None:
    """Refuse the /anomaly-score requests ``model`` cannot answer: maps without an encoder, both a percentile and a raw
    threshold, a threshold that is not finite, or no threshold for a model without calibration."""
    if maps and not model.has_encoder:
        raise RequestError(
            "maps",
            f"{model.name} is a {model.family} model and has no encoder; anomaly maps compare an "
            "image with its reconstruction",
            422,
        )
    if percentile is not None and threshold is not None:
        raise RequestError("threshold", "give either 'percentile' or a raw 'threshold', not both")
    if threshold is not None and not np.isfinite(threshold):
        raise RequestError("threshold", "must be a finite number", 422)
    if threshold is None and not model.calibration:
        raise RequestError(
            "threshold",
            f"{model.name} has no calibration (its training did not finish); send a raw 'threshold'",
            422,
        )


def _image_scores(
    model: ExportedModel,
    scores: dict[str, np.ndarray],
    cut: float,
    requested: np.ndarray | None,
    used: np.ndarray | None,
    diff: np.ndarray | None,
    maps_format: str,
) -> list[ImageScore]:
    """One result per image: its ``scores`` (name -> float64 [N]) against the threshold ``cut`` and the model's
    calibration, the class it was scored under (``used``; None for a model that is not conditional) and its anomaly map
    (``diff``, the score graph's float32 [N, C, H, W] in multiples of 1/255, or None) in ``maps_format``."""
    cal = model.calibration_curves
    pct: dict[str, np.ndarray | None] = dict.fromkeys(scores)
    if cal:
        pct.update(percentiles_of(cal, {name: v for name, v in scores.items() if name in cal.names}))
    norm = normalized(cal, "score", scores["score"], cut) if cal and "score" in cal.names else None
    results = []
    for i in range(len(scores["score"])):
        extra: dict[str, Any] = {}
        if used is not None:
            extra.update(label=int(used[i]), label_name=model.class_names[used[i]])
            extra["label_source"] = _label_source(requested, used)
        if diff is not None:
            extra["anomaly_map"] = (
                _png_base64(np.rint(diff[i : i + 1] * 255).astype(np.uint8))[0]
                if maps_format == "png"
                else diff[i].round(5).tolist()
            )
        result = ImageScore(
            score=float(scores["score"][i]),
            normalized_score=None if norm is None else float(norm[i]),
            percentile=_at(pct["score"], i),
            is_anomaly=bool(scores["score"][i] > cut),
            components={name: {"value": float(v[i]), "percentile": _at(pct[name], i)} for name, v in scores.items()},
            **extra,
        )
        results.append(result)
    return results


def _at(values: np.ndarray | None, i: int) -> float | None:
    return None if values is None else float(values[i])


def _labels_used(model: ExportedModel, requested: np.ndarray | None, used: np.ndarray | None) -> dict[str, Any]:
    """The label fields of a conditional model's response (none for other models)."""
    if used is None:
        return {}
    return {
        "labels": _label_indices(used),
        "label_names": _label_names(model, used),
        "label_source": _label_source(requested, used),
    }


def _json(result: BaseModel) -> JSONResponse:
    """A response model as JSON, without the fields that were not set because they do not apply."""
    return JSONResponse(result.model_dump(mode="json", exclude_unset=True))


def _annotated(method: F, annotations: dict[str, Any]) -> F:
    """A copy of ``method`` whose parameters carry these annotations: BentoML reads an endpoint's inputs, limits
    included, from its signature."""
    copy = types.FunctionType(
        method.__code__, method.__globals__, method.__name__, method.__defaults__, method.__closure__
    )
    copy.__kwdefaults__, copy.__doc__, copy.__qualname__ = method.__kwdefaults__, method.__doc__, method.__qualname__
    copy.__annotations__ = {**method.__annotations__, **annotations}
    return copy  # type: ignore[return-value]


def build_service(settings: Settings) -> bentoml.Service:
    """The BentoML service serving ``settings``: its limits in the endpoints' schemas, its workers, request timeout and
    access log; a model reference for every BentoML model tag it serves (what ``bentoml build`` packs into the bento);
    genlab's edge in front. Each call makes a new service class; nothing global changes."""
    annotations = {
        "generate": {"n": Annotated[StrictInt, Ge(1), Le(settings.max_images)]},
        "interpolate": {"steps": Annotated[StrictInt, Ge(2), Le(settings.max_images)]},
    }
    templates = [*(m.route for m in vars(GenlabService).values() if hasattr(m, "route"))]
    templates += [*HEALTH_PATHS, *PAGE_ROUTES, f"{PAGE_PREFIX}/{{file}}", "/docs", "/docs.json", METRICS_PATH]
    metrics = Metrics.for_server("genlab serve", [*templates, *PROTOCOL_ROUTES])
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": GenlabService.__doc__,
        "settings": settings,
        "metrics": metrics,
    }
    for name, method in vars(GenlabService).items():
        if hasattr(method, "route"):
            namespace[name] = bentoml.api(route=method.route)(_annotated(method, annotations.get(name, {})))
    for i, reference in enumerate(settings.models):
        if reference in settings.store_tags:
            namespace[f"model_{i}"] = bentoml.models.BentoModel(reference)
    service = bentoml.service(
        name="genlab",
        workers=settings.workers,
        traffic={"timeout": settings.request_timeout_s},
        logging={"access": {"enabled": settings.access_log}},
        # BentoML labels its traffic metrics with the raw request path: any client could add series without bound.
        # genlab's own metrics (genlab.metrics, answered at /metrics) label by route template.
        metrics={"enabled": False},
    )(type("Genlab", (GenlabService,), namespace))
    service.mount_asgi_app(PageFiles(), path=PAGE_PREFIX, name="page")
    service.mount_asgi_app(protocol_app(settings), path="/v2", name="open-inference-protocol")
    file_fields = {api.route: frozenset(api.input_spec.multipart_fields) for api in service.apis.values()}
    for api in service.apis.values():  # an unknown field is a typo: refused (400 naming it), never ignored
        api.input_spec.model_config["extra"] = "forbid"
        api.input_spec.model_rebuild(force=True)
    service.add_asgi_middleware(  # outermost of genlab's: every request is counted, refused ones included
        MetricsMiddleware,
        metrics=metrics,
        expose=lambda scope: headers_authorized(scope.get("headers", ()), settings.api_key),
    )
    service.add_asgi_middleware(
        Edge,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        file_fields=file_fields,
        fields={api.route: frozenset(api.input_spec.model_fields) for api in service.apis.values()},
        get_routes=frozenset({"/models"}),
        openapi=lambda spec: fix_spec(spec, file_fields, settings.api_key != "", model_names(settings)),
        open_paths=(*HEALTH_PATHS, *PROTOCOL_OPEN_PATHS, *PAGE_ROUTES),
        open_prefixes=(f"{PAGE_PREFIX}/",),
        rewrites={**PAGE_ROUTES, "/docs": "/", "/v2": "/v2/"},  # BentoML's Swagger UI answers "/"
        own_errors=("/v2/",),
        json_values=lambda: max_json_values(served_models(settings), settings.max_images),
        form_limits=FormLimits(max_parts=settings.max_images + 32),
    )
    return service


@functools.cache
def environment_service() -> bentoml.Service:
    """The service for this process's environment (:func:`~service.settings.load_settings`), built once. The serving
    process also gets :data:`~service.settings.SERVING_ENVIRONMENT` where its environment does not say otherwise."""
    for variable, value in SERVING_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    server_metrics_dir()  # made by the first process of the server, before it starts its workers
    return build_service(load_settings(os.environ))


def __getattr__(name: str) -> Any:
    """``Genlab``: :func:`environment_service`, what ``bentoml serve`` and ``bentoml build`` load."""
    if name == "Genlab":
        return environment_service()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
