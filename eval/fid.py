"""FID / KID / precision-recall of a model against a dataset split, through torch-fidelity.

The Fréchet distance, KID and precision/recall are torch-fidelity's (``calculate_metrics``);
this module only decides what goes in:

- input 1: ``n`` samples of the model from seeded N(0, I) latents (:mod:`eval.model_source`,
  identical for a checkpoint and its export), or, with ``of="reconstructions"``, the model's
  reconstructions of the reference images (encoder models only);
- input 2: the reference split at the model's resolution and channels (all of it, or a fixed
  seeded subset of ``n`` images), whose features and statistics torch-fidelity caches in the
  project cache folder under a name encoding every choice (dataset, split, resolution,
  channels, extractor and its weights, N);
- grey images are replicated to 3 channels; Inception resizes to 299 px with torch-fidelity's
  TF-compatible bilinear path.

The result names every setting next to the numbers, so numbers computed under different
settings are never mistaken for one another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

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
    ref: Optional[str] = None  # DATASET[:split]; default: the model's dataset
    split: str = "test"  # the reference split where ``ref`` names none
    n: int = 1000
    metrics: tuple[str, ...] = ("fid", "kid")
    of: str = "samples"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    extractor: str = "inception"
    inception_weights: Optional[str] = None
    data_dir: str = "data"
    progress: bool = True

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


def parse_reference(ref: Optional[str], default_dataset: str, default_split: str = "test") -> tuple[str, str]:
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


def reference_cache_name(dataset: str, split: str, image_shape: tuple[int, int, int], extractor_name: str,
                         weights_identity: str, n: int) -> str:
    """The cache name of a reference split's features / statistics: one name per set of choices."""
    from genlab.cache import cache_name

    channels, height, width = image_shape
    return cache_name(ref=dataset, split=split, res=f"{height}x{width}", ch=channels, fx=extractor_name,
                      w=weights_identity, n=n, sub=REFERENCE_SUBSET_SEED)


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


def images_to_metrics(images: np.ndarray, reference: np.ndarray, extractor, metrics: tuple[str, ...],
                      batch_size: int, cuda: bool, seed: int, reference_cache: Optional[str],
                      progress: bool = False) -> dict[str, float]:
    """Two uint8 image sets -> {our metric key: value} through torch-fidelity's calculate_metrics."""
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    import torch_fidelity

    from genlab.cache import cache_dir

    kwargs: dict[str, Any] = dict(
        input1=images_to_dataset(images), input2=images_to_dataset(reference), cuda=cuda, batch_size=batch_size,
        fid="fid" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        feature_extractor=extractor.name, feature_extractor_weights_path=extractor.weights_path,
        feature_layer_fid=extractor.feature_layer, feature_layer_kid=extractor.feature_layer,
        feature_layer_prc=extractor.feature_layer,
        kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset_size(len(images), len(reference)),
        rng_seed=seed, save_cpu_ram=True, verbose=progress, samples_shuffle=False,
        cache=reference_cache is not None, cache_root=str(cache_dir("fid-reference")),
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


def compute_fid(model: str, ref: Optional[str] = None, split: str = "test", n: int = 1000, metrics: tuple[str, ...] = ("fid", "kid"),
                of: str = "samples", batch_size: int = 64, device: str = "auto", seed: int = 0,
                extractor: str = "inception", inception_weights: Optional[str] = None, data_dir: str = "data",
                progress: bool = True) -> dict[str, Any]:
    """FID (and KID / precision-recall) of MODEL's samples or reconstructions against a reference split."""
    settings = FidSettings(model=str(model), ref=ref, split=split, n=int(n), metrics=tuple(metrics), of=of, batch_size=int(batch_size),
                           device=device, seed=int(seed), extractor=extractor, inception_weights=inception_weights,
                           data_dir=data_dir, progress=progress)
    return fid_from_settings(settings)


def fid_from_settings(s: FidSettings) -> dict[str, Any]:
    from genlab.data import load_split
    from genlab import __version__

    from genlab.cache import cache_dir
    from eval.extractors import resolve_extractor
    from eval.model_source import open_model

    source = open_model(s.model, s.device)
    if s.of == "reconstructions" and not source.has_encoder:
        raise GenlabError(f"--of reconstructions needs an encoder; a {source.family} model has none (use --of samples)")
    dataset, split = parse_reference(s.ref, source.dataset, s.split)
    channels, height, width = source.image_shape
    reference_data = load_split(dataset, split, s.data_dir, image_size=height, channels=channels)
    index = reference_subset(len(reference_data), s.n)
    reference = reference_data.images.numpy()[index]
    fx = resolve_extractor(s.extractor, dataset, source.image_shape, s.data_dir, s.inception_weights)
    cache = reference_cache_name(dataset, split, source.image_shape, fx.name, fx.weights_identity, len(reference))
    cached = any(p.name.startswith(f"{cache}-") for p in cache_dir("fid-reference").iterdir())
    cuda = resolve_device(s.device).type == "cuda"  # feature extraction on the model's device

    started = time.perf_counter()
    if s.of == "samples":
        images = source.sample(s.n, s.seed, batch_size=s.batch_size)
    else:
        images = source.reconstruct(reference, batch_size=s.batch_size)
    generated = time.perf_counter()
    values = images_to_metrics(images, reference, fx, s.metrics, s.batch_size, cuda, s.seed, cache, s.progress)
    finished = time.perf_counter()

    import torch_fidelity

    n_images = len(images)
    return {
        "evaluation": "fid",
        "values": values,
        "label": fx.label,
        "settings": settings_line(fx, n_images, s.seed, f"{dataset}:{split}", len(reference), s.of, source.image_shape),
        "model": source.path,
        "kind": source.kind,
        "family": source.family,
        "dataset": source.dataset,
        "of": s.of,
        "n": n_images,
        "seed": s.seed,
        "reference": f"{dataset}:{split}",
        "reference_dataset": dataset,
        "reference_split": split,
        "n_reference": len(reference),
        "reference_subset_seed": REFERENCE_SUBSET_SEED if len(reference) < len(reference_data) else None,
        "image_shape": list(source.image_shape),
        "metrics": list(s.metrics),
        "extractor": fx.choice,
        "feature_extractor": fx.name,
        "feature_layer": fx.feature_layer,
        "weights_source": fx.weights_source,
        "weights_identity": fx.weights_identity,
        "weights_path": fx.weights_path,
        "kid_subsets": KID_SUBSETS if "kid" in s.metrics else None,
        "kid_subset_size": kid_subset_size(n_images, len(reference)) if "kid" in s.metrics else None,
        "batch_size": s.batch_size,
        "device": "cuda" if cuda else "cpu",
        "reference_cache": cache,
        "reference_cached": cached,
        "generate_seconds": round(generated - started, 3),
        "seconds": round(finished - started, 3),
        "images_per_s": round(n_images / max(finished - started, 1e-9), 2),
        "model_info": source.info,
        "genlab_version": __version__,
        "torch_fidelity_version": torch_fidelity.__version__,
    }


def settings_line(fx, n: int, seed: int, reference: str, n_reference: int, of: str, image_shape) -> str:
    """Everything a number depends on, in one line: goes next to every number shown."""
    channels, height, width = image_shape
    # no metric name here: one line serves the FID, KID and PRC columns alike
    return (f"extractor {fx.name} "
            f"(weights {fx.weights_identity}); {of} n={n} seed={seed} vs {reference} n={n_reference}; "
            f"{height}x{width}x{channels}")


def summary_line(result: dict[str, Any]) -> str:
    """One line: the numbers and the settings they were computed under."""
    parts = []
    for key, value in result["values"].items():
        if key.endswith("_std"):
            continue
        std = result["values"].get(f"{key}_std")
        parts.append(f"{key} {value:.4g}" + (f" ± {std:.2g}" if std is not None else ""))
    return (f"{', '.join(parts)}  [{result['settings']}; {result['kind']} {result['family']}; "
            f"{result['images_per_s']:.1f} img/s{' (reference cached)' if result['reference_cached'] else ''}]")


def result_name(result: dict[str, Any]) -> str:
    """The file name a result is saved under in RUN_DIR/eval/."""
    return f"fid-{result['extractor']}-{result['reference']}-{result['of']}-n{result['n']}"


