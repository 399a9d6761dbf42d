"""Export directories in BentoML's model store: save one (``genlab export --bento``) and list them.

A stored model is a copy of the export directory, verified against its manifest before it is
copied, with a summary of the manifest (identity, family, dataset, image, classes, latent size and
the file list; not the fitted prior or the calibration, which the service reads from the files) as
the model's metadata and labels for family and dataset, so ``bentoml models list`` and a bento's
model references describe it without opening files, and BentoML, which parses a bento's model
metadata several times while a container starts, does not parse megabytes. Its metadata also
records where it was exported from (``exported_from``, the export directory's absolute path) and its
content hash: saving the same bytes under the same name again reuses that version instead of adding a copy.
That path is for the local user (``genlab serve`` names it when several versions answer to one name); a
server answers from the stored ``manifest.json``, which names the dataset by its published name and hash
and holds no path.

The store is one per user (``$BENTOML_HOME``), shared by every checkout: :func:`versions_of` is
what ``genlab serve`` reads to refuse a bare name that several different versions answer to.
"""

from __future__ import annotations

import hashlib
import json
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


SUMMARY_KEYS = (
    *("format", "format_version", "genlab_version", "created", "name"),
    *("family", "dataset", "image", "classes", "files"),
)


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What of a manifest the store's metadata keeps: small, and enough to list and tell versions apart."""
    summary = {key: manifest[key] for key in SUMMARY_KEYS if key in manifest}
    summary["latent"] = {"dim": manifest["latent"]["dim"]}
    return summary


def _metadata(value: Any) -> Any:
    """A manifest's summary as BentoML metadata, which takes no None: such entries are left out."""
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


def content_hash(manifest: dict[str, Any]) -> str:
    """One hash of an export's files (their sha256s, as the manifest lists them)."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def versions_of(name: str) -> list[dict[str, Any]]:
    """The store's versions of model ``name``, newest first: tag, creation time, content hash and the directory each
    was exported from."""
    bentoml = _bentoml()
    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        return []
    rows = [
        {
            "tag": str(model.tag),
            "created": model.info.creation_time.isoformat(timespec="seconds"),
            "content": model.info.metadata.get("content_sha256") or content_hash(model.info.metadata),
            "exported_from": model.info.metadata.get("exported_from", "?"),
        }
        for model in models
        if LABEL in model.info.labels
    ]
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def save_to_store(export_dir: str | os.PathLike, name: str) -> str:
    """Copy a verified export directory into the store as ``name``; returns its tag. An export whose files are already
    stored under ``name`` is not copied again: the version that holds them is returned."""
    check_name(name)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    content = content_hash(manifest)
    for version in versions_of(name):
        if version["content"] == content:
            return version["tag"]
    bentoml = _bentoml()
    labels = {
        LABEL: str(manifest["format_version"]),
        "family": manifest["family"],
        "dataset": _label(manifest["dataset"]["dataset"]),
    }
    metadata = {**_metadata(_summary(manifest)), "content_sha256": content, "exported_from": str(export_dir.resolve())}
    try:
        with bentoml.models.create(name, labels=labels, metadata=metadata, module=LOADER) as model:
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
