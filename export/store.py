"""Export directories in BentoML's model store: save one (``genlab export --bento``) and list them.

A stored model is a copy of the export directory, verified against its manifest before it is
copied, with the whole manifest as the model's metadata and labels for family and dataset, so
``bentoml models list`` and a bento's model references describe it without opening files.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from genlab.export.reader import open_export, read_manifest

from genlab.errors import GenlabError

LABEL = "genlab-export"  # label that marks the store entries genlab wrote
LOADER = open_export.__module__  # the module that opens a stored export (BentoML records it as the model's module)
_TAG_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


def _bentoml():
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics calls from this machine
    import bentoml

    return bentoml


def _label(value: Any) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", str(value).lower()).strip("-._")[:63] or "none"


def _metadata(value: Any) -> Any:
    """The manifest as BentoML metadata, which takes no None: such entries are left out."""
    if isinstance(value, dict):
        return {str(k): _metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_metadata(v) for v in value if v is not None]
    return value


def check_name(name: str) -> str:
    """``name`` if BentoML accepts it as a model name, else a GenlabError (checked before any work is done)."""
    if not _TAG_NAME.fullmatch(name):
        raise GenlabError(
            f"--bento {name!r} is not a valid BentoML model name "
            "(at most 63 lowercase letters, digits, '.', '_', '-', starting and ending with a letter or digit)"
        )
    return name


def save_to_store(export_dir: str | os.PathLike, name: str) -> str:
    """Copy a verified export directory into the store as ``name``; returns the new tag."""
    check_name(name)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    bentoml = _bentoml()
    labels = {
        LABEL: str(manifest["format_version"]),
        "family": manifest["family"],
        "dataset": _label(manifest["dataset"]["dataset"]),
    }
    try:
        with bentoml.models.create(name, labels=labels, metadata=_metadata(manifest), module=LOADER) as model:
            for file in [*manifest["files"], "manifest.json"]:
                shutil.copy2(export_dir / file, model.path_of(file))
    except (OSError, ValueError, bentoml.exceptions.BentoMLException) as err:
        raise GenlabError(
            f"could not save {export_dir} into the BentoML model store: {str(err).splitlines()[0]}"
        ) from None
    return str(model.tag)


def list_models() -> list[dict[str, Any]]:
    """Every genlab export in the store, newest first."""
    bentoml = _bentoml()
    rows = []
    for model in bentoml.models.list():
        labels = model.info.labels
        if LABEL not in labels:
            continue
        meta = model.info.metadata
        rows.append(
            {
                "tag": str(model.tag),
                "family": labels.get("family"),
                "dataset": labels.get("dataset"),
                "latent_dim": meta.get("latent", {}).get("dim"),
                "image": meta.get("image"),
                "created": model.info.creation_time.isoformat(timespec="seconds"),
                "path": model.path,
            }
        )
    return sorted(rows, key=lambda r: r["created"], reverse=True)
