"""One view of "MODEL": a checkpoint file, a run directory, an export directory, a BentoML tag or a URL.

Every evaluator (FID, anomaly, translation, report) takes a :class:`ModelSource`
(:mod:`genlab.eval.source_base`) and sees the same things either way: uint8 images in and out,
latents drawn by :func:`genlab.latents.sample_latents` (NumPy, seeded), so a checkpoint, its ONNX
export and the server that serves the export produce the same images, and hence the same FID, for
the same seed. A checkpoint runs on torch (``device``); an export runs on ONNX Runtime and needs
no flags thanks to its manifest; ``http://HOST:PORT`` is a running ``genlab serve``
(:mod:`genlab.eval.http_source`).

A conditional model (``conditional``; label k is ``class_names[k]``) decodes, encodes and
reconstructs for a class label. Sampling without labels draws balanced, seeded ones
(:func:`genlab.latents.balanced_labels`) and :meth:`ModelSource.sample_labelled` says which; an
image reconstructed without its label goes through the class that explains it best, the class
its anomaly score is computed under. An unconditional model takes no labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from genlab.eval.http_source import HttpSource, is_url
from genlab.eval.source_base import LABEL_KEY, ModelSource, _describe, manifest_content

from genlab.devices import onnx_providers, resolve_device
from genlab.errors import GenlabError
from genlab.files import file_sha256
from genlab.run_dir import LAST_CHECKPOINT, checkpoint_file, is_run_dir

__all__ = ["LABEL_KEY", "CheckpointSource", "HttpSource", "ModelSource", "OnnxSource", "ensure_source", "open_model"]


class CheckpointSource(ModelSource):
    """A genlab checkpoint run on torch (eval mode, posterior mean, no gradients)."""

    kind = "checkpoint"

    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        from genlab.checkpoint import class_info, load_checkpoint, model_from_checkpoint

        file = checkpoint_file(path)
        ckpt = load_checkpoint(file)
        self.device = resolve_device(device)
        self.model = model_from_checkpoint(ckpt, self.device)
        self.path = str(file)
        self.family = ckpt["family"]
        self.has_encoder = bool(self.model.has_encoder)
        self.latent_dim = int(self.model.cfg.latent_dim)
        data = ckpt["data"]
        self.image_shape = (int(data["channels"]), int(data["image_size"]), int(data["image_size"]))
        self.calibration = ckpt.get("calibration")
        self.prior = ckpt.get("prior")
        self.score_descriptions = self.model.descriptions()
        _describe(self, data, class_info(ckpt), ckpt.get("epoch"), ckpt.get("step"), ckpt.get("metrics", {}))
        self.info["device"] = str(self.device)
        self.content = {"kind": "checkpoint", "sha256": file_sha256(file)}

    def _tensor(self, array: np.ndarray | None):
        import torch

        return None if array is None else torch.from_numpy(array).to(self.device)

    def _decode_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        import torch

        from genlab.pixels import model_to_uint8

        with torch.no_grad():
            images = self.model.decode(self._tensor(z), self._tensor(labels))
        return model_to_uint8(images).cpu().numpy()

    def _reconstruct_batch(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        import torch

        from genlab.pixels import model_to_uint8, uint8_to_model

        with torch.no_grad():
            x = uint8_to_model(self._tensor(images))
            return model_to_uint8(self.model.reconstruct(x, self._tensor(labels))).cpu().numpy()

    def _scores_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        import torch

        from genlab.calibration import score_images

        given = None if labels is None else torch.from_numpy(labels)
        scores = score_images(
            self.model, torch.from_numpy(images), self.device, batch_size=max(1, len(images)), labels=given
        )
        return {name: value.numpy() for name, value in scores.items()}


class OnnxSource(ModelSource):
    """An export directory (or BentoML model tag) run on ONNX Runtime; no torch needed."""

    kind = "onnx"

    def __init__(self, reference: str | os.PathLike, device: str = "auto"):
        from genlab.export.reader import open_export

        self.export = open_export(reference, providers=onnx_providers(device))
        manifest = self.export.manifest
        self.path = str(self.export.path)
        self.family = self.export.family
        self.has_encoder = self.export.has_encoder
        self.latent_dim = self.export.latent_dim
        self.image_shape = self.export.image_shape
        self.calibration = self.export.calibration
        self.prior = self.export.prior
        self.score_descriptions = dict(manifest.get("scores", {}).get("descriptions", {}))
        training = manifest.get("training", {})
        _describe(
            self,
            manifest.get("dataset", {}),
            manifest.get("classes", {}),
            training.get("epoch"),
            training.get("step"),
            training.get("metrics", {}),
        )
        self.info["providers"] = self.export.providers
        self.content = manifest_content(manifest)

    def _decode_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return self.export.decode(z, labels)

    def _reconstruct_batch(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        mu, _ = self.export.encode(images, labels)
        return self.export.decode(mu, labels)

    def _scores_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        return self.export.scores(images, labels)


def open_model(
    path: str, device: str = "auto", served_model: str | None = None, prior_from: str | None = None
) -> ModelSource:
    """MODEL -> ModelSource: ``http(s)://HOST:PORT`` (``served_model`` of that server; ``prior_from``: see
    :mod:`genlab.eval.http_source`), export dir (manifest.json), checkpoint file or run dir, or BentoML tag."""
    from genlab.export.reader import MANIFEST

    if is_url(str(path)):
        return HttpSource(str(path), served_model, prior_from)
    if served_model is not None or prior_from is not None:
        raise GenlabError("--model and --prior-from apply to a served model (MODEL = http://HOST:PORT) only")
    candidate = Path(str(path)).expanduser()
    if candidate.is_dir() and (candidate / MANIFEST).is_file():
        return OnnxSource(candidate, device)
    if candidate.is_file() or is_run_dir(candidate):
        return CheckpointSource(candidate, device)
    if candidate.is_dir():
        raise GenlabError(
            f"{candidate}: neither a run directory ({LAST_CHECKPOINT}) nor an export directory ({MANIFEST})"
        )
    if ":" in str(path) or "/" not in str(path):  # maybe a BentoML model tag
        try:
            return OnnxSource(str(path), device)
        except GenlabError:
            pass
    raise GenlabError(f"{path}: no checkpoint, run directory, export directory or BentoML model of that name")


def ensure_source(model: Any, device: str = "auto") -> Any:
    """A checkpoint / run dir / export dir path -> ModelSource; a ModelSource passes through."""
    if isinstance(model, (str, os.PathLike)):
        return open_model(model, device=device)
    return model


def normal_class_of(source: Any) -> int | None:
    """The class a model was trained on alone (one-class setting), or None."""
    value = getattr(source, "normal_class", None)
    if value is None:
        value = (getattr(source, "info", None) or {}).get("normal_class")
    return None if value is None else int(value)
