"""What the service serves and its limits, read once from the environment at import.

``GENLAB_MODELS`` is a comma-separated list of BentoML model tags (``name`` or ``name:version``)
or export directories; the first is the default model. Tags are declared as BentoML model
references on the service class, so ``bentoml build`` packs them into the bento. Both service
processes (the HTTP front and the ONNX runtime) read the same list, in the same order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "genlab-vaegan-mnist-5k"  # what the quickstart trains and exports
VERIFIED_ENV = "GENLAB_VERIFIED_EXPORTS"  # set by `genlab serve`: {directory: sha256 of its manifest} it has checked


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    max_images: int = 256  # images per request: generate n, reconstruct and anomaly-score uploads or arrays
    max_upload_bytes: int = 10 << 20  # per uploaded file
    max_pixels: int = 4096 * 4096  # decoded size of one upload (decompression bombs)
    batching: bool = True  # adaptive batching of runtime calls (GENLAB_BATCHING=0 turns it off)
    max_batch_size: int = 256
    # BentoML's dispatcher answers 503 when it predicts a request cannot be served within this;
    # it dispatches as soon as waiting stops paying off, so a generous cap costs no latency
    max_latency_ms: int = 10_000
    ort_threads: int = 0  # ONNX Runtime intra-op threads per session (0: one per core)
    # export directories whose files `genlab serve` has just hashed, with their manifest's sha256: loading
    # them again re-hashes only the manifest. Any other directory (plain `bentoml serve`, a container) is
    # checked in full when its graphs are loaded.
    verified: tuple[tuple[str, str], ...] = ()

    def already_verified(self, directory: Path) -> bool:
        """Whether ``directory`` is an export `genlab serve` verified, unchanged since (its manifest has the same hash)."""
        from genlab.files import file_sha256

        digest = dict(self.verified).get(str(directory.resolve()))
        from export.reader import MANIFEST

        manifest = directory / MANIFEST
        return digest is not None and manifest.is_file() and file_sha256(manifest) == digest

    @property
    def store_tags(self) -> list[str]:
        """The references that are BentoML model tags (not directories)."""
        return [ref for ref in self.models if not Path(ref).is_dir()]


def load_settings() -> Settings:
    models = tuple(ref.strip() for ref in os.environ.get("GENLAB_MODELS", DEFAULT_MODEL).split(",") if ref.strip())
    return Settings(
        models=models or (DEFAULT_MODEL,),
        max_images=_int("GENLAB_MAX_IMAGES", 256),
        max_upload_bytes=_int("GENLAB_MAX_UPLOAD_BYTES", 10 << 20),
        batching=os.environ.get("GENLAB_BATCHING", "1").lower() not in ("0", "false", "no", "off"),
        max_batch_size=_int("GENLAB_MAX_BATCH_SIZE", 256),
        max_latency_ms=_int("GENLAB_MAX_LATENCY_MS", 10_000),
        ort_threads=_int("GENLAB_ORT_THREADS", 0),
        verified=tuple(sorted(json.loads(os.environ.get(VERIFIED_ENV) or "{}").items())),
    )


SETTINGS = load_settings()
