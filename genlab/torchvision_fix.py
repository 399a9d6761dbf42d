"""Make ``import torchvision`` work with the CPU torch wheel.

The registry's torchvision wheel is built against CUDA torch; with the CPU torch wheel its
``_C`` extension cannot load and ``torchvision/_meta_registrations.py`` fails at import time
with ``operator torchvision::nms does not exist``. Declaring the two op schemas it registers
fake kernels for (only when the extension is missing) lets torchvision import; transforms,
datasets, ``utils`` and ``models`` then work, while the detection ops themselves stay
unavailable (genlab never calls them).

Every module that imports torchvision, or a package that does (torch-fidelity), calls
:func:`import_torchvision` first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the op definitions alive for the life of the process


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = list(spec.submodule_search_locations)[0]
    for name in os.listdir(folder):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring its missing op schemas first if its extension cannot load."""
    global _library
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    import torch

    if _library is None and not _extension_loads():
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            _library.define(schema)
    import torchvision

    return torchvision
