"""What the service serves, its limits and its switches: :func:`load_settings` reads them from the environment.

``GENLAB_MODELS`` is a comma-separated list of BentoML model tags (``name`` or ``name:version``)
or export directories; the first is the default model. Tags are declared as BentoML model
references on the service class, so ``bentoml build`` packs them into the bento. Every worker
process reads the same list, in the same order. ``genlab serve`` sets these variables from its
flags; a container sets them in its environment (``bentofile.yaml`` ``envs``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.service.inputs import UploadLimits

DEFAULT_MODEL = "genlab-vaegan-mnist-5k"  # what the quickstart trains and exports
BATCHING_CHOICES = ("on", "off")
# The serving process's environment where it does not set these: no BentoML usage analytics calls; and BentoML's
# OpenTelemetry span around every request, exported nowhere unless tracing is configured, a no-op (the throughput
# this gains: benchmarks/serve_load.py). To trace, set OTEL_SDK_DISABLED=false and configure BentoML's tracing exporter.
SERVING_ENVIRONMENT = {"BENTOML_DO_NOT_TRACK": "True", "OTEL_SDK_DISABLED": "true"}


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    max_images: int = 256  # images per request: generate n, reconstruct and anomaly-score uploads or arrays
    max_upload_bytes: int = 10 << 20  # per uploaded file
    max_pixels: int = 4096 * 4096  # decoded size of one upload (decompression bombs)
    # decoded size of all the uploads of one request together, checked from their headers before any is decoded
    max_request_pixels: int = 64 << 20
    # a request body above this is refused with 413 while it is received, before anything parses it
    max_body_bytes: int = 32 << 20
    # merge concurrent requests into one ONNX Runtime call (service/runtime.py: where it pays, and what it costs)
    batching: str = "on"
    max_batch_size: int = 256
    ort_threads: int = 1  # ONNX Runtime intra-op threads per session, in every worker (0: one per core)
    work_threads: int = 2  # threads per worker that decode uploads and run large graph calls off the event loop
    workers: int = 1  # HTTP worker processes, each with its own sessions
    access_log: bool = False
    # a request running longer is answered 504. BentoML's timeout middleware keeps every request's context alive for
    # this long (its timer is never cancelled), so resident memory grows with rate x timeout until it levels off:
    # keep it short. genlab's requests take well under a second (256 images at most).
    request_timeout_s: float = 10.0
    api_key: str = ""  # when set, every route but the health probes needs `Authorization: Bearer <key>`

    @property
    def store_tags(self) -> list[str]:
        """The references that are BentoML model tags (not directories)."""
        return [ref for ref in self.models if not Path(ref).is_dir()]

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(self.max_images, self.max_upload_bytes, self.max_pixels, self.max_request_pixels)


ENVIRONMENT = {  # field -> the variable that sets it
    "max_images": "GENLAB_MAX_IMAGES",
    "max_upload_bytes": "GENLAB_MAX_UPLOAD_BYTES",
    "max_pixels": "GENLAB_MAX_PIXELS",
    "max_request_pixels": "GENLAB_MAX_REQUEST_PIXELS",
    "max_body_bytes": "GENLAB_MAX_BODY_BYTES",
    "batching": "GENLAB_BATCHING",
    "max_batch_size": "GENLAB_MAX_BATCH_SIZE",
    "ort_threads": "GENLAB_ORT_THREADS",
    "work_threads": "GENLAB_WORK_THREADS",
    "workers": "GENLAB_WORKERS",
    "access_log": "GENLAB_ACCESS_LOG",
    "request_timeout_s": "GENLAB_REQUEST_TIMEOUT_S",
    "api_key": "GENLAB_API_KEY",
}


def _value(kind: type, text: str) -> object:
    if kind is bool:
        return text.lower() not in ("0", "false", "no", "off", "")
    return kind(text)


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``environ``: every field its variable sets, the dataclass default otherwise."""
    kinds = {f.name: type(f.default) for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}  # field -> a value of the field's type
    for name, variable in ENVIRONMENT.items():
        if variable in environ:
            try:
                values[name] = _value(kinds[name], environ[variable])
            except ValueError:
                raise ValueError(f"{variable} must be a {kinds[name].__name__}, got {environ[variable]!r}") from None
    models = tuple(ref.strip() for ref in environ.get("GENLAB_MODELS", "").split(",") if ref.strip())
    if models:
        values["models"] = models
    if "batching" in values:
        values["batching"] = _batching(str(values["batching"]))
    return Settings(**values)


def _batching(text: str) -> str:
    """GENLAB_BATCHING -> one of BATCHING_CHOICES (a yes or a no meaning on or off)."""
    batching = text.lower()
    batching = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(batching, batching)
    if batching not in BATCHING_CHOICES:
        raise ValueError(f"GENLAB_BATCHING must be one of {', '.join(BATCHING_CHOICES)}, got {batching!r}")
    return batching
