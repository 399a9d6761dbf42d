"""What a server shows holds no path of the machine that trained the model: a VAE trained on an image folder,
exported, and served in-process; every string of `GET /models` (and of the manifest on disk) is searched for rooted
paths and for the name of the folder that holds the training images."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genlab.checkpoint import load_checkpoint
from genlab.data import dataset_hash
from tests.conftest import bentoml_test_client
from tests.shared_models import train_tiny

PARENT = "alice-private-parts"  # the folder that holds the training folder: nothing shown may name it
# a path from the root: at the start of a string or after a space, a ':', '=', a quote or a bracket
ROOTED = re.compile(rf"(?:^|[\s:=\"'(\[]){re.escape(os.sep)}[^\s{re.escape(os.sep)}]")


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def paths_in(value: Any, parent: Path) -> list[str]:
    """The strings of ``value`` that hold a rooted path, the training folder's parent or its name."""
    return [s for s in strings(value) if ROOTED.search(s) or os.path.isabs(s) or str(parent) in s or PARENT in s]


@pytest.fixture(scope="module")
def folder_export(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(image folder, run directory, export directory) of a tiny VAE trained for one epoch on 24 generated 16x16
    grey PNGs in two class subfolders."""
    from genlab.export.onnx_export import export_checkpoint

    base = tmp_path_factory.mktemp("no-paths")
    folder = base / PARENT / "images"
    rng = np.random.default_rng(0)
    for i in range(24):
        (folder / ("round" if i % 2 else "square")).mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(image, "L").save(folder / ("round" if i % 2 else "square") / f"{i}.png")
    run = train_tiny(
        base / "run",
        "vae",
        {"image_size": 16, "channels": 1},
        dataset=f"folder:{folder}",
        batch_size=4,
        epochs=1,
        sample_count=4,
    )
    out = base / "export"
    export_checkpoint(run, out)
    return folder, run, out


def test_the_checkpoint_keeps_the_path_and_the_manifest_names_the_folder(folder_export):
    folder, run, out = folder_export
    ckpt = load_checkpoint(run / "last.pt")
    content = dataset_hash(f"folder:{folder}")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", content)
    # the checkpoint is the user's own file: resume and eval read the data from the path it keeps
    assert ckpt["train_config"]["dataset"] == ckpt["data"]["dataset"] == f"folder:{folder}"
    assert ckpt["data"]["dataset_hash"] == content
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["dataset"] == manifest["training"]["train_config"]["dataset"] == "folder:images"
    assert manifest["dataset"]["dataset_hash"] == content and manifest["dataset"]["class_names"] == ["round", "square"]
    assert manifest["name"] == "genlab-vae-images" and manifest["source"]["checkpoint"] in ("last.pt", "best.pt")
    assert paths_in(manifest, folder.parent) == []


def test_models_holds_no_absolute_path(folder_export):
    from genlab.service.service import build_service
    from genlab.service.settings import Settings

    folder, _, out = folder_export
    with bentoml_test_client(build_service(Settings(models=(str(out),)))) as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    (row,) = response.json()
    assert row["manifest"]["dataset"]["dataset"] == "folder:images"
    assert row["manifest"]["dataset"]["dataset_hash"] == dataset_hash(f"folder:{folder}")
    assert paths_in(response.json(), folder.parent) == []
    assert str(folder.parent) not in response.text and PARENT not in response.text
