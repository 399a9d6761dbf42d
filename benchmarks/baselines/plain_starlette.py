"""Baseline for ``benchmarks/serve_load.py``: the genlab calls in a plain Starlette app (the floor of
Python HTTP serving here). JSON in; /generate answers .npy bytes, /anomaly-score {"score": [...]};
GET /readyz answers 200. Environment: BASELINE_EXPORT (export directory, required). From the repository root:

    BASELINE_EXPORT=DIR python -m uvicorn benchmarks.baselines.plain_starlette:app --port 3000 --no-access-log
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
from genlab.export.reader import open_export, sample_latents
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def generate(request: Request) -> Response:
    body, model = await request.json(), request.app.state.model
    buffer = io.BytesIO()
    np.save(
        buffer,
        model.decode(
            sample_latents(int(body.get("n", 1)), model.latent_dim, int(body.get("seed", 0)), prior=model.latent_prior)
        ),
        allow_pickle=False,
    )
    return Response(buffer.getvalue(), media_type="application/octet-stream")


async def anomaly_score(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {"score": request.app.state.model.scores(np.asarray(body["array"], np.uint8))["score"].tolist()}
    )


async def readyz(request: Request) -> Response:
    return Response("ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    app.state.model = open_export(os.environ["BASELINE_EXPORT"], providers="cpu", threads=1, spinning=False)
    yield


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/generate", generate, methods=["POST"]),
        Route("/anomaly-score", anomaly_score, methods=["POST"]),
        Route("/readyz", readyz),
    ],
)
