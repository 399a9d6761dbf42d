"""The image flavours, cpu and gpu, both from the one bentofile.yaml:

    python deploy/flavour.py cpu|gpu BASE_IMAGE OUT_BENTOFILE        (scripts/containerize.sh runs it)

``cpu`` is bentofile.yaml as it stands (onnxruntime); ``gpu`` installs onnxruntime-gpu with its CUDA and cuDNN wheels
in its place, within the same version range. Both get the base image to build on and a ``flavour`` label.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

FLAVOURS = ("cpu", "gpu")
GPU_RUNTIME = "onnxruntime-gpu[cuda,cudnn]"
_CPU_RUNTIME = re.compile(r"^onnxruntime(?=[<>=!~ ;]|$)")  # the name alone, not onnxruntime-gpu or another


def flavour_bentofile(config: dict[str, Any], flavour: str, base_image: str) -> dict[str, Any]:
    """bentofile.yaml's ``config`` -> the one that builds ``flavour`` on ``base_image`` (``config`` is not changed)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; use one of {', '.join(FLAVOURS)}")
    packages = list(config["python"]["packages"])
    if not any(_CPU_RUNTIME.match(p) for p in packages):
        raise ValueError("bentofile.yaml's python.packages has no onnxruntime entry")
    if flavour == "gpu":
        packages = [_CPU_RUNTIME.sub(GPU_RUNTIME, p) for p in packages]
    docker = {k: v for k, v in config.get("docker", {}).items() if k not in ("distro", "python_version")}
    return {
        **config,
        "labels": {**config.get("labels", {}), "flavour": flavour},
        "python": {**config["python"], "packages": packages},
        "docker": {**docker, "base_image": base_image},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in FLAVOURS:
        print("usage: python deploy/flavour.py cpu|gpu BASE_IMAGE OUT_BENTOFILE", file=sys.stderr)
        return 2
    flavour, base_image, out = argv
    config = yaml.safe_load(Path("bentofile.yaml").read_text())
    Path(out).write_text(yaml.safe_dump(flavour_bentofile(config, flavour, base_image), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
