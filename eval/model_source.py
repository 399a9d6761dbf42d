"""One view of "MODEL": a checkpoint file, a run directory, an export directory or a BentoML tag.

Every evaluator (FID, anomaly, translation, report) takes a :class:`ModelSource` and sees the
same things either way: uint8 images in and out, latents drawn by
:func:`export.reader.sample_latents` (NumPy, seeded), so a checkpoint and its ONNX export
produce the same images, and hence the same FID, for the same seed. A checkpoint runs on torch
(``device``); an export runs on ONNX Runtime and needs no flags thanks to its manifest.

A conditional model (``conditional``; label k is ``class_names[k]``) decodes, encodes and
reconstructs for a class label. Sampling without labels draws balanced, seeded ones
(:func:`genlab.latents.balanced_labels`) and :meth:`ModelSource.sample_labelled` says which; an
image reconstructed without its label goes through the class that explains it best, the class
its anomaly score is computed under. An unconditional model takes no labels and samples exactly
as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from genlab.eval.batches import in_batches

from genlab.devices import onnx_providers, resolve_device
from genlab.errors import GenlabError
from genlab.run_dir import LAST_CHECKPOINT, checkpoint_file, is_run_dir

LABEL_KEY = "label"  # the key under which scores name a conditional model's class (torch and the export reader alike)
T = TypeVar("T")


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
    conditional: bool  # the model takes a class label wherever an image or a latent goes in
    class_names: list[str]  # label k is class_names[k] (an unconditional model: its training data's classes)
    condition_on: str | None  # CelebA: the attribute whose presence is the label

    # -- one batch, per backend (labels: int64 [B] for a conditional model, else None) ---------------
    def _decode_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _reconstruct_batch(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _scores_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        """{component: [B]}, and for a conditional model ``label``: the class each image was scored under."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """The number of labels the model takes: 0 for an unconditional model."""
        return len(self.class_names) if self.conditional else 0

    def sample_labels(self, n: int, seed: int, labels: Any = None) -> np.ndarray | None:
        """The labels n samples are drawn for: ``labels`` checked, else balanced seeded ones; None if unconditional."""
        from genlab.latents import balanced_labels

        if labels is None and self.conditional:
            return balanced_labels(n, self.num_classes, seed)
        return self._check_labels(labels, n)

    def sample_latents(self, n: int, seed: int, labels: Any = None) -> np.ndarray:
        """float32 [n, latent_dim] from the model's prior (:mod:`genlab.latents`); identical for every kind of source.
        A conditional model's per-class prior draws for ``labels`` (default: :meth:`sample_labels`)."""
        from genlab.latents import sample_latents

        return sample_latents(n, self.latent_dim, seed, prior=self.prior, labels=self.sample_labels(n, seed, labels))

    def decode(self, z: np.ndarray, labels: Any = None) -> np.ndarray:
        """float32 latents [n, L] (and a conditional model's int64 labels [n]) -> uint8 images [n, C, H, W]."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise GenlabError(f"latents must have shape [n, {self.latent_dim}], got {list(z.shape)}")
        return self._decode_batch(z, self._check_labels(labels, len(z), required=True))

    def sample_labelled(
        self, n: int, seed: int, labels: Any = None, batch_size: int = 256, desc: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 [n, C, H, W], the labels they were drawn for or None): decode(sample_latents(n, seed)) in batches."""
        labels = self.sample_labels(n, seed, labels)
        z = self.sample_latents(n, seed, labels)
        images = self._images(self._paired_batches(self.decode, z, labels, batch_size, desc))
        return images, labels

    def sample(
        self, n: int, seed: int, batch_size: int = 256, desc: str | None = None, labels: Any = None
    ) -> np.ndarray:
        """uint8 [n, C, H, W] = decode(sample_latents(n, seed)), decoded in batches (see :meth:`sample_labelled`)."""
        return self.sample_labelled(n, seed, labels, batch_size, desc)[0]

    def reconstruct(
        self, images: np.ndarray, labels: Any = None, batch_size: int = 256, desc: str | None = None
    ) -> np.ndarray:
        """uint8 images -> uint8 reconstructions through the posterior mean; a conditional model's through each image's
        label, or where none is given the class it is scored under (the class that explains it best)."""
        if not self.has_encoder:
            raise GenlabError(f"a {self.family} model has no encoder, so it cannot reconstruct images")
        images = self._check_images(images)
        labels = self._check_labels(labels, len(images))
        if self.conditional and labels is None:
            labels = self.labelled_scores(images, batch_size=batch_size, desc=desc)[1]
        return self._images(self._paired_batches(self._reconstruct_batch, images, labels, batch_size, desc))

    def scores(
        self, images: np.ndarray, labels: Any = None, batch_size: int = 256, desc: str | None = None
    ) -> dict[str, np.ndarray]:
        """uint8 images -> {component: float64 [N]}: the same scores the service returns (score components only: a
        conditional model's class is :meth:`labelled_scores`'s)."""
        return self.labelled_scores(images, labels, batch_size, desc)[0]

    def labelled_scores(
        self, images: np.ndarray, labels: Any = None, batch_size: int = 256, desc: str | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """({component: float64 [N]}, the int64 class each image was scored under, or None when unconditional). A
        conditional model scores an image under its label, or where that is -1 (or ``labels`` is None) under the
        class that explains it best."""
        images = self._check_images(images)
        labels = self._check_labels(labels, len(images), unknown_allowed=True)
        parts = self._paired_batches(self._scores_batch, images, labels, batch_size, desc)
        names = list(parts[0]) if parts else list(self.score_descriptions)
        joined = {
            name: np.concatenate([np.asarray(p[name]).reshape(-1) for p in parts]) if parts else np.zeros(0)
            for name in names
        }
        used = joined.pop(LABEL_KEY, None)
        scores = {name: value.astype(np.float64) for name, value in joined.items()}
        return scores, None if used is None else used.astype(np.int64)

    def _paired_batches(
        self,
        fn: Callable[[np.ndarray, np.ndarray | None], T],
        inputs: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        desc: str | None,
    ) -> list[T]:
        """``fn(inputs[i:j], labels[i:j])`` over consecutive batches (labels None stays None)."""
        return in_batches(
            lambda index: fn(inputs[index], None if labels is None else labels[index]),
            np.arange(len(inputs)),
            batch_size,
            desc,
        )

    def _check_labels(
        self, labels: Any, n: int, required: bool = False, unknown_allowed: bool = False
    ) -> np.ndarray | None:
        """int64 [n] class labels within the model's classes (-1 too where ``unknown_allowed``), or None; one line
        when they do not fit the model."""
        if labels is None:
            if required and self.conditional:
                raise GenlabError(
                    f"{self.path} is a conditional model: give a class label per latent "
                    f"(0..{self.num_classes - 1}: {', '.join(self.class_names)})"
                )
            return None
        if not self.conditional:
            raise GenlabError(f"{self.path} is not a conditional model; it takes no class labels")
        array = np.asarray(labels)
        if array.shape != (n,) or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise GenlabError(f"labels must be {n} integers, got {array.dtype} {list(array.shape)}")
        low = -1 if unknown_allowed else 0
        bad = array[(array < low) | (array >= self.num_classes)]
        if bad.size:
            raise GenlabError(
                f"label {int(bad[0])} is not a class of this model (0..{self.num_classes - 1}"
                f"{', or -1 for unknown' if unknown_allowed else ''})"
            )
        return np.ascontiguousarray(array, dtype=np.int64)

    def _check_images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise GenlabError(
                f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], "
                f"got {images.dtype} {list(images.shape)}"
            )
        return np.ascontiguousarray(images)

    def _images(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, *self.image_shape), np.uint8)
        return np.concatenate([np.asarray(p, np.uint8) for p in parts])

    def __repr__(self) -> str:
        return f"<ModelSource {self.kind} {self.family} on {self.dataset} from {self.path}>"


def _describe(
    source: ModelSource, data: dict[str, Any], classes: dict[str, Any], epoch: Any, step: Any, metrics: dict[str, Any]
) -> None:
    """Fill the descriptive attributes both kinds share from a checkpoint's ``data`` dict and the classes dict
    (:func:`genlab.checkpoint.class_info`, the manifest's ``classes``)."""
    source.dataset = str(data.get("dataset"))
    source.normal_class = data.get("normal_class")
    source.conditional = bool(classes.get("conditional", False))
    source.class_names = [str(name) for name in classes.get("names") or []]
    source.condition_on = classes.get("condition_on")
    source.info = {
        "kind": source.kind,
        "source": source.path,
        "family": source.family,
        "dataset": source.dataset,
        "normal_class": source.normal_class,
        "image_shape": list(source.image_shape),
        "latent_dim": source.latent_dim,
        "conditional": source.conditional,
        "class_names": source.class_names,
        "condition_on": source.condition_on,
        "epochs": epoch,
        "step": step,
        "train_seconds": (metrics or {}).get("train_seconds"),
    }


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
        self.score_descriptions = dict(type(self.model).score_descriptions)
        _describe(self, data, class_info(ckpt), ckpt.get("epoch"), ckpt.get("step"), ckpt.get("metrics", {}))
        self.info["device"] = str(self.device)

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

    def _decode_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return self.export.decode(z, labels)

    def _reconstruct_batch(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        mu, _ = self.export.encode(images, labels)
        return self.export.decode(mu, labels)

    def _scores_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        return self.export.scores(images, labels)


def open_model(path: str, device: str = "auto") -> ModelSource:
    """MODEL -> ModelSource: export dir (manifest.json), checkpoint file or run dir, or BentoML tag."""
    from genlab.export.reader import MANIFEST

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
