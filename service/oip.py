"""The Open Inference Protocol (KServe V2, Triton, Seldon MLServer) over REST, under ``/v2`` on the service's port.

Every served model ``NAME`` is offered as protocol models, each one graph of the export:

- ``NAME-decoder``: ``z`` FP32 [-1, latent] (and ``labels`` INT64 [-1] for a conditional model) -> ``images``
  UINT8 [-1, C, H, W], as ``/batch/decode``;
- ``NAME-score``: ``images`` UINT8 [-1, C, H, W] (and optional ``labels``, -1 = infer the class) -> ``scores``
  FP32 [-1, K], the columns named in the metadata's ``parameters`` (primary first), and for a conditional model
  ``labels``, the class each image was scored under, as ``/batch/score``;
- ``NAME-encoder`` (models with an encoder): ``images`` (and ``labels``) -> ``mu`` and ``logvar`` FP32 [-1, latent].

They run on the service's own :class:`~service.runtime.Runner` objects, so they share its ONNX Runtime sessions and
request merging, and the same API key, body limit and metrics stand in front of them. Tensors travel
as JSON ``data`` (flat or nested, row-major) or as raw little-endian bytes after the JSON header (the binary tensor
extension: ``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` / ``binary_data_output``).
Every refusal is ``{"error": message}`` naming the tensor: 400 for a bad request, 404 for an unknown model, version
or route, 405 for a method a route does not take, 413 for a request above a limit. docs/open-inference-protocol.md
says what is supported and what is not.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import bentoml
import numpy as np
from genlab.export.reader import ExportedModel
from genlab.service.inputs import images_from_array, labels_from_array, latents_from_array
from genlab.service.runtime import Runner
from genlab.service.settings import Settings
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genlab import __version__
from genlab.metrics import record_model
from genlab.web import RequestError

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # answered without a key, like /readyz
ROUTE_TEMPLATES = (  # every route under /v2, as metrics label them
    "/v2",
    "/v2/",
    *OPEN_PATHS,
    "/v2/models/{model}",
    "/v2/models/{model}/ready",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}",
    "/v2/models/{model}/versions/{version}/ready",
    "/v2/models/{model}/versions/{version}/infer",
)
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
SERVER_METADATA = {"name": "genlab", "version": __version__, "extensions": EXTENSIONS}
DATATYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
JSON_SLACK = 4096  # values a JSON request may hold beyond its tensors' (its other fields)
Endpoint = Callable[[Request], Awaitable[Response]]
UNSUPPORTED_PARAMETERS = {  # request or tensor parameters of extensions this server does not offer
    "shared_memory_region": "the shared-memory extension",
    "classification": "the classification extension",
    "sequence_id": "sequences",
}


class ProtocolError(Exception):
    """A request the protocol refuses: answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a protocol model: its datatype and shape, -1 for the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    required: bool = True

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ProtocolModel:
    """One graph of a served model, as the protocol names and describes it."""

    name: str
    graph: str
    runner: Runner
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str  # the export's content hash (:func:`export_version`)

    @property
    def model(self) -> ExportedModel:
        return self.runner.model

    def metadata(self) -> dict[str, Any]:
        m = self.model
        parameters: dict[str, Any] = {"model": m.name, "family": m.family, "graph": self.graph}
        if self.graph == "score":
            parameters["score_names"] = ",".join(m.score_names)  # the columns of `scores`, primary first
        if m.conditional:
            parameters["classes"] = len(m.class_names)  # labels 0..classes-1 (their names: GET /models)
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
            "parameters": parameters,
        }

    def values_per_row(self) -> int:
        """The values one batch row holds across all inputs (JSON requests are bounded by it)."""
        return sum(math.prod(t.shape[1:]) for t in self.inputs)


def export_version(model: ExportedModel) -> str:
    """The export's content hash (of its files' sha256s): a version that changes whenever a graph does."""
    files = json.dumps(model.manifest["files"], sort_keys=True).encode()
    return hashlib.sha256(files).hexdigest()[:16]


def protocol_models(runners: dict[str, Runner]) -> dict[str, ProtocolModel]:
    """Protocol model name -> :class:`ProtocolModel`, for every graph of every served model."""
    found: dict[str, ProtocolModel] = {}
    for name, runner in runners.items():
        m, version = runner.model, export_version(runner.model)
        images = TensorSpec("images", "UINT8", (-1, *m.image_shape))
        latents = (-1, m.latent_dim)
        labels = (TensorSpec("labels", "INT64", (-1,)),) if m.conditional else ()
        optional_labels = (TensorSpec("labels", "INT64", (-1,), required=False),) if m.conditional else ()
        scores = TensorSpec("scores", "FP32", (-1, len(m.score_names)))
        graphs = {
            "decoder": ((TensorSpec("z", "FP32", latents), *labels), (images,)),
            "score": ((images, *optional_labels), (scores, *labels)),
        }
        if m.has_encoder:
            graphs["encoder"] = (
                (images, *labels),
                (TensorSpec("mu", "FP32", latents), TensorSpec("logvar", "FP32", latents)),
            )
        for graph, (inputs, outputs) in graphs.items():
            found[f"{name}-{graph}"] = ProtocolModel(f"{name}-{graph}", graph, runner, inputs, outputs, version)
    return found


# -- requests -> tensors --------------------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A request body -> (its JSON header, the binary tensor data after it)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ProtocolError(f"Inference-Header-Content-Length: must be a byte count, not {header_length[:40]!r}")
    length = int(text)
    if length > len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length: says the JSON header is {length:,} bytes; the body has {len(body):,}"
        )
    return body[:length], memoryview(body)[length:]


def parse_request(header: bytes, max_values: int) -> dict[str, Any]:
    """The JSON header of an inference request, bounded before it is parsed, -> its object."""
    values = header.count(b",") + 1  # an upper bound on the numbers in it, counted before anything is parsed
    if values > max_values:
        raise ProtocolError(
            f"the JSON request holds about {values:,} values; the limit is {max_values:,} (send large tensors as "
            "binary data: the binary tensor extension)",
            413,
        )
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as err:
        raise ProtocolError(f"the inference request is not valid JSON ({str(err)[:120]})") from None
    if not isinstance(request, dict):
        raise ProtocolError("the inference request must be a JSON object with 'inputs'")
    if not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("the inference request needs 'inputs', a non-empty list of tensors")
    if "id" in request and not isinstance(request["id"], str):
        raise ProtocolError("id: must be a string")
    _refuse_unsupported(_parameters(request, "the request"), "the request")
    return request


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    return parameters


def _refuse_unsupported(parameters: dict[str, Any], where: str) -> None:
    for key, what in UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise ProtocolError(f"{where}: parameter {key!r} asks for {what}, which this server does not offer")


def input_tensors(
    pm: ProtocolModel, entries: list[Any], binary: memoryview, settings: Settings
) -> dict[str, np.ndarray]:
    """The request's ``inputs`` (and the binary data after its JSON header) -> name -> array in its declared shape."""
    specs = {t.name: t for t in pm.inputs}
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"inputs[{i}]: must be a tensor object with a 'name'")
        name = entry["name"]
        if name not in specs:
            raise ProtocolError(f"unknown input {name[:100]!r}; {pm.name} takes: {', '.join(specs)}")
        if name in tensors:
            raise ProtocolError(f"input {name!r} is given twice")
        spec = specs[name]
        shape = _declared_shape(entry, spec, settings.max_images)
        parameters = _parameters(entry, f"input {name!r}")
        _refuse_unsupported(parameters, f"input {name!r}")
        size = parameters.get("binary_data_size")
        if size is None:
            tensors[name] = _json_tensor(entry, spec, shape)
            continue
        if "data" in entry:
            raise ProtocolError(f"input {name!r}: give either 'data' or binary_data_size, not both")
        part = _binary_part(binary, offset, size, spec, shape, settings.max_upload_bytes)
        offset += len(part)
        tensors[name] = np.frombuffer(part, DATATYPES[spec.datatype]).reshape(shape)
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset:,} bytes after the JSON header that no input's binary_data_size "
            "accounts for"
        )
    missing = [t.name for t in pm.inputs if t.required and t.name not in tensors]
    if missing:
        raise ProtocolError(f"input {missing[0]!r} is missing; {pm.name} takes: {', '.join(specs)}")
    return tensors


def _declared_shape(entry: dict[str, Any], spec: TensorSpec, max_images: int) -> tuple[int, ...]:
    """An input's ``datatype`` and ``shape``, checked against the model's: its shape, the batch within the limit."""
    name, datatype, shape = spec.name, entry.get("datatype"), entry.get("shape")
    if datatype != spec.datatype:
        raise ProtocolError(f"input {name!r}: datatype {str(datatype)[:20]!r}; this model takes {spec.datatype}")
    wanted = ", ".join(map(str, spec.shape))
    if (
        not isinstance(shape, list)
        or len(shape) != len(spec.shape)
        or not all(type(d) is int and d >= 0 for d in shape)
        or any(want not in (-1, got) for want, got in zip(spec.shape, shape))
    ):
        raise ProtocolError(f"input {name!r}: shape {str(shape)[:100]} does not match [{wanted}]")
    if shape[0] == 0:
        raise ProtocolError(f"input {name!r}: the batch is empty (shape {shape})")
    if shape[0] > max_images:
        raise ProtocolError(f"input {name!r}: {shape[0]:,} rows; the limit is {max_images}", 413)
    return tuple(shape)


def _binary_part(
    binary: memoryview, offset: int, size: Any, spec: TensorSpec, shape: tuple[int, ...], max_bytes: int
) -> memoryview:
    """An input's bytes from the binary data, where its ``binary_data_size`` says, checked against its shape."""
    name = spec.name
    if binary.nbytes == 0 and offset == 0:
        raise ProtocolError(
            f"input {name!r}: binary_data_size is given but there is no binary data (no Inference-Header-Content-Length"
            " header, or nothing after the JSON header)"
        )
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a byte count, not {str(size)[:40]}")
    if size > max_bytes:
        raise ProtocolError(f"input {name!r}: {size:,} bytes; the limit is {max_bytes:,}", 413)
    expected = math.prod(shape) * DATATYPES[spec.datatype].itemsize
    if size != expected:
        raise ProtocolError(
            f"input {name!r}: binary_data_size is {size:,} bytes; shape {list(shape)} of {spec.datatype} is "
            f"{expected:,}"
        )
    if offset + size > len(binary):
        raise ProtocolError(
            f"input {name!r}: binary_data_size is {size:,} bytes but only {len(binary) - offset:,} remain in the body"
        )
    return binary[offset : offset + size]


def _json_tensor(entry: dict[str, Any], spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """An input's JSON ``data`` (flat or nested, row-major) -> an array of its datatype in its declared shape."""
    name = spec.name
    if "data" not in entry:
        raise ProtocolError(f"input {name!r}: has neither 'data' nor parameters.binary_data_size")
    try:
        values = np.asarray(entry["data"])
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError(f"input {name!r}: 'data' must be a list of numbers (flat or nested, row-major)") from None
    if values.size != math.prod(shape):
        raise ProtocolError(
            f"input {name!r}: 'data' has {values.size:,} values; shape {list(shape)} needs {math.prod(shape):,}"
        )
    dtype = DATATYPES[spec.datatype]
    integers = values.dtype.kind in "iu"
    if spec.datatype == "FP32":
        if values.dtype.kind not in "iuf":
            raise ProtocolError(f"input {name!r}: FP32 data must be numbers")
        return values.astype(np.float64).reshape(shape)  # the model's checks see the values before any rounding
    info = np.iinfo(dtype)
    if not integers or (values.size and (values.min() < info.min or values.max() > info.max)):
        raise ProtocolError(f"input {name!r}: {spec.datatype} data must be integers {info.min}..{info.max}")
    return values.astype(dtype).reshape(shape)


# -- running a graph ------------------------------------------------------------------------------------------------
async def run(pm: ProtocolModel, tensors: dict[str, np.ndarray], settings: Settings) -> dict[str, np.ndarray]:
    """The protocol model's graph on its input tensors, with the checks (and the semantics) of the /batch routes."""
    m, runner = pm.model, pm.runner
    classes = m.class_names if m.conditional else None
    if pm.graph == "decoder":
        z = latents_from_array(tensors["z"], "z", m.latent_dim, settings.max_images)
        labels = _labels(tensors, len(z), classes, m, unknown_allowed=False)
        return {"images": await runner.decode(z, labels)}
    images = images_from_array(tensors["images"], "images", m.image_shape, settings.max_images)
    if pm.graph == "score":
        labels = _labels(tensors, len(images), classes, m, unknown_allowed=True)
        scores = await runner.scores(images, labels)
        out = {"scores": np.stack([scores[name] for name in m.score_names], axis=1).astype(np.float32)}
        if m.conditional:
            out["labels"] = scores["label"].astype(np.int64)
        return out
    mu, logvar = await runner.encode(images, _labels(tensors, len(images), classes, m, unknown_allowed=False))
    return {"mu": mu, "logvar": logvar}


def _labels(
    tensors: dict[str, np.ndarray], n: int, classes: list[str] | None, m: ExportedModel, unknown_allowed: bool
) -> np.ndarray | None:
    labels = tensors.get("labels")
    return None if labels is None else labels_from_array(labels, "labels", n, classes, m.name, unknown_allowed)


# -- tensors -> responses -------------------------------------------------------------------------------------------
def requested_outputs(pm: ProtocolModel, request: dict[str, Any]) -> list[tuple[TensorSpec, bool]]:
    """The outputs to answer, each with whether it goes as binary data: the request's ``outputs`` (each binary if its
    ``binary_data`` says so), else every output, binary if the request's ``binary_data_output`` says so."""
    default = _parameters(request, "the request").get("binary_data_output", False)
    if not isinstance(default, bool):
        raise ProtocolError("the request: binary_data_output must be true or false")
    specs = {t.name: t for t in pm.outputs}
    entries = request.get("outputs")
    if entries is None:
        return [(t, default) for t in pm.outputs]
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("'outputs' must be a non-empty list of {\"name\": ...} objects")
    chosen: list[tuple[TensorSpec, bool]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"outputs[{i}]: must be an object with a 'name'")
        name = entry["name"]
        if name not in specs:
            raise ProtocolError(f"unknown output {name[:100]!r}; {pm.name} gives: {', '.join(specs)}")
        if any(spec.name == name for spec, _ in chosen):
            raise ProtocolError(f"output {name!r} is asked for twice")
        parameters = _parameters(entry, f"output {name!r}")
        _refuse_unsupported(parameters, f"output {name!r}")
        binary = parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r}: binary_data must be true or false")
        chosen.append((specs[name], binary))
    return chosen


def infer_response(
    pm: ProtocolModel, request: dict[str, Any], chosen: list[tuple[TensorSpec, bool]], arrays: dict[str, np.ndarray]
) -> Response:
    """The inference response: JSON, or with any binary output its JSON header and then the outputs' bytes."""
    outputs, parts = [], []
    for spec, binary in chosen:
        array = np.ascontiguousarray(arrays[spec.name], dtype=DATATYPES[spec.datatype])
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            parts.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": len(parts[-1])}
        else:
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": pm.name, "model_version": pm.version, "outputs": outputs}
    if "id" in request:
        body["id"] = request["id"]
    header = json.dumps(body, separators=(",", ":")).encode()
    if not parts:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *parts]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


# -- the routes -----------------------------------------------------------------------------------------------------
def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class ProtocolRoutes:
    """The endpoints of the /v2 routes, over the worker's runners (found in the running service on first use)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: dict[str, ProtocolModel] = {}

    def served(self) -> dict[str, ProtocolModel]:
        if not self._models:
            try:
                runners = bentoml.get_current_service().served.runners
            except bentoml.exceptions.BentoMLException:
                raise ProtocolError("the server is starting: its models are not loaded yet", 503) from None
            self._models.update(protocol_models(runners))
        return self._models

    def model(self, request: Request) -> ProtocolModel:
        """The protocol model (and version, where the path names one) that ``request`` is for."""
        name, version = request.path_params["model"], request.path_params.get("version")
        found = self.served()
        if name not in found:
            raise ProtocolError(f"unknown model {name[:200]!r}; this server has: {', '.join(found)}", 404)
        pm = found[name]
        record_model(pm.model.name)
        if version is not None and version != pm.version:
            raise ProtocolError(f"model {name!r} has no version {version[:100]!r}; it has {pm.version}", 404)
        return pm

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(SERVER_METADATA)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        self.served()
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.model(request).metadata())

    async def model_ready(self, request: Request) -> Response:
        return JSONResponse({"name": self.model(request).name, "ready": True})

    async def infer(self, request: Request) -> Response:
        pm, settings = self.model(request), self.settings
        encoding = request.headers.get("content-encoding", "identity")
        if encoding.lower() != "identity":
            raise ProtocolError(f"Content-Encoding {encoding[:40]!r}: send the body uncompressed")
        lengths = request.headers.getlist(HEADER_LENGTH)
        if len(lengths) > 1:  # a proxy in front may read the other one
            raise ProtocolError(f"Inference-Header-Content-Length: given {len(lengths)} times; send it once")
        header, binary = split_body(await request.body(), lengths[0] if lengths else None)
        infer_request = parse_request(header, settings.max_images * pm.values_per_row() + JSON_SLACK)
        chosen = requested_outputs(pm, infer_request)
        tensors = input_tensors(pm, infer_request["inputs"], binary, settings)
        try:
            arrays = await run(pm, tensors, settings)
        except RequestError as err:  # the /batch routes' checks: 413 stays a limit, every other refusal is a 400
            raise ProtocolError(str(err), 413 if err.status == 413 else 400) from None
        return infer_response(pm, infer_request, chosen, arrays)


def protocol_app(settings: Settings) -> Starlette:
    """The /v2 routes, mounted on the service at ``/v2``; a path none of them takes is answered here too (404, or 405
    for a method its route does not take), in the protocol's error shape."""
    endpoints = ProtocolRoutes(settings)
    table: list[tuple[str, Endpoint, str]] = [
        ("/", endpoints.server_metadata, "GET"),
        ("/health/live", endpoints.live, "GET"),
        ("/health/ready", endpoints.ready, "GET"),
        ("/models/{model}", endpoints.model_metadata, "GET"),
        ("/models/{model}/ready", endpoints.model_ready, "GET"),
        ("/models/{model}/infer", endpoints.infer, "POST"),
        ("/models/{model}/versions/{version}", endpoints.model_metadata, "GET"),
        ("/models/{model}/versions/{version}/ready", endpoints.model_ready, "GET"),
        ("/models/{model}/versions/{version}/infer", endpoints.infer, "POST"),
    ]
    routes = [Route(path, endpoint, methods=[method]) for path, endpoint, method in table]
    handlers = {ProtocolError: _protocol_refusal, HTTPException: _router_refusal}
    return Starlette(routes=routes, exception_handlers=handlers)


async def _protocol_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return _error(str(exc), exc.status)


async def _router_refusal(request: Request, exc: Exception) -> Response:
    """The router's 404 (no such route) and 405 (a method the route does not take), in the protocol's shape."""
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return _error(f"{path} does not take {request.method}; use {allowed}", 405)
    return _error(f"no route {path!r} in this server's Open Inference Protocol (see GET /v2)", exc.status_code)
