"""What the service serves, its limits and its switches, read once from the environment at import.

``GENLAB_MODELS`` is a comma-separated list of BentoML model tags (``name`` or ``name:version``)
or export directories; the first is the default model. Tags are declared as BentoML model
references on the service class, so ``bentoml build`` packs them into the bento. Every worker
process reads the same list, in the same order. ``genlab serve`` sets these variables from its
flags; a container sets them in its environment (``bentofile.yaml`` ``envs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "genlab-vaegan-mnist-5k"  # what the quickstart trains and exports
VERIFIED_ENV = "GENLAB_VERIFIED_EXPORTS"  # set by `genlab serve`: {directory: sha256 of its manifest} it has checked
BATCHING_CHOICES = ("auto", "on", "off")
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")  # answered without an API key (probes)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _flag(name: str, default: bool) -> bool:
    return os.environ.get(name, "1" if default else "0").lower() not in ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    max_images: int = 256  # images per request: generate n, reconstruct and anomaly-score uploads or arrays
    max_upload_bytes: int = 10 << 20  # per uploaded file
    max_pixels: int = 4096 * 4096  # decoded size of one upload (decompression bombs)
    # a request body above this is refused with 413 while it is received, before anything parses it
    max_body_bytes: int = 32 << 20
    # merge concurrent requests into one ONNX Runtime call: auto = where the graphs run on a GPU
    batching: str = "auto"
    max_batch_size: int = 256
    ort_threads: int = 1  # ONNX Runtime intra-op threads per session, in every worker (0: one per core)
    workers: int = 1  # HTTP worker processes, each with its own sessions
    access_log: bool = False
    # a request running longer is answered 504. BentoML 1.4.39's timeout middleware keeps every request's context
    # alive for this long (its timer is never cancelled), so resident memory grows with rate x timeout until it
    # levels off: keep it short. genlab's requests take well under a second (256 images at most).
    request_timeout_s: float = 10.0
    api_key: str = ""  # when set, every route but the health probes needs `Authorization: Bearer <key>`
    # export directories whose files `genlab serve` has just hashed, with their manifest's sha256: loading
    # them again re-hashes only the manifest. Any other directory (plain `bentoml serve`, a container) is
    # checked in full when its graphs are loaded.
    verified: tuple[tuple[str, str], ...] = ()

    def already_verified(self, directory: Path) -> bool:
        """Whether ``directory`` is an export `genlab serve` verified, unchanged since (its manifest has the same hash)."""
        from export.reader import MANIFEST
        from genlab.files import file_sha256

        digest = dict(self.verified).get(str(directory.resolve()))
        manifest = directory / MANIFEST
        return digest is not None and manifest.is_file() and file_sha256(manifest) == digest

    @property
    def store_tags(self) -> list[str]:
        """The references that are BentoML model tags (not directories)."""
        return [ref for ref in self.models if not Path(ref).is_dir()]


def load_settings() -> Settings:
    models = tuple(ref.strip() for ref in os.environ.get("GENLAB_MODELS", DEFAULT_MODEL).split(",") if ref.strip())
    batching = os.environ.get("GENLAB_BATCHING", "auto").lower()
    batching = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(batching, batching)
    if batching not in BATCHING_CHOICES:
        raise ValueError(f"GENLAB_BATCHING must be one of {', '.join(BATCHING_CHOICES)}, got {batching!r}")
    return Settings(
        models=models or (DEFAULT_MODEL,),
        max_images=_int("GENLAB_MAX_IMAGES", 256),
        max_upload_bytes=_int("GENLAB_MAX_UPLOAD_BYTES", 10 << 20),
        max_body_bytes=_int("GENLAB_MAX_BODY_BYTES", 32 << 20),
        batching=batching,
        max_batch_size=_int("GENLAB_MAX_BATCH_SIZE", 256),
        ort_threads=_int("GENLAB_ORT_THREADS", 1),
        workers=_int("GENLAB_WORKERS", 1),
        access_log=_flag("GENLAB_ACCESS_LOG", False),
        request_timeout_s=float(os.environ.get("GENLAB_REQUEST_TIMEOUT_S", 10.0)),
        api_key=os.environ.get("GENLAB_API_KEY", ""),
        verified=tuple(sorted(json.loads(os.environ.get(VERIFIED_ENV) or "{}").items())),
    )


SETTINGS = load_settings()
