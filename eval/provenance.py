"""What a result measured, in a form a later comparison can check: the ``provenance`` of every result.

``model``: the model's content hash (:attr:`ModelSource.content`: a checkpoint's sha256, or an
export's graph-file hashes and source-checkpoint hash as its manifest states them, also for a
served model); ``reference``: dataset, split, N and the cache key of its features; ``extractor``:
name, layer and the sha256 of its weights file; N, seed; the versions of genlab, torch,
onnxruntime and torch-fidelity; the device and the number of processes; the wall time.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from typing import Any

PACKAGES = {
    "genlab": ("genlab",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch_fidelity": ("torch-fidelity",),
    "numpy": ("numpy",),
}


def _version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def versions() -> dict[str, str | None]:
    """The installed versions of what the numbers depend on (None: not installed)."""
    return {"python": platform.python_version(), **{key: _version(names) for key, names in PACKAGES.items()}}


@functools.cache
def weights_sha256(path: str) -> str:
    from genlab.files import file_sha256

    return file_sha256(path)


def extractor_provenance(fx: Any) -> dict[str, Any]:
    return {
        "choice": fx.choice,
        "name": fx.name,
        "layer": fx.feature_layer,
        "weights_source": fx.weights_source,
        "weights_identity": fx.weights_identity,
        "weights_sha256": weights_sha256(fx.weights_path),
    }


def provenance(
    source: Any,
    n: int,
    seed: int | None,
    device: str,
    wall_s: float,
    reference: dict[str, Any] | None = None,
    extractor: Any = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The provenance block of a result (see the module docstring)."""
    return {
        "model": dict(source.content),
        "reference": reference,
        "extractor": None if extractor is None else extractor_provenance(extractor),
        "n": n,
        "seed": seed,
        "versions": versions(),
        "device": device,
        "processes": world_size,
        "wall_s": round(wall_s, 3),
    }
