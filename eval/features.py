"""uint8 images -> extractor features -> FID / KID / precision-recall, in that order.

Features are taken batch by batch (so a caller can shard the images, report progress and stop
between batches); the metrics are torch-fidelity's own functions over the gathered features
(``fid_features_to_statistics`` / ``fid_statistics_to_metric``, ``kid_features_to_metric``,
``prc_features_to_metric``), so the numbers are torch-fidelity's whatever did the extracting.
A reference split's features are cached as a ``.npy`` file named by every choice that changes
them (:func:`genlab.eval.fid.reference_cache_name`), written atomically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OnBatch = Callable[[int], None]  # called with the number of images a batch held, after the batch


@functools.cache
def feature_network(name: str, layer: str, weights_path: str, device: str) -> Any:
    """torch-fidelity's extractor ``name`` giving ``layer``, in eval mode on ``device`` (made once per process)."""
    import torch

    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.utils import create_feature_extractor

    net = create_feature_extractor(
        name, [layer], cuda=False, feature_extractor_weights_path=weights_path, verbose=False
    )
    return net.to(torch.device(device))


def images_to_features(
    images: np.ndarray, fx: Any, batch_size: int, device: str = "cpu", on_batch: OnBatch | None = None
) -> np.ndarray:
    """uint8 [N, C, H, W] (grey replicated to 3 channels) -> float32 [N, D] features of ``fx``'s layer."""
    import torch

    net = feature_network(fx.name, fx.feature_layer, fx.weights_path, device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            (features,) = net(batch)
            parts.append(features.float().cpu().numpy())
            if on_batch is not None:
                on_batch(len(batch))
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def kid_subset_mmds(f1: np.ndarray, f2: np.ndarray, subsets: int, size: int, seed: int, part: slice) -> list[float]:
    """torch-fidelity's KID subsets (its RandomState draws, set 1 then set 2 per subset, replayed in full) and the
    MMD of those in ``part``: the subsets can be split over processes and still be torch-fidelity's."""
    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.metric_kid import kernel_mmd

    rng = np.random.RandomState(seed)
    chosen = range(subsets)[part]
    mmds = []
    for i in range(subsets):
        a = rng.choice(len(f1), size, replace=False)
        b = rng.choice(len(f2), size, replace=False)
        if i in chosen:
            mmds.append(float(kernel_mmd(f1[a], f2[b])))
    return mmds


def features_to_metrics(
    f1: np.ndarray, f2: np.ndarray, fx: Any, metrics: tuple[str, ...], kid_mmds: list[float] | None = None
) -> dict[str, float]:
    """Generated and reference features -> {our metric key: value}: FID and precision / recall by torch-fidelity's
    functions, KID as the mean and standard deviation of ``kid_mmds`` (:func:`kid_subset_mmds`, all subsets)."""
    import torch

    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    t1, t2 = torch.from_numpy(np.ascontiguousarray(f1)), torch.from_numpy(np.ascontiguousarray(f2))
    raw: dict[str, Any] = {}
    if "fid" in metrics:
        raw.update(fid_statistics_to_metric(fid_features_to_statistics(t1), fid_features_to_statistics(t2), False))
    if "kid" in metrics and kid_mmds:
        raw["kernel_inception_distance_mean"] = float(np.mean(kid_mmds))
        raw["kernel_inception_distance_std"] = float(np.std(kid_mmds))
    if "prc" in metrics:
        raw.update(
            prc_features_to_metric(t1, t2, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=True, verbose=False)
        )
    return {fx.metric_key(key): float(value) for key, value in raw.items()}


def cached_features_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}-features.npy"


def load_cached_features(path: Path) -> np.ndarray | None:
    """The cached features at ``path``, or None (absent or unreadable: recomputed and rewritten)."""
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def save_cached_features(path: Path, features: np.ndarray) -> None:
    from genlab.files import atomic_write

    atomic_write(path, lambda f: np.save(f, features, allow_pickle=False))
