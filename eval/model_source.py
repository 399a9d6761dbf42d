"""One view of "MODEL": a checkpoint file, a run directory, an export directory or a BentoML tag.

Every evaluator (FID, anomaly, translation, report) takes a :class:`ModelSource` and sees the
same things either way: uint8 images in and out, latents drawn by
:func:`export.reader.sample_latents` (NumPy, seeded), so a checkpoint and its ONNX export
produce the same images, and hence the same FID, for the same seed. A checkpoint runs on torch
(``device``); an export runs on ONNX Runtime and needs no flags thanks to its manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from genlab.devices import onnx_providers, resolve_device
from genlab.errors import GenlabError
from genlab.run_dir import LAST_CHECKPOINT, checkpoint_file, is_run_dir

from eval.batches import in_batches


class ModelSource:
    """What evaluation needs from a model, whatever it is stored as. Subclasses run one batch."""

    kind: str  # "checkpoint" | "onnx"
    path: str
    family: str
    dataset: str
    normal_class: int | None
    has_encoder: bool
    latent_dim: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    calibration: dict[str, Any] | None
    prior: dict[str, Any] | None  # the fitted latent prior (genlab.latents) or None for N(0, I)
    score_descriptions: dict[str, str]
    info: dict[str, Any]

    # -- one batch, per backend ---------------------------------------------------------------
    def _decode_batch(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reconstruct_batch(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _scores_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def sample_latents(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, latent_dim] from the model's prior (:mod:`genlab.latents`); identical for every kind of source."""
        from genlab.latents import sample_latents

        return sample_latents(n, self.latent_dim, seed, prior=self.prior)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """float32 latents [n, L] -> uint8 images [n, C, H, W] (one batch)."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise GenlabError(f"latents must have shape [n, {self.latent_dim}], got {list(z.shape)}")
        return self._decode_batch(z)

    def sample(self, n: int, seed: int, batch_size: int = 256, desc: str | None = None) -> np.ndarray:
        """uint8 [n, C, H, W] = decode(sample_latents(n, seed)), decoded in batches."""
        return self._images(in_batches(self.decode, self.sample_latents(n, seed), batch_size, desc))

    def reconstruct(self, images: np.ndarray, batch_size: int = 256, desc: str | None = None) -> np.ndarray:
        """uint8 images -> uint8 reconstructions through the posterior mean."""
        if not self.has_encoder:
            raise GenlabError(f"a {self.family} model has no encoder, so it cannot reconstruct images")
        return self._images(in_batches(self._reconstruct_batch, self._check_images(images), batch_size, desc))

    def scores(self, images: np.ndarray, batch_size: int = 256, desc: str | None = None) -> dict[str, np.ndarray]:
        """uint8 images -> {component: float64 [N]}: the same scores the service returns."""
        parts = in_batches(self._scores_batch, self._check_images(images), batch_size, desc)
        names = list(parts[0]) if parts else list(self.score_descriptions)
        return {name: np.concatenate([np.asarray(p[name], np.float64).reshape(-1) for p in parts]) if parts else np.zeros(0)
                for name in names}

    def _check_images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise GenlabError(
                f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], got {images.dtype} {list(images.shape)}"
            )
        return np.ascontiguousarray(images)

    def _images(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, *self.image_shape), np.uint8)
        return np.concatenate([np.asarray(p, np.uint8) for p in parts])

    def __repr__(self) -> str:
        return f"<ModelSource {self.kind} {self.family} on {self.dataset} from {self.path}>"


def _describe(source: ModelSource, data: dict[str, Any], epoch: Any, step: Any, metrics: dict[str, Any]) -> None:
    """Fill the descriptive attributes both kinds share from a checkpoint's ``data`` dict."""
    source.dataset = str(data.get("dataset"))
    source.normal_class = data.get("normal_class")
    source.info = {
        "kind": source.kind,
        "source": source.path,
        "family": source.family,
        "dataset": source.dataset,
        "normal_class": source.normal_class,
        "image_shape": list(source.image_shape),
        "latent_dim": source.latent_dim,
        "epochs": epoch,
        "step": step,
        "train_seconds": (metrics or {}).get("train_seconds"),
    }


class CheckpointSource(ModelSource):
    """A genlab checkpoint run on torch (eval mode, posterior mean, no gradients)."""

    kind = "checkpoint"

    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        from genlab.checkpoint import load_checkpoint, model_from_checkpoint

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
        self.score_descriptions = dict(type(self.model).score_descriptions)
        _describe(self, data, ckpt.get("epoch"), ckpt.get("step"), ckpt.get("metrics", {}))
        self.info["device"] = str(self.device)

    def _decode_batch(self, z: np.ndarray) -> np.ndarray:
        import torch

        from genlab.pixels import model_to_uint8

        with torch.no_grad():
            images = self.model.decode(torch.from_numpy(z).to(self.device))
        return model_to_uint8(images).cpu().numpy()

    def _reconstruct_batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        from genlab.pixels import model_to_uint8, uint8_to_model

        with torch.no_grad():
            x = uint8_to_model(torch.from_numpy(images).to(self.device))
            return model_to_uint8(self.model.reconstruct(x)).cpu().numpy()

    def _scores_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from genlab.calibration import score_images

        scores = score_images(self.model, torch.from_numpy(images), self.device, batch_size=max(1, len(images)))
        return {name: value.double().numpy() for name, value in scores.items()}


class OnnxSource(ModelSource):
    """An export directory (or BentoML model tag) run on ONNX Runtime; no torch needed."""

    kind = "onnx"

    def __init__(self, reference: str | os.PathLike, device: str = "auto"):
        from export.reader import open_export

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
        _describe(self, manifest.get("dataset", {}), training.get("epoch"), training.get("step"), training.get("metrics", {}))
        self.info["providers"] = self.export.providers

    def _decode_batch(self, z: np.ndarray) -> np.ndarray:
        return self.export.decode(z)

    def _reconstruct_batch(self, images: np.ndarray) -> np.ndarray:
        mu, _ = self.export.encode(images)
        return self.export.decode(mu)

    def _scores_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.export.scores(images)


def open_model(path: str, device: str = "auto") -> ModelSource:
    """MODEL -> ModelSource: export dir (manifest.json), checkpoint file or run dir, or BentoML tag."""
    from export.reader import MANIFEST

    candidate = Path(str(path)).expanduser()
    if candidate.is_dir() and (candidate / MANIFEST).is_file():
        return OnnxSource(candidate, device)
    if candidate.is_file() or is_run_dir(candidate):
        return CheckpointSource(candidate, device)
    if candidate.is_dir():
        raise GenlabError(f"{candidate}: neither a run directory ({LAST_CHECKPOINT}) nor an export directory ({MANIFEST})")
    if ":" in str(path) or "/" not in str(path):  # maybe a BentoML model tag
        try:
            return OnnxSource(str(path), device)
        except GenlabError:
            pass
    raise GenlabError(f"{path}: no checkpoint, run directory, export directory or BentoML model of that name")
