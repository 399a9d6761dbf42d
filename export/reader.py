"""Open an export (a directory or a BentoML model) and run its graphs: numpy and ONNX Runtime only.

This is the reading side of :mod:`genlab.export.onnx_export`, used by the service and the evaluators
and usable by anyone: it imports no torch and no training code. Opening checks the manifest's
format version and the sha256 of every file it lists, and names the file that fails.

Pixels are uint8 NCHW at every graph boundary: the decoder emits them, the encoder and the
score graph take them, and normalisation happens inside the graphs. A conditional model's graphs
also take int64 class labels (:attr:`ExportedModel.class_names` names them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genlab.errors import GenlabError
from genlab.latents import Prior, prepare_prior
from genlab.latents import sample_latents as sample_latents  # re-exported: the one sampler, for readers
from genlab.thresholds import Calibration, prepare_calibration

FORMAT = "genlab-export"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SCORED_LABEL = "scored_label"  # score.onnx output of a conditional model: the class each image was scored under
# score.onnx output of a model with an encoder: float32 [B, C, H, W], genlab.measures.ANOMALY_MAP_MEANING
ANOMALY_MAP = "anomaly_map"
PROVIDER_ENV = "GENLAB_ORT_PROVIDER"  # auto (default), cpu or cuda

log = logging.getLogger(__name__)


class ExportError(GenlabError):
    """An export directory that is missing, incomplete, tampered with or from a newer genlab."""


def choose_providers(preference: str | None = None) -> list[str]:
    """ONNX Runtime providers to ask for, best first: CUDA where onnxruntime-gpu has it and a CUDA device opens, else
    CPU. ``auto`` asks for CUDA only where :func:`cuda_device_opens`: asked without one, ONNX Runtime logs an error
    for every session before it falls back to the CPU."""
    import onnxruntime as ort

    preference = (preference or os.environ.get(PROVIDER_ENV) or "auto").lower()
    if preference not in ("auto", "cpu", "cuda"):
        raise ExportError(f"unknown execution provider preference {preference!r}; use auto, cpu or cuda")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if preference == "cuda" and not has_cuda:
        raise ExportError(
            "CUDA was asked for, but this onnxruntime has no CUDA provider (install onnxruntime-gpu, not onnxruntime)"
        )
    if preference == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    if preference == "auto" and not cuda_device_opens():
        log.info("onnxruntime has a CUDA provider but no CUDA device opens here (no NVIDIA driver or GPU): CPU only")
        return ["CPUExecutionProvider"]
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn], where installed
            ort.preload_dlls()
        except Exception as err:  # a missing library shows up again, with its name, when a session starts
            log.debug("onnxruntime.preload_dlls: %s", err)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


@functools.cache
def cuda_device_opens() -> bool:
    """Whether the NVIDIA driver opens a CUDA device in this process: its library (libcuda, which a container gets
    from the host with ``--gpus``) loads, ``cuInit`` succeeds and at least one device is counted."""
    try:
        cuda = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


@dataclass
class Graph:
    """One ONNX Runtime session and the names the manifest gives its inputs and outputs."""

    name: str
    session: Any
    inputs: list[str]
    outputs: list[str]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, *arrays: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The graph on its inputs, in the manifest's order: ``outputs`` (default: all of them) by name."""
        names = self.outputs if outputs is None else outputs
        values = self.session.run(names, dict(zip(self.inputs, arrays)))
        return dict(zip(names, values))


@dataclass
class ExportedModel:
    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, Graph] = field(default_factory=dict)

    # -- what the manifest says ---------------------------------------------------------------
    @property
    def family(self) -> str:
        return str(self.manifest["family"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent"]["dim"])

    @property
    def prior(self) -> dict[str, Any] | None:
        """The Gaussian mixture fitted to the training codes (:mod:`genlab.latents`), or None for N(0, I)."""
        prior: dict[str, Any] | None = self.manifest["latent"].get("fitted_prior")
        return prior

    @functools.cached_property
    def latent_prior(self) -> Prior | None:
        """:attr:`prior` prepared for drawing (:func:`genlab.latents.prepare_prior`), once per opened export."""
        return prepare_prior(self.prior)

    @property
    def conditional(self) -> bool:
        """Whether the graphs take a class label (exports from before conditional models never do)."""
        return bool(self.manifest.get("classes", {}).get("conditional", False))

    @property
    def class_names(self) -> list[str]:
        """Label k is class_names[k] (a conditional model's classes; for others, their training data's)."""
        return list(self.manifest.get("classes", {}).get("names", []))

    def _labels(self, labels: np.ndarray | None, n: int, missing: int | None = None) -> tuple[np.ndarray, ...]:
        """The extra graph input of a conditional model: int64 labels [n] (``missing`` fills in absent ones)."""
        if not self.conditional:
            if labels is not None:
                raise ExportError(f"{self.name} is not a conditional model; it takes no labels")
            return ()
        if labels is None:
            if missing is None:
                raise ExportError(f"{self.name} is a conditional model: give a class label per image")
            labels = np.full(n, missing, np.int64)
        labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise ExportError(f"{len(labels)} labels for {n} inputs")
        return (labels,)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        image = self.manifest["image"]
        return int(image["channels"]), int(image["height"]), int(image["width"])

    @property
    def has_encoder(self) -> bool:
        return "encoder" in self.manifest["graphs"]

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.manifest.get("calibration")

    @functools.cached_property
    def calibration_curves(self) -> Calibration | None:
        """:attr:`calibration` as arrays (:func:`genlab.thresholds.prepare_calibration`), once per opened export."""
        return prepare_calibration(self.calibration) if self.calibration else None

    @property
    def score_names(self) -> list[str]:
        return list(self.manifest["scores"]["names"])

    @property
    def score_descriptions(self) -> dict[str, str]:
        return dict(self.manifest["scores"].get("descriptions", {}))

    @property
    def providers(self) -> dict[str, str]:
        """graph name -> the execution provider its session actually got."""
        return {name: graph.provider for name, graph in self.graphs.items()}

    # -- running the graphs ---------------------------------------------------------------------
    def start_sessions(self, providers: str | None = None, threads: int = 0, spinning: bool = True) -> ExportedModel:
        """An ONNX Runtime session for every graph the manifest lists, on the best provider available.

        Each graph is read once and its sha256 checked against the manifest before those same bytes go to ONNX
        Runtime, at every load: a file changed after the export was opened (or between a worker's restarts) is
        refused, never run.

        ``threads`` = intra-op threads (0: one per core). ``spinning=False`` stops idle worker threads
        from spin-waiting after each run: right for a server sharing its cores with request handling,
        at a small cost in single-call latency.
        """
        import onnxruntime as ort

        wanted = choose_providers(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for name, spec in self.manifest["graphs"].items():
            file = self.path / spec["file"]
            graph = verified_bytes(self.path, spec["file"], self.manifest["files"][spec["file"]])
            try:
                session = ort.InferenceSession(graph, sess_options=options, providers=wanted)
            except Exception as err:  # onnxruntime raises its own exception types for bad files
                raise ExportError(f"{file}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
            self.graphs[name] = Graph(
                name, session, [i["name"] for i in spec["inputs"]], [o["name"] for o in spec["outputs"]]
            )
        log.info("opened %s (%s) from %s; providers: %s", self.name, self.family, self.path, self.providers)
        return self

    def decode(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """float32 latents [B, latent_dim] (and a conditional model's int64 labels [B]) -> uint8 images [B, C, H, W]."""
        return self.graphs["decoder"].run(np.ascontiguousarray(z, dtype=np.float32), *self._labels(labels, len(z)))[
            "images"
        ]

    def encode(self, images: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [B, C, H, W] (and a conditional model's labels) -> (mu, logvar), float32 [B, latent_dim]."""
        if not self.has_encoder:
            raise ExportError(f"a {self.family} model has no encoder")
        out = self.graphs["encoder"].run(
            np.ascontiguousarray(images, dtype=np.uint8), *self._labels(labels, len(images))
        )
        return out["mu"], out["logvar"]

    def scores(self, images: np.ndarray, labels: np.ndarray | None = None, maps: bool = False) -> dict[str, np.ndarray]:
        """uint8 images [B, C, H, W] -> {score component: float32 [B]}; 'score' is the primary one. A conditional
        model scores each image under its label, or where that is -1 (or ``labels`` is None) under the class that
        explains it best, and adds ``label`` (int64 [B]), the class used.

        With ``maps`` (models with an encoder) the result also has ``anomaly_map``, float32 [B, C, H, W]
        (:data:`genlab.measures.ANOMALY_MAP_MEANING`), from the same ONNX Runtime call: the score graph computes it
        from the reconstruction its scores compare the image with, under the class each image was scored under.
        ONNX Runtime runs every node of a graph whatever outputs a call asks for (it does not prune the graph to
        them), so the map is computed on every call, a few elementwise operations beside the networks; it is asked
        for only with ``maps``, which spares copying it out of the session otherwise."""
        graph = self.graphs["score"]
        if maps and ANOMALY_MAP not in graph.outputs:
            raise ExportError(f"{self.name} is a {self.family} model without an encoder; it gives no anomaly maps")
        out = graph.run(
            np.ascontiguousarray(images, dtype=np.uint8),
            *self._labels(labels, len(images), -1),
            outputs=[name for name in graph.outputs if maps or name != ANOMALY_MAP],
        )
        if SCORED_LABEL in out:
            out["label"] = out.pop(SCORED_LABEL)
        return out

    def describe(self) -> dict[str, Any]:
        """The manifest without the bulky calibration quantiles, plus the providers in use."""
        summary = {k: v for k, v in self.manifest.items() if k != "calibration"}
        calibration = self.calibration
        if calibration:
            summary["calibration"] = {
                "split": calibration.get("split"),
                "n": calibration.get("n"),
                "check": calibration.get("check"),
                "scores": sorted(calibration["scores"]),
            }
        summary["providers"] = self.providers
        summary["path"] = str(self.path)
        return summary


def read_manifest(directory: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Parse and validate ``manifest.json``; with ``verify``, check every listed file's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such export directory")
    if not path.is_file():
        raise ExportError(f"{directory}: not a genlab export ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not a genlab export manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version != FORMAT_VERSION:
        older = isinstance(version, int) and 1 <= version < FORMAT_VERSION
        raise ExportError(
            f"{path}: export format version {version!r} is not supported by this genlab "
            f"(reads version {FORMAT_VERSION}); "
            + ("export it again with this genlab" if older else "upgrade genlab or export again")
        )
    for key in ("family", "name", "latent", "image", "graphs", "scores", "files"):
        if key not in manifest:
            raise ExportError(f"{path}: manifest has no {key!r}")
    if verify:
        for name, digest in manifest["files"].items():
            verified_bytes(directory, name, digest)
    for graph in manifest["graphs"].values():
        if graph["file"] not in manifest["files"]:
            raise ExportError(f"{path}: graph file {graph['file']} is not listed with a hash")
    return manifest


def verified_bytes(directory: Path, name: str, digest: str) -> bytes:
    """The file ``name`` of an export, read once, whose sha256 is ``digest`` (the manifest's); else an ExportError."""
    file = directory / name
    if Path(name).name != name or not file.is_file():
        raise ExportError(f"{directory}: {name} is missing")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ExportError(f"{file}: sha256 does not match the manifest (file changed or corrupt); export again")
    return data


def resolve(reference: str | os.PathLike[str]) -> Path:
    """An export directory, or a BentoML model tag (``name`` or ``name:version``) -> its directory."""
    path = Path(reference)
    if path.is_dir():
        return path
    text = str(reference)
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?", text, re.IGNORECASE):
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # as export.store: no usage analytics calls
        import bentoml

        try:
            return Path(bentoml.models.get(text.lower()).path)
        except bentoml.exceptions.NotFound:
            raise ExportError(
                f"{text}: neither an export directory nor a model in the BentoML store (see: genlab models)"
            ) from None
    raise ExportError(f"{text}: no such export directory")


def read_export(reference: str | os.PathLike[str], verify: bool = True) -> ExportedModel:
    """The manifest view of an export (no sessions): validated, and with ``verify`` every file's sha256 checked."""
    directory = resolve(reference)
    return ExportedModel(directory, read_manifest(directory, verify))


def open_export(
    reference: str | os.PathLike[str], providers: str | None = None, threads: int = 0, spinning: bool = True
) -> ExportedModel:
    """Validate an export (hashes included) and start an ONNX Runtime session for each graph
    (see :meth:`ExportedModel.start_sessions`)."""
    return read_export(reference).start_sessions(providers, threads, spinning)
