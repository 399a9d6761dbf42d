"""What every kind of model source shares: :class:`ModelSource`, the view evaluation has of a model.

A subclass runs one batch (decode, reconstruct, score) on its backend; everything else (seeded
latents and labels, batching, checks on images and labels) is here, so a checkpoint, an export
and a served model draw the same samples for the same seed. :mod:`genlab.eval.model_source`
opens a MODEL string as the right kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from genlab.eval.batches import in_batches

from genlab.errors import GenlabError

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
    content: dict[str, Any]  # what identifies the model's bytes: the checkpoint's sha256, or the export's file hashes

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
        self,
        n: int,
        seed: int,
        labels: Any = None,
        batch_size: int = 256,
        desc: str | None = None,
        part: slice = slice(None),
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 [n, C, H, W], the labels they were drawn for or None): decode(sample_latents(n, seed)) in batches.
        ``part``: only those samples of the n are decoded (the labels are all n), the same images whatever the part;
        ``on_batch(count)`` runs after each batch."""
        labels = self.sample_labels(n, seed, labels)
        z = self.sample_latents(n, seed, labels)[part]
        mine = None if labels is None else labels[part]

        def decode(latents: np.ndarray, batch_labels: np.ndarray | None) -> np.ndarray:
            images = self.decode(latents, batch_labels)
            if on_batch is not None:
                on_batch(len(latents))
            return images

        images = self._images(self._paired_batches(decode, z, mine, batch_size, desc))
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
        self,
        images: np.ndarray,
        labels: Any = None,
        batch_size: int = 256,
        desc: str | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """uint8 images -> {component: float64 [N]}: the same scores the service returns (score components only: a
        conditional model's class is :meth:`labelled_scores`'s)."""
        return self.labelled_scores(images, labels, batch_size, desc, on_batch)[0]

    def labelled_scores(
        self,
        images: np.ndarray,
        labels: Any = None,
        batch_size: int = 256,
        desc: str | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """({component: float64 [N]}, the int64 class each image was scored under, or None when unconditional). A
        conditional model scores an image under its label, or where that is -1 (or ``labels`` is None) under the
        class that explains it best. ``on_batch(count)`` runs after each batch."""
        images = self._check_images(images)
        labels = self._check_labels(labels, len(images), unknown_allowed=True)

        def score(batch: np.ndarray, batch_labels: np.ndarray | None) -> dict[str, np.ndarray]:
            out = self._scores_batch(batch, batch_labels)
            if on_batch is not None:
                on_batch(len(batch))
            return out

        parts = self._paired_batches(score, images, labels, batch_size, desc)
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


def manifest_content(manifest: dict[str, Any]) -> dict[str, Any]:
    """An export's identity as its manifest states it: the sha256 of each graph file and of the source checkpoint."""
    source = manifest.get("source") or {}
    return {
        "kind": "onnx",
        "name": manifest.get("name"),
        "files": dict(manifest.get("files") or {}),
        "source_sha256": source.get("sha256"),
    }
