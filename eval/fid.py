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
from genlab.eval.features import (
    cached_features_path,
    features_to_metrics,
    images_to_features,
    kid_subset_mmds,
    load_cached_features,
    save_cached_features,
)
from genlab.eval.progress import Progress, Report
from genlab.eval.sharding import Shards, sharded, single

from genlab.errors import GenlabError

METRICS = ("fid", "kid", "prc")
OF_CHOICES = ("samples", "reconstructions")
REFERENCE_SUBSET_SEED = 20240601  # fixed: the reference subset never depends on --seed
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
BOOTSTRAP_ROUNDS = 20


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
    bootstrap: int = BOOTSTRAP_ROUNDS  # rounds of the FID bootstrap interval (0: none)
    served_model: str | None = None  # MODEL is http://HOST:PORT: the name of the served model (default: its default)
    prior_from: str | None = None  # MODEL is http://HOST:PORT: a copy of the served export, for its prior's numbers

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise GenlabError(f"--bootstrap must be >= 0, got {self.bootstrap}")
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


def cached_reference(cache: str | None, shards: Shards) -> np.ndarray | None:
    """The cached features of a reference, on every rank, or None (rank 0 decides: the file is there and reads)."""
    from genlab.cache import cache_dir

    if cache is None:
        return None
    path = cached_features_path(cache_dir("fid-reference"), cache)
    found = load_cached_features(path) if shards.is_main else None
    if not shards.agree(found is not None):
        return None
    return found if found is not None else load_cached_features(path)


def extract_reference(
    images: np.ndarray, fx: Any, cache: str | None, batch_size: int, shards: Shards, progress: Progress | None = None
) -> np.ndarray:
    """The features of a reference's images, split over the ranks by index; rank 0 caches them under ``cache``."""
    from genlab.cache import cache_dir

    part = images_to_features(images[shards.slice(len(images))], fx, batch_size, shards.device, progress)
    features = shards.gather(part)
    if cache is not None and shards.is_main:
        save_cached_features(cached_features_path(cache_dir("fid-reference"), cache), features)
    return features


def metrics_of_features(
    f1: np.ndarray, f2: np.ndarray, fx: Any, metrics: tuple[str, ...], seed: int, shards: Shards
) -> dict[str, float]:
    """Generated and reference features -> {metric key: value} on rank 0 ({} elsewhere); the KID subsets are split
    over the ranks."""
    size = kid_subset_size(len(f1), len(f2))
    mmds = None
    if "kid" in metrics:
        mmds = shards.gather_list(kid_subset_mmds(f1, f2, KID_SUBSETS, size, seed, shards.slice(KID_SUBSETS)))
    if not shards.is_main:
        return {}
    values = features_to_metrics(f1, f2, fx, metrics, mmds)
    if size >= max(len(f1), len(f2)):
        # every KID subset is both whole sets: the spread across subsets is float noise, not an error bar
        values.pop(fx.metric_key("kernel_inception_distance_std"), None)
    return values


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
    """Two uint8 image sets -> {our metric key: value}, in this process (the reference's features cached under
    ``reference_cache`` unless None)."""
    shards = single("cuda" if cuda else "cpu")
    f1 = images_to_features(images, extractor, batch_size, shards.device)
    f2 = cached_reference(reference_cache, shards)
    if f2 is None:
        f2 = extract_reference(reference, extractor, reference_cache, batch_size, shards)
    return metrics_of_features(f1, f2, extractor, metrics, seed, shards)


def fid_interval(features: np.ndarray, reference: np.ndarray, rounds: int, seed: int, shards: Shards) -> Any:
    """The bootstrap interval of the Fréchet distance (:mod:`genlab.eval.small_n`), its rounds split over the ranks;
    None without rounds."""
    from genlab.eval.small_n import bootstrap_rounds, interval, reference_statistics

    if rounds == 0 or len(features) < 2:
        return None
    mine = list(range(rounds))[shards.slice(rounds)]
    distances = bootstrap_rounds(features, reference_statistics(reference), mine, seed) if mine else []
    return interval(shards.gather_list(distances))


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
    bootstrap: int = BOOTSTRAP_ROUNDS,
    served_model: str | None = None,
    prior_from: str | None = None,
    on_progress: Report | None = None,
) -> dict[str, Any] | None:
    """FID (and KID / precision-recall) of MODEL's samples or reconstructions against a reference split; ``per_class``
    (conditional models): also per class, against that class's reference images. Under torchrun, every rank
    computes its share and rank 0 alone gets the result (the others None)."""
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
        bootstrap=int(bootstrap),
        served_model=served_model,
        prior_from=prior_from,
    )
    return fid_from_settings(settings, on_progress)


def class_reference(reference_data: Any, k: int, n_generated: int) -> np.ndarray:
    """The reference images of class k: all of them, or a fixed seeded subset the size of its generated images."""
    of_class = reference_data.images.numpy()[reference_data.labels.numpy() == k]
    return of_class[reference_subset(len(of_class), n_generated)]


def per_class_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    reference_data: Any,
    class_names: list[str],
    fx: Any,
    s: FidSettings,
    device: str,
    reference_cache: Any,
) -> dict[str, dict[str, Any]]:
    """{class name: {values, n, n_reference}}: each class's generated images (their ``features``) against its own
    reference images, in this process. ``reference_cache(name, n_reference)`` names a class reference's features."""
    shards = single(device)
    out = {}
    for k, name in enumerate(class_names):
        generated = features[labels == k]
        reference = class_reference(reference_data, k, len(generated))
        if min(len(generated), len(reference)) < 2:
            raise GenlabError(
                f"per-class metrics need at least 2 images of each class: class {name!r} has {len(generated)} "
                f"generated and {len(reference)} reference images (raise --n to at least {2 * len(class_names)})"
            )
        cache = reference_cache(name, len(reference))
        reference_features = cached_reference(cache, shards)
        if reference_features is None:
            reference_features = extract_reference(reference, fx, cache, s.batch_size, shards)
        values = metrics_of_features(generated, reference_features, fx, s.metrics, s.seed, shards)
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


def fid_from_settings(s: FidSettings, on_progress: Report | None = None) -> dict[str, Any] | None:
    """The result on rank 0 (and without torchrun); None on the other ranks, which only did their share."""
    with sharded(s.device) as shards:
        return _evaluate(s, shards, on_progress)


def _generated_part(source: Any, ref: _Reference, s: FidSettings, shards: Shards, progress: Progress) -> tuple:
    """(this rank's share of the generated images, the labels of all of them or None)."""
    if s.of == "samples":
        part = shards.slice(s.n)
        return source.sample_labelled(s.n, s.seed, batch_size=s.batch_size, part=part, on_batch=progress)
    # through each image's own label where the reference has the model's classes (else its best class)
    labels = ref.data.labels.numpy()[ref.index] if ref.same_classes else None
    part = shards.slice(len(ref.index))
    mine = None if labels is None else labels[part]
    images = source.reconstruct(ref.images[part], labels=mine, batch_size=s.batch_size)
    progress(len(images))
    return images, labels


def _evaluate(s: FidSettings, shards: Shards, on_progress: Report | None) -> dict[str, Any] | None:
    from genlab.eval.class_fidelity import images_to_class_fidelity
    from genlab.eval.extractors import resolve_extractor
    from genlab.eval.model_source import open_model

    started = time.perf_counter()
    source = open_model(s.model, shards.device, s.served_model, s.prior_from)
    _check_request(source, s)
    ref = _reference(source, s)
    fx = shards.main_first(
        lambda: resolve_extractor(
            s.extractor, ref.dataset, source.image_shape, s.data_dir, s.inception_weights, condition_on=ref.condition_on
        )
    )
    n_reference = len(ref.index)
    cache = reference_cache_name(ref.dataset, ref.split, source.image_shape, fx.name, fx.weights_identity, n_reference)
    reference = cached_reference(cache, shards)
    n_generated = s.n if s.of == "samples" else len(ref.index)
    total = 2 * n_generated + (len(ref.index) if reference is None else 0)
    progress = Progress(total, on_progress, bar=s.progress and shards.is_main, scale=shards.world_size)
    cached = reference is not None
    if reference is None:
        reference = extract_reference(ref.images, fx, cache, s.batch_size, shards, progress)
    part, labels = _generated_part(source, ref, s, shards, progress)
    generated_at = time.perf_counter()
    features = shards.gather(images_to_features(part, fx, s.batch_size, shards.device, progress))
    progress.close()
    values = metrics_of_features(features, reference, fx, s.metrics, s.seed, shards)
    spread = fid_interval(features, reference, s.bootstrap, s.seed, shards) if "fid" in s.metrics else None
    images = shards.gather(part) if source.conditional and s.of == "samples" else part
    if not shards.is_main:
        return None
    pooled_at = time.perf_counter()
    per_class = None
    if s.per_class:
        per_class = per_class_metrics(
            features, labels, ref.data, source.class_names, fx, s, shards.device, _class_cache(source, ref, fx)
        )
    conditional_samples = source.conditional and s.of == "samples"
    fidelity = images_to_class_fidelity(images, labels, source, s.data_dir) if conditional_samples else {}
    run = {"values": values, "per_class": per_class, **fidelity, "reference_cache": cache, "reference_cached": cached}
    run["interval"] = spread
    run["feature_dim"] = int(features.shape[1])
    times = [started, generated_at, pooled_at, time.perf_counter()]
    return _record(source, s, ref, fx, len(features), run, times, shards)


def _class_cache(source: Any, ref: _Reference, fx: Any) -> Any:
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

    return class_cache


def _record(
    source: Any,
    s: FidSettings,
    ref: _Reference,
    fx: Any,
    n_images: int,
    run: dict[str, Any],
    times: list[float],
    shards: Shards,
) -> dict[str, Any]:
    """The saved result: the figures, their uncertainty, and everything they depend on."""
    from genlab.eval.provenance import provenance, versions

    started, generated, pooled, finished = times
    n_reference, reference, kid = len(ref.index), f"{ref.dataset}:{ref.split}", "kid" in s.metrics
    line = settings_line(
        fx, n_images, s.seed, reference, n_reference, s.of, source.image_shape, source.num_classes * (s.of == "samples")
    )
    block = {"dataset": ref.dataset, "split": ref.split, "n": n_reference, "cache_key": run["reference_cache"]}
    device = shards.device.split(":")[0]  # of the features (and of a checkpoint's model)
    return {
        "evaluation": "fid",
        "values": run["values"],
        **_uncertainty(fx, s, n_images, len(ref.data), reference, run),
        "label": fx.label,
        "settings": line + (f"; served by {source.url}" if source.kind == "http" else ""),
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
        **{k: v for k, v in run.items() if k not in _RUN_ONLY},
        "n_reference": n_reference,
        "reference_subset_seed": REFERENCE_SUBSET_SEED if n_reference < len(ref.data) else None,
        "image_shape": list(source.image_shape),
        "metrics": list(s.metrics),
        **_extractor_fields(fx),
        "kid_subsets": KID_SUBSETS if kid else None,
        "kid_subset_size": kid_subset_size(n_images, n_reference) if kid else None,
        "batch_size": s.batch_size,
        "device": device,
        "processes": shards.world_size,
        "reference_cache": run["reference_cache"],
        "reference_cached": run["reference_cached"],
        "generate_seconds": round(generated - started, 3),
        "seconds": round(finished - started, 3),
        "images_per_s": round(n_images / max(pooled - started, 1e-9), 2),  # generated and measured, pooled
        "model_info": source.info,
        **{f"{name}_version": versions()[name] for name in ("genlab", "torch_fidelity")},
        "provenance": provenance(source, n_images, s.seed, device, finished - started, block, fx, shards.world_size),
    }


def _uncertainty(
    fx: Any, s: FidSettings, n_images: int, reference_size: int, reference: str, run: dict[str, Any]
) -> dict[str, Any]:
    """The Fréchet distance's bootstrap interval and, at small N (of samples, or of the whole reference split of
    ``reference_size`` images), the warnings about its bias."""
    from genlab.eval.small_n import bias_warning, reference_warning

    warnings = []
    if "fid" in s.metrics:
        dim = run["feature_dim"]
        warnings = [bias_warning(n_images, dim, fx.label), reference_warning(reference_size, dim, fx.label, reference)]
    fid_key = fx.metric_key("frechet_inception_distance")
    return {
        "intervals": {fid_key: run["interval"]} if run["interval"] else {},
        "warnings": [warning for warning in warnings if warning],
    }


def _extractor_fields(fx: Any) -> dict[str, Any]:
    return {
        "extractor": fx.choice,
        "feature_extractor": fx.name,
        "feature_layer": fx.feature_layer,
        "weights_source": fx.weights_source,
        "weights_identity": fx.weights_identity,
        "weights_path": fx.weights_path,
    }


_RUN_ONLY = ("values", "reference_cache", "reference_cached", "interval", "feature_dim")


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


def values_text(
    values: dict[str, float], intervals: dict[str, Any] | None = None, kid_subset_size: int | None = None
) -> str:
    """'fid 12.3 (95% bootstrap 11.9-13.1), kid 0.01 ± 0.002 (100 subsets of 500)'."""
    parts = []
    for key in metric_keys(values):
        std = values.get(f"{key}_std")
        text = f"{key} {values[key]:.4g}" + (f" ± {std:.2g}" if std is not None else "")
        band = (intervals or {}).get(key)
        if band:
            text += f" (95% bootstrap {band['low']:.4g}-{band['high']:.4g})"
        if kid_subset_size and key.endswith(("kid", "kd")):
            text += f" ({KID_SUBSETS} subsets of {kid_subset_size})"
        parts.append(text)
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

    parts = [values_text(result["values"], result.get("intervals"), result.get("kid_subset_size"))]
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
    served = "-served" if result.get("kind") == "http" else ""
    return f"fid-{result['extractor']}-{result['reference']}-{result['of']}-n{result['n']}{per_class}{served}"
