"""Where computation runs: ``--device auto | cpu | cuda | cuda:N``, checked and resolved in one place.

:func:`check_device` is torch-free (configs validate with it); :func:`resolve_device` gives the
torch device (``auto`` = the GPU when torch sees one) and :func:`onnx_providers` the matching
ONNX Runtime preference for an exported model.
"""

from __future__ import annotations

import re
from typing import Any

from genlab.errors import GenlabError

DEVICE_HELP = "auto (default: the GPU when there is one), cpu, cuda or cuda:N"
_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(preference: str) -> str:
    """``preference`` if it names a device genlab can use, else a GenlabError."""
    if not isinstance(preference, str) or not _PATTERN.fullmatch(preference):
        raise GenlabError(f"device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    return preference


def resolve_device(preference: str = "auto", local_rank: int = 0) -> Any:
    """``preference`` -> ``torch.device``; ``cuda`` without a GPU is a GenlabError, not a crash later."""
    import torch

    check_device(preference)
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenlabError("--device cuda was asked for, but torch sees no CUDA device (CPU build or no GPU)")
        return torch.device(preference if ":" in preference else f"cuda:{local_rank}")
    return torch.device("cpu")


def onnx_providers(preference: str = "auto") -> str | None:
    """``preference`` -> the provider choice of :func:`export.reader.choose_providers` (None = its default, auto)."""
    check_device(preference)
    return None if preference == "auto" else preference.split(":")[0]
