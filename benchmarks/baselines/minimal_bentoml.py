"""Baseline for ``benchmarks/serve_load.py``: the genlab calls in the leanest BentoML service.

Async APIs that call ONNX Runtime inline (no dependency service, no thread hop, no batching),
plain-typed arguments only, access log, metrics and OpenTelemetry spans off. Environment: BASELINE_EXPORT (export
directory, required), BASELINE_WORKERS (HTTP worker processes, default 1). From the repository root:

    BASELINE_EXPORT=DIR python -m bentoml serve benchmarks.baselines.minimal_bentoml:Minimal --port 3000
"""

from __future__ import annotations

import io
import os
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")  # no-op tracing spans: the same trim genlab serve makes

import bentoml
import numpy as np
from genlab.export.reader import open_export, sample_latents
from starlette.responses import Response


# no access log and no Prometheus metrics: the least per-request work BentoML does
@bentoml.service(
    workers=int(os.environ.get("BASELINE_WORKERS", "1")),
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
class Minimal:
    def __init__(self) -> None:
        self.model = open_export(os.environ["BASELINE_EXPORT"], providers="cpu", threads=1, spinning=False)

    @bentoml.api(route="/generate")
    async def generate(self, n: int = 1, seed: int = 0) -> Any:  # a starlette Response: BentoML passes it through
        buffer = io.BytesIO()
        z = sample_latents(
            n, self.model.latent_dim, seed, prior=self.model.latent_prior
        )  # the export's prior, as genlab
        np.save(buffer, self.model.decode(z), allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/octet-stream")

    @bentoml.api(route="/anomaly-score")
    async def anomaly_score(self, array: list) -> dict:
        return {"score": self.model.scores(np.asarray(array, np.uint8))["score"].tolist()}
