"""The ONNX Runtime side of the service: one process holding the sessions, with batchable APIs.

BentoML's adaptive batching merges concurrent calls to a ``batchable`` API into one call with a
single array argument. The HTTP front (``service.service``) calls these APIs through a
dependency, so concurrent single-image requests become one ONNX Runtime run. An array API can
take one argument only, so every model gets its own three APIs, ``decode_<i>``, ``encode_<i>``
and ``score_<i>`` (``i`` = its position in ``GENLAB_MODELS``); outputs are single arrays:
``encode`` returns [B, 2 * latent] (mu then logvar), ``score`` returns [B, components] in the
manifest's order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import bentoml
import numpy as np

from export.reader import ExportedModel, read_export, resolve
from service.settings import SETTINGS

log = logging.getLogger("genlab.service")


def resolve_reference(index: int) -> Path:
    """Position ``index`` in GENLAB_MODELS -> its export directory (a tag is looked up in the model store,
    which inside a built bento is the bento's own)."""
    return resolve(SETTINGS.models[index])


def warm_up(model: ExportedModel) -> None:
    """Run every graph once, so that the first requests do not pay for ONNX Runtime's first-run setup
    (which would also mislead the batching dispatcher's latency estimates)."""
    images = model.decode(np.zeros((2, model.latent_dim), np.float32))
    model.scores(images)
    if model.has_encoder:
        model.encode(images)


def load_model(directory: Path) -> ExportedModel:
    """The export's graphs in ONNX Runtime sessions; every file's sha256 is checked unless `genlab serve` just did."""
    model = read_export(directory, verify=not SETTINGS.already_verified(directory))
    # no spin-waiting: idle ONNX Runtime threads would take CPU from the request handling
    return model.start_sessions(threads=SETTINGS.ort_threads, spinning=False)


class GenlabRuntime:
    """Holds one ExportedModel per configured reference; its APIs are added below."""

    def __init__(self) -> None:
        self.models: list[ExportedModel] = [load_model(resolve_reference(i)) for i in range(len(SETTINGS.models))]
        for model in self.models:
            warm_up(model)
            log.info("genlab runtime: %s (%s) on %s", model.name, model.family, ", ".join(sorted(set(model.providers.values()))))

    @bentoml.api
    def providers(self) -> dict[str, dict[str, str]]:
        """model name -> graph -> the execution provider its session got."""
        return {model.name: model.providers for model in self.models}


def _batch_api(index: int, graph: str):
    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.models[index].decode(z)

    def encode(self, images: np.ndarray) -> np.ndarray:
        mu, logvar = self.models[index].encode(images)
        return np.concatenate([mu, logvar], axis=1)

    def score(self, images: np.ndarray) -> np.ndarray:
        model = self.models[index]
        scores = model.scores(images)
        return np.stack([scores[name] for name in model.score_names], axis=1)

    func = {"decode": decode, "encode": encode, "score": score}[graph]
    func.__name__ = f"{graph}_{index}"
    func.__qualname__ = f"GenlabRuntime.{func.__name__}"
    if not SETTINGS.batching:
        return bentoml.api(func)
    return bentoml.api(func, batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)


for _i, _reference in enumerate(SETTINGS.models):
    if _reference in SETTINGS.store_tags:
        # class-level references: `bentoml build` packs these models into the bento
        setattr(GenlabRuntime, f"model_{_i}", bentoml.models.BentoModel(_reference))
    for _graph in ("decode", "encode", "score"):
        setattr(GenlabRuntime, f"{_graph}_{_i}", _batch_api(_i, _graph))

GenlabRuntime = bentoml.service(name="genlab-runtime", workers=1, traffic={"timeout": 60})(GenlabRuntime)
