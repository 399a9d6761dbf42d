"""The genlab HTTP service: generate, reconstruct and anomaly-score over exported ONNX models.

    bentoml serve service.service:Genlab          (or: genlab serve --model NAME|EXPORT_DIR ...)

Endpoints (all POST, JSON or multipart):
    /generate        n, seed, z, temperature, format, model -> PNG grid | base64 PNGs | array | .npy
    /reconstruct     images (files) or array, model         -> reconstructions, latent means, errors
    /anomaly-score   images (files) or array, model, percentile | threshold -> per-image scores
    /models          -> loaded models, manifests and the execution provider of each graph

This process holds no sessions: it validates requests, reads manifests and encodes responses;
the ONNX Runtime work happens in ``service.runtime`` (a dependency), whose array APIs batch
concurrent requests. Nothing here imports torch or training code.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import aiohttp
import bentoml
import numpy as np
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from export.reader import ExportedModel, read_export, sample_latents
from genlab import __version__
from genlab.families import FAMILIES
from genlab.imageio import encode_png, tile
from genlab.measures import RECON_ERROR_MEANING, recon_error
from genlab.thresholds import DEFAULT_PERCENTILE, percentile_of, quantile
from service.inputs import RequestError, images_from_request, latents_from_request
from service.runtime import GenlabRuntime, resolve_reference
from service.settings import SETTINGS

log = logging.getLogger("genlab.service")
MAX = SETTINGS.max_images
RUNTIME_ATTEMPTS = 3
RUNTIME_TIMEOUT_S = 20.0


class ModelInfo(BaseModel):
    name: str
    family: str
    default: bool
    has_encoder: bool
    latent_dim: int
    image_shape: list[int]
    score_names: list[str]
    providers: dict[str, str]
    manifest: dict[str, Any]


class Reconstruction(BaseModel):
    model: str
    images_png_base64: list[str] = Field(description="reconstructions as base64 PNGs (format=png_list)")
    images: list[Any] = Field(description="reconstructions as uint8 [N, C, H, W] (format=array; empty otherwise)")
    mu: list[list[float]] = Field(description="posterior means, [N, latent]")
    recon_error: list[float] = Field(description=RECON_ERROR_MEANING)


class ImageScore(BaseModel):
    score: float
    percentile: Optional[float] = Field(description="percentile of the score among held-out normal images (0-100)")
    is_anomaly: bool
    components: dict[str, dict[str, Optional[float]]] = Field(description="name -> {value, percentile}")


class AnomalyScores(BaseModel):
    model: str
    score_name: str
    meaning: str
    threshold: float
    threshold_percentile: Optional[float]
    threshold_source: Literal["calibration", "request"]
    results: list[ImageScore]


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _png_base64(images: np.ndarray) -> list[str]:
    return [base64.b64encode(encode_png(image.transpose(1, 2, 0))).decode() for image in images]


@bentoml.service(name="genlab", traffic={"timeout": 60})
class Genlab:
    runtime = bentoml.depends(GenlabRuntime)

    def __init__(self) -> None:
        # manifests only; the files' hashes are checked once, where the graphs are loaded (service.runtime.load_model)
        self.models: dict[str, ExportedModel] = {}
        self.runtime_index: dict[str, int] = {}
        for i in range(len(SETTINGS.models)):
            model = read_export(resolve_reference(i), verify=False)
            if model.name in self.models:
                raise RuntimeError(f"two models are named {model.name!r}; export one with another --bento name")
            self.models[model.name] = model
            self.runtime_index[model.name] = i
        self.default = next(iter(self.models))
        log.info("genlab %s serving %s (default %s)", __version__, ", ".join(self.models), self.default)

    def _model(self, name: Optional[str]) -> ExportedModel:
        if name is None:
            return self.models[self.default]
        if name not in self.models:
            raise RequestError("model", f"unknown model {name!r}; this server has: {', '.join(self.models)}", 404)
        return self.models[name]

    async def _call(self, graph: str, model: ExportedModel, array: np.ndarray) -> np.ndarray:
        """One runtime call, retried when its connection is lost. BentoML 1.4.39's internal client
        replaces its HTTP session every 100 requests and closes the old one under the requests
        still in flight on it (``_bentoml_impl/client/proxy2.py``, ``SessionManager``): aiohttp
        then raises a connection error, or a bare ``RuntimeError("Connection closed.")`` while a
        response body is being read. Runtime calls are pure functions of their input, so running
        one again is safe; a call that hangs is cut off after RUNTIME_TIMEOUT_S and retried."""
        method = getattr(self.runtime.to_async, f"{graph}_{self.runtime_index[model.name]}")
        for attempt in range(RUNTIME_ATTEMPTS):
            try:
                return await asyncio.wait_for(method(array), RUNTIME_TIMEOUT_S)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, RuntimeError) as err:
                lost = not isinstance(err, RuntimeError) or "Connection closed" in str(err)
                if not lost or attempt == RUNTIME_ATTEMPTS - 1:
                    raise
                log.info("runtime call %s of %s lost its connection (%r); retrying", graph, model.name, err)
        raise AssertionError("unreachable")

    # -- endpoints ------------------------------------------------------------------------------
    @bentoml.api(route="/generate")
    async def generate(
        self,
        n: Annotated[int, Ge(1), Le(MAX)] = 16,
        seed: Optional[Annotated[int, Ge(0), Le(2**63 - 1)]] = None,
        z: Optional[list[list[float]]] = None,
        temperature: Annotated[float, Gt(0), Le(10)] = 1.0,
        format: Literal["png", "png_list", "array", "npy"] = "png",
        model: Optional[str] = None,
    ) -> Any:  # a PNG, a .npy file or JSON, chosen by `format`
        """Sample images from the prior (or decode the given latents `z`, which override n, seed and temperature).

        format: png = one PNG grid (image/png); png_list = JSON list of base64 PNGs; array = JSON uint8
        [n, C, H, W]; npy = the same array as a .npy file. The seed used is returned (JSON field or
        the X-Genlab-Seed header), so any sample can be drawn again.
        """
        try:
            m = self._model(model)
            if z is not None:
                latents = latents_from_request(z, m.latent_dim, MAX)
            else:
                seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
                latents = sample_latents(n, m.latent_dim, seed, temperature)
        except RequestError as err:
            return _error(err)
        images = await self._call("decode", m, latents)
        headers = {"X-Genlab-Model": m.name, "X-Genlab-Seed": "" if z is not None else str(seed)}
        if format == "png":
            return Response(encode_png(tile(images)), media_type="image/png", headers=headers)
        if format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, images, allow_pickle=False)
            return Response(buffer.getvalue(), media_type="application/octet-stream", headers=headers)
        body: dict[str, Any] = {"model": m.name, "seed": None if z is not None else seed, "shape": list(images.shape)}
        body["images"] = _png_base64(images) if format == "png_list" else images.tolist()
        return JSONResponse(body, headers=headers)

    @bentoml.api(route="/reconstruct")
    async def reconstruct(
        self,
        images: list[Path] = [],  # noqa: B006 (pydantic copies defaults)
        array: Optional[list[Any]] = None,
        format: Literal["png_list", "array"] = "png_list",
        model: Optional[str] = None,
    ) -> Reconstruction:
        """Reconstruct uploaded images (multipart field `images`, PNG/JPEG, any size or mode: converted to the
        model's channels and size) or `array` (uint8 [N, C, H, W] as nested lists) through encoder mean and decoder."""
        try:
            m = self._model(model)
            if not m.has_encoder:
                raise RequestError("model", f"{m.name} is a {m.family} model and has no encoder; reconstruct needs "
                                            f"a {' or '.join(f.name for f in FAMILIES.values() if f.has_encoder)} model", 422)
            x = images_from_request(images, array, m.image_shape, MAX, SETTINGS.max_upload_bytes, SETTINGS.max_pixels)
        except RequestError as err:
            return _error(err)  # type: ignore[return-value]
        mu = (await self._call("encode", m, x))[:, : m.latent_dim]
        recon = await self._call("decode", m, np.ascontiguousarray(mu))
        return Reconstruction(
            model=m.name,
            images_png_base64=_png_base64(recon) if format == "png_list" else [],
            images=recon.tolist() if format == "array" else [],
            mu=mu.tolist(),
            recon_error=recon_error(x, recon).tolist(),
        )

    @bentoml.api(route="/anomaly-score")
    async def anomaly_score(
        self,
        images: list[Path] = [],  # noqa: B006 (pydantic copies defaults)
        array: Optional[list[Any]] = None,
        percentile: Optional[Annotated[float, Ge(0), Le(100)]] = None,
        threshold: Optional[float] = None,
        model: Optional[str] = None,
    ) -> AnomalyScores:
        """Score images (files or `array`, as for /reconstruct): the raw score, its components, each one's
        percentile among held-out normal images, and `is_anomaly` = score above the threshold. The threshold
        is the calibrated `percentile` (default 99) of the normal scores, or a raw `threshold`."""
        try:
            m = self._model(model)
            if percentile is not None and threshold is not None:
                raise RequestError("threshold", "give either 'percentile' or a raw 'threshold', not both")
            if threshold is not None and not np.isfinite(threshold):
                raise RequestError("threshold", "must be a finite number", 422)
            if threshold is None and not m.calibration:
                raise RequestError("threshold", f"{m.name} has no calibration (its training did not finish); "
                                                "send a raw 'threshold'", 422)
            x = images_from_request(images, array, m.image_shape, MAX, SETTINGS.max_upload_bytes, SETTINGS.max_pixels)
        except RequestError as err:
            return _error(err)  # type: ignore[return-value]
        raw = await self._call("score", m, x)
        scores = {name: raw[:, k].astype(np.float64) for k, name in enumerate(m.score_names)}
        cal = m.calibration
        if threshold is None:
            threshold_percentile = DEFAULT_PERCENTILE if percentile is None else percentile
            cut = quantile(cal, "score", threshold_percentile)
        else:
            threshold_percentile, cut = None, float(threshold)
        pct = {name: percentile_of(cal, name, v) if cal and name in cal["scores"] else None for name, v in scores.items()}
        results = [
            ImageScore(
                score=float(scores["score"][i]),
                percentile=None if pct["score"] is None else float(pct["score"][i]),
                is_anomaly=bool(scores["score"][i] > cut),
                components={
                    name: {"value": float(v[i]), "percentile": None if pct[name] is None else float(pct[name][i])}
                    for name, v in scores.items()
                },
            )
            for i in range(len(x))
        ]
        return AnomalyScores(
            model=m.name, score_name="score", meaning=m.score_descriptions.get("score", ""),
            threshold=cut, threshold_percentile=threshold_percentile,
            threshold_source="request" if threshold is not None else "calibration", results=results,
        )

    @bentoml.api(route="/models")
    async def list_models(self) -> list[ModelInfo]:
        """The models this server holds (the first is the default), their manifests and execution providers."""
        providers = await self.runtime.to_async.providers()
        rows = []
        for name, m in self.models.items():
            manifest = {k: v for k, v in m.manifest.items() if k != "calibration"}
            rows.append(ModelInfo(
                name=name, family=m.family, default=name == self.default, has_encoder=m.has_encoder,
                latent_dim=m.latent_dim, image_shape=list(m.image_shape), score_names=m.score_names,
                providers=providers.get(name, {}), manifest=manifest,
            ))
        return rows
