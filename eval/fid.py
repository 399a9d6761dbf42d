"""FID / KID / precision-recall of a model against a dataset split, through torch-fidelity.

The Fréchet distance, KID and precision/recall are torch-fidelity's (``calculate_metrics``);
this module only decides what goes in:

- input 1: ``n`` samples of the model from seeded N(0, I) latents (:mod:`genlab.eval.model_source`,
  identical for a checkpoint and its export), or, with ``of="reconstructions"``, the model's
  reconstructions of the reference images (encoder models only);
- input 2: the reference split at the model's resolution and channels (all of it, or a fixed
  seeded subset of ``n`` images), whose features and statistics torch-fidelity caches in the
  project cache folder under a name encoding every choice (dataset, split, resolution,
  channels, extractor and its weights, N);
- grey images are replicated to 3 channels; Inception resizes to 299 px with torch-fidelity's
  TF-compatible bilinear path.

A conditional model's samples are drawn for balanced, seeded labels (every class n/K times) and
compared, pooled, with the reference split as above; its reference split is read with the labels
the model was trained on (CelebA: ``condition_on``). ``per_class`` adds, for each class k, the
same metrics between the samples drawn for k and the reference images of class k (all of them, or
a fixed seeded subset as many as the class's samples); the arrays go to torch-fidelity class by
class. The result also carries the samples' class fidelity (:mod:`genlab.eval.class_fidelity`).

The result names every setting next to the numbers, so numbers computed under different
settings are never mistaken for one another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from genlab.devices import resolve_device
from genlab.errors import GenlabError

METRICS = ("fid", "kid", "prc")
OF_CHOICES = ("samples", "reconstructions")
REFERENCE_SUBSET_SEED = 20240601  # fixed: the reference subset never depends on --seed
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class FidSettings:
    model: str
    ref: str | None = None  # DATASET[:split]; default: the model's dataset
    split: str = "test"  # the reference split where ``ref`` names none
    n: int = 1000
    metrics: tuple[str, ...] = ("fid", "kid")
    of: str = "samples"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    extractor: str = "inception"
    inception_weights: str | None = None
    data_dir: str = "data"
    progress: bool = True
    per_class: bool = False  # a conditional model: also the metrics of each class against that class's references

    def __post_init__(self) -> None:
        if self.n < 2:
            raise GenlabError(f"--n must be at least 2, got {self.n}")
        if self.batch_size < 1:
            raise GenlabError(f"--batch-size must be >= 1, got {self.batch_size}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise GenlabError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
        if self.of not in OF_CHOICES:
            raise GenlabError(f"--of must be one of {', '.join(OF_CHOICES)}, got {self.of!r}")


def parse_reference(ref: str | None, default_dataset: str, default_split: str = "test") -> tuple[str, str]:
    """'DATASET[:split]' -> (dataset, split); 'folder:PATH[:split]' keeps its path; no split: ``default_split``."""
    from genlab.data import SPLITS

    if not ref:
        return default_dataset, default_split
    head, sep, tail = ref.rpartition(":")
    if sep and tail in SPLITS and head:
        return head, tail
    return ref, default_split


def reference_subset(count: int, n: int) -> np.ndarray:
    """Indices of the reference images used: all of them, or a fixed seeded subset of n (in order)."""
    if n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(REFERENCE_SUBSET_SEED).permutation(count)[:n])


def reference_cache_name(
    dataset: str,
    split: str,
    image_shape: tuple[int, int, int],
    extractor_name: str,
    weights_identity: str,
    n: int,
    class_name: str | None = None,
    condition_on: str | None = None,
) -> str:
    """The cache name of a reference split's features / statistics: one name per set of choices (per-class
    references: also the class, and the attribute that labels CelebA)."""
    from genlab.cache import cache_name

    channels, height, width = image_shape
    labelled = {} if class_name is None else {"by": condition_on or "label", "cls": class_name}
    return cache_name(
        ref=dataset,
        split=split,
        res=f"{height}x{width}",
        ch=channels,
        fx=extractor_name,
        w=weights_identity,
        n=n,
        sub=REFERENCE_SUBSET_SEED,
        **labelled,
    )


def images_to_dataset(images: np.ndarray):
    """uint8 [N, C, H, W] -> a torch Dataset yielding uint8 [3, H, W] (grey replicated), as torch-fidelity wants."""
    import torch
    from torch.utils.data import Dataset

    class UInt8Images(Dataset):
        def __init__(self, array: np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(array))

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, index: int) -> torch.Tensor:
            image = self.images[index]
            return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    return UInt8Images(images)


def images_to_metrics(
    images: np.ndarray,
    reference: np.ndarray,
    extractor,
    metrics: tuple[str, ...],
    batch_size: int,
    cuda: bool,
    seed: int,
    reference_cache: str | None,
    progress: bool = False,
) -> dict[str, float]:
    """Two uint8 image sets -> {our metric key: value} through torch-fidelity's calculate_metrics."""
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    import torch_fidelity

    from genlab.cache import cache_dir

    kwargs: dict[str, Any] = dict(
        input1=images_to_dataset(images),
        input2=images_to_dataset(reference),
        cuda=cuda,
        batch_size=batch_size,
        fid="fid" in metrics,
        kid="kid" in metrics,
        prc="prc" in metrics,
        feature_extractor=extractor.name,
        feature_extractor_weights_path=extractor.weights_path,
        feature_layer_fid=extractor.feature_layer,
        feature_layer_kid=extractor.feature_layer,
        feature_layer_prc=extractor.feature_layer,
        kid_subsets=KID_SUBSETS,
        kid_subset_size=kid_subset_size(len(images), len(reference)),
        rng_seed=seed,
        save_cpu_ram=True,
        verbose=progress,
        samples_shuffle=False,
        cache=reference_cache is not None,
        cache_root=str(cache_dir("fid-reference")),
        input2_cache_name=reference_cache,
    )
    try:
        raw = torch_fidelity.calculate_metrics(**kwargs)
    except ValueError as err:  # torch-fidelity's vassert
        raise GenlabError(f"torch-fidelity: {str(err).splitlines()[0]}") from None
    if kid_subset_size(len(images), len(reference)) >= max(len(images), len(reference)):
        # every KID subset is both whole sets: the spread across subsets is float noise, not an error bar
        raw.pop("kernel_inception_distance_std", None)
    return {extractor.metric_key(key): float(value) for key, value in raw.items()}


def kid_subset_size(n1: int, n2: int) -> int:
    return min(KID_SUBSET_SIZE, n1, n2)


def compute_fid(
    model: str,
    ref: str | None = None,
    split: str = "test",
    n: int = 1000,
    metrics: tuple[str, ...] = ("fid", "kid"),
    of: str = "samples",
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    extractor: str = "inception",
    inception_weights: str | None = None,
    data_dir: str = "data",
    progress: bool = True,
    per_class: bool = False,
) -> dict[str, Any]:
    """FID (and KID / precision-recall) of MODEL's samples or reconstructions against a reference split; ``per_class``
    (conditional models): also per class, against that class's reference images."""
    settings = FidSettings(
        model=str(model),
        ref=ref,
        split=split,
        n=int(n),
        metrics=tuple(metrics),
        of=of,
        batch_size=int(batch_size),
        device=device,
        seed=int(seed),
        extractor=extractor,
        inception_weights=inception_weights,
        data_dir=data_dir,
        progress=progress,
        per_class=bool(per_class),
    )
    return fid_from_settings(settings)


def class_reference(reference_data: Any, k: int, n_generated: int) -> np.ndarray:
    """The reference images of class k: all of them, or a fixed seeded subset the size of its generated images."""
    of_class = reference_data.images.numpy()[reference_data.labels.numpy() == k]
    return of_class[reference_subset(len(of_class), n_generated)]


def per_class_metrics(
    images: np.ndarray,
    labels: np.ndarray,
    reference_data: Any,
    class_names: list[str],
    fx: Any,
    s: FidSettings,
    cuda: bool,
    reference_cache: Any,
) -> dict[str, dict[str, Any]]:
    """{class name: {values, n, n_reference}}: each class's generated images against its own reference images.
    ``reference_cache(name, n_reference)`` names the cached features of a class's reference."""
    out = {}
    for k, name in enumerate(class_names):
        generated = images[labels == k]
        reference = class_reference(reference_data, k, len(generated))
        if min(len(generated), len(reference)) < 2:
            raise GenlabError(
                f"per-class metrics need at least 2 images of each class: class {name!r} has {len(generated)} "
                f"generated and {len(reference)} reference images (raise --n to at least {2 * len(class_names)})"
            )
        values = images_to_metrics(
            generated,
            reference,
            fx,
            s.metrics,
            s.batch_size,
            cuda,
            s.seed,
            reference_cache(name, len(reference)),
            progress=False,
        )
        out[name] = {"values": values, "n": len(generated), "n_reference": len(reference)}
    return out


@dataclass(frozen=True)
class _Reference:
    """The real images a model's output is compared with: ``images`` are the subset ``index`` of ``data``."""

    dataset: str
    split: str
    condition_on: str | None  # the labels the model was trained on, where the reference is its dataset
    data: Any
    index: np.ndarray
    same_classes: bool  # the reference's classes are the model's (a conditional model on its own dataset)

    @property
    def images(self) -> np.ndarray:
        return self.data.images.numpy()[self.index]


def _check_request(source: Any, s: FidSettings) -> None:
    if s.per_class:
        from genlab.eval.class_fidelity import require_conditional

        require_conditional(source, "--per-class")
        if s.of == "samples" and s.n < 2 * source.num_classes:
            raise GenlabError(
                f"--per-class needs at least 2 samples of each of the {source.num_classes} classes: "
                f"--n {2 * source.num_classes} or more, got {s.n}"
            )
    if s.of == "reconstructions" and not source.has_encoder:
        raise GenlabError(f"--of reconstructions needs an encoder; a {source.family} model has none (use --of samples)")


def _reference(source: Any, s: FidSettings) -> _Reference:
    from genlab.data import load_split

    dataset, split = parse_reference(s.ref, source.dataset, s.split)
    channels, height, _ = source.image_shape
    condition_on = source.condition_on if dataset == source.dataset else None
    data = load_split(dataset, split, s.data_dir, image_size=height, channels=channels, condition_on=condition_on)
    same_classes = source.conditional and list(data.class_names) == source.class_names
    if s.per_class and not same_classes:
        raise GenlabError(
            f"--per-class compares each class with the same class of the reference, and {dataset}:{split} has "
            f"other classes ({', '.join(data.class_names)}) than the model ({', '.join(source.class_names)})"
        )
    return _Reference(dataset, split, condition_on, data, reference_subset(len(data), s.n), same_classes)


def fid_from_settings(s: FidSettings) -> dict[str, Any]:
    from genlab.eval.class_fidelity import images_to_class_fidelity
    from genlab.eval.extractors import resolve_extractor
    from genlab.eval.model_source import open_model

    from genlab.cache import cache_dir

    source = open_model(s.model, s.device)
    _check_request(source, s)
    ref = _reference(source, s)
    reference = ref.images
    fx = resolve_extractor(
        s.extractor, ref.dataset, source.image_shape, s.data_dir, s.inception_weights, condition_on=ref.condition_on
    )
    cache = reference_cache_name(
        ref.dataset, ref.split, source.image_shape, fx.name, fx.weights_identity, len(reference)
    )
    cached = any(p.name.startswith(f"{cache}-") for p in cache_dir("fid-reference").iterdir())
    cuda = resolve_device(s.device).type == "cuda"  # feature extraction on the model's device

    times = [time.perf_counter()]
    if s.of == "samples":
        images, labels = source.sample_labelled(s.n, s.seed, batch_size=s.batch_size)
    else:  # through each image's own label where the reference has the model's classes (else its best class)
        labels = ref.data.labels.numpy()[ref.index] if ref.same_classes else None
        images = source.reconstruct(reference, labels=labels, batch_size=s.batch_size)
    times.append(time.perf_counter())
    values = images_to_metrics(images, reference, fx, s.metrics, s.batch_size, cuda, s.seed, cache, s.progress)
    times.append(time.perf_counter())
    per_class = None
    if s.per_class:

        def class_cache(name: str, n_reference: int) -> str:
            return reference_cache_name(
                ref.dataset,
                ref.split,
                source.image_shape,
                fx.name,
                fx.weights_identity,
                n_reference,
                class_name=name,
                condition_on=ref.condition_on,
            )

        per_class = per_class_metrics(images, labels, ref.data, source.class_names, fx, s, cuda, class_cache)
    fidelity = {}
    if source.conditional and s.of == "samples":
        fidelity = images_to_class_fidelity(images, labels, source, s.data_dir)
    times.append(time.perf_counter())
    run = {
        "values": values,
        "per_class": per_class,
        **fidelity,
        "reference_cache": cache,
        "reference_cached": cached,
        "device": "cuda" if cuda else "cpu",
    }
    return _record(source, s, ref, fx, len(images), run, times)


def _record(
    source: Any, s: FidSettings, ref: _Reference, fx: Any, n_images: int, run: dict[str, Any], times: list[float]
) -> dict[str, Any]:
    """The saved result: the figures and everything they depend on."""
    import torch_fidelity

    from genlab import __version__

    started, generated, pooled, finished = times
    n_reference = len(ref.index)
    reference = f"{ref.dataset}:{ref.split}"
    balanced = source.num_classes if s.of == "samples" else 0
    kid = "kid" in s.metrics
    return {
        "evaluation": "fid",
        "values": run["values"],
        "label": fx.label,
        "settings": settings_line(fx, n_images, s.seed, reference, n_reference, s.of, source.image_shape, balanced),
        "model": source.path,
        "kind": source.kind,
        "family": source.family,
        "dataset": source.dataset,
        "of": s.of,
        "n": n_images,
        "seed": s.seed,
        "reference": reference,
        "reference_dataset": ref.dataset,
        "reference_split": ref.split,
        "reference_condition_on": ref.condition_on,
        "conditional": source.conditional,
        "class_names": list(source.class_names) if source.conditional else None,
        **{k: v for k, v in run.items() if k not in ("values", "reference_cache", "reference_cached", "device")},
        "n_reference": n_reference,
        "reference_subset_seed": REFERENCE_SUBSET_SEED if n_reference < len(ref.data) else None,
        "image_shape": list(source.image_shape),
        "metrics": list(s.metrics),
        "extractor": fx.choice,
        "feature_extractor": fx.name,
        "feature_layer": fx.feature_layer,
        "weights_source": fx.weights_source,
        "weights_identity": fx.weights_identity,
        "weights_path": fx.weights_path,
        "kid_subsets": KID_SUBSETS if kid else None,
        "kid_subset_size": kid_subset_size(n_images, n_reference) if kid else None,
        "batch_size": s.batch_size,
        "device": run["device"],
        "reference_cache": run["reference_cache"],
        "reference_cached": run["reference_cached"],
        "generate_seconds": round(generated - started, 3),
        "seconds": round(finished - started, 3),
        "images_per_s": round(n_images / max(pooled - started, 1e-9), 2),  # generated and measured, pooled
        "model_info": source.info,
        "genlab_version": __version__,
        "torch_fidelity_version": torch_fidelity.__version__,
    }


def settings_line(
    fx, n: int, seed: int, reference: str, n_reference: int, of: str, image_shape, balanced_classes: int = 0
) -> str:
    """Everything a number depends on, in one line: goes next to every number shown (``balanced_classes``: a
    conditional model's samples, drawn for that many classes equally often)."""
    channels, height, width = image_shape
    labels = f" balanced over {balanced_classes} classes" if balanced_classes else ""
    # no metric name here: one line serves the FID, KID and PRC columns alike
    return (
        f"extractor {fx.name} "
        f"(weights {fx.weights_identity}); {of} n={n} seed={seed}{labels} vs {reference} n={n_reference}; "
        f"{height}x{width}x{channels}"
    )


def metric_keys(values: dict[str, float]) -> list[str]:
    """The metrics of a values dict, without their ``_std`` companions."""
    return [key for key in values if not key.endswith("_std")]


def values_text(values: dict[str, float]) -> str:
    """'fid 12.3, kid 0.01 ± 0.002'."""
    parts = []
    for key in metric_keys(values):
        std = values.get(f"{key}_std")
        parts.append(f"{key} {values[key]:.4g}" + (f" ± {std:.2g}" if std is not None else ""))
    return ", ".join(parts)


def per_class_text(per_class: dict[str, dict[str, Any]]) -> str:
    """'per class fid: 0 20.1, 1 15.2, ...; per class kid: ...': each class's numbers, named."""
    keys = metric_keys(next(iter(per_class.values()))["values"]) if per_class else []
    return "; ".join(
        f"per class {key}: " + ", ".join(f"{name} {row['values'][key]:.4g}" for name, row in per_class.items())
        for key in keys
    )


def summary_line(result: dict[str, Any]) -> str:
    """One line: the numbers (per class and class fidelity, for a conditional model) and their settings."""
    from genlab.eval.class_fidelity import fidelity_text

    parts = [values_text(result["values"])]
    if result.get("per_class"):
        parts.append(per_class_text(result["per_class"]))
    if result.get("class_fidelity") is not None:
        parts.append(fidelity_text(result))
    return (
        f"{'; '.join(parts)}  [{result['settings']}; {result['kind']} {result['family']}; "
        f"{result['images_per_s']:.1f} img/s{' (reference cached)' if result['reference_cached'] else ''}]"
    )


def result_name(result: dict[str, Any]) -> str:
    """The file name a result is saved under in RUN_DIR/eval/."""
    per_class = "-per-class" if result.get("per_class") else ""
    return f"fid-{result['extractor']}-{result['reference']}-{result['of']}-n{result['n']}{per_class}"
