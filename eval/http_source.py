"""A model served by ``genlab serve``, evaluated over HTTP: the figures are of the deployed artifact.

Samples are drawn here exactly as for an export directory (the same seeded latents and labels,
:meth:`ModelSource.sample_labelled`) and decoded by the server through ``POST /batch/decode``;
images are scored through ``POST /batch/score``; both move ``.npy`` bodies, never JSON lists of
numbers. ``POST /models`` says which model answers and what it is (its manifest, with the file
hashes that identify it). With ``GENLAB_API_KEY`` set, every request carries
``Authorization: Bearer <key>``.

The latents of a model with a fitted prior need that prior's numbers. Where the server's
``/models`` publishes them (``manifest.latent.fitted_prior``) they are used; otherwise they are
read from ``prior_from``, a local copy of the served export, accepted only if its file hashes
and source checkpoint hash are the served model's. The server publishes no calibration, so
anomaly evaluation over HTTP reports AUROC / AUPRC without the calibrated threshold's rates, and
``--of reconstructions`` is refused (the server has no binary reconstruction route).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from genlab.eval.source_base import LABEL_KEY, ModelSource, _describe, manifest_content

from genlab.errors import GenlabError
from genlab.latents import describe as describe_prior

API_KEY_ENV = "GENLAB_API_KEY"
REQUEST_IMAGES = 256  # images per request: the server's default GENLAB_MAX_IMAGES
TIMEOUT_S = 300.0


def is_url(model: Any) -> bool:
    return isinstance(model, str) and model.startswith(("http://", "https://"))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class HttpSource(ModelSource):
    """``url`` (``http://HOST:PORT``) serving ``model`` (default: the server's default model)."""

    kind = "http"

    def __init__(self, url: str, model: str | None = None, prior_from: str | None = None):
        import httpx

        self.url = url.rstrip("/")
        key = os.environ.get(API_KEY_ENV)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)
        row = self._served_model(model)
        manifest = row["manifest"]
        self.name = row["name"]
        self.path = f"{self.url} model {self.name}"
        self.family = row["family"]
        self.has_encoder = bool(row["has_encoder"])
        self.latent_dim = int(row["latent_dim"])
        self.image_shape = tuple(int(v) for v in row["image_shape"])
        self.calibration = None  # not published by the server
        self.score_descriptions = dict((manifest.get("scores") or {}).get("descriptions") or {})
        self.score_names = list(row["score_names"])
        self._manifest = manifest
        self._prior_from = prior_from
        self._prior: Any = ...
        training = manifest.get("training") or {}
        _describe(
            self,
            manifest.get("dataset") or {},
            manifest.get("classes") or {},
            training.get("epoch"),
            training.get("step"),
            training.get("metrics") or {},
        )
        self.info["providers"] = row.get("providers")
        self.info["url"] = self.url
        self.content = {**manifest_content(manifest), "url": self.url}

    # -- requests ------------------------------------------------------------------------------
    def _post(self, route: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.client.post(route, **kwargs)
        except httpx.HTTPError as err:
            raise GenlabError(f"{self.url}{route}: {type(err).__name__}: {err}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("error") or response.text
            except ValueError:
                detail = response.text
            raise GenlabError(f"{self.url}{route} answered {response.status_code}: {str(detail)[:300]}")
        return response

    def _served_model(self, model: str | None) -> dict[str, Any]:
        rows = self._post("/models").json()
        for row in rows:
            if (model is None and row.get("default")) or row.get("name") == model:
                return row
        names = ", ".join(r.get("name", "?") for r in rows) or "none"
        raise GenlabError(f"{self.url} serves no model named {model!r}; it serves: {names}")

    def _files(self, name: str, array: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        files = {name: (f"{name}.npy", _npy(array), "application/octet-stream")}
        if labels is not None:
            files["labels"] = ("labels.npy", _npy(labels.astype(np.int64)), "application/octet-stream")
        return files

    # -- the prior ----------------------------------------------------------------------------
    @property
    def prior(self) -> dict[str, Any] | None:  # type: ignore[override]
        if self._prior is ...:
            self._prior = self._resolve_prior()
        return self._prior

    def _resolve_prior(self) -> dict[str, Any] | None:
        latent = self._manifest.get("latent") or {}
        if "fitted_prior" in latent:
            return latent["fitted_prior"]
        if latent.get("prior") == describe_prior(None):
            return None
        if not self._prior_from:
            raise GenlabError(
                f"{self.path} samples a fitted latent prior ({latent.get('prior')}) whose numbers the server does not "
                f"publish: give --prior-from EXPORT, a copy of the served export (checked by its hashes)"
            )
        from genlab.export.reader import read_export

        local = read_export(self._prior_from).manifest
        mine, served = manifest_content(local), manifest_content(self._manifest)
        if (mine["files"], mine["source_sha256"]) != (served["files"], served["source_sha256"]):
            raise GenlabError(f"--prior-from {self._prior_from}: not the served model (its file hashes differ)")
        return local["latent"].get("fitted_prior")

    # -- one batch ----------------------------------------------------------------------------
    def _paired_batches(self, fn, inputs, labels, batch_size, desc):  # type: ignore[override]
        return super()._paired_batches(fn, inputs, labels, min(int(batch_size), REQUEST_IMAGES), desc)

    def _decode_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        response = self._post("/batch/decode", files=self._files("z", z, labels), data={"model": self.name})
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def _reconstruct_batch(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        raise GenlabError(f"{self.url} has no binary reconstruction route: evaluate reconstructions on the export")

    def _scores_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        response = self._post("/batch/score", files=self._files("images", images, labels), data={"model": self.name})
        table = np.load(io.BytesIO(response.content), allow_pickle=False)
        names = response.headers.get("x-genlab-scores", ",".join(self.score_names)).split(",")
        scores = {name: table[:, i] for i, name in enumerate(names)}
        used = response.headers.get("x-genlab-labels")
        if self.conditional and used:
            scores[LABEL_KEY] = np.asarray([int(v) for v in used.split(",")], np.int64)
        return scores
