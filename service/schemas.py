"""The service's request and response models, and what the OpenAPI document says of each route beyond them.

Request models refuse unknown fields and values of another type (a string is no number, a bool no integer); the
routes read JSON bodies and forms into them with :mod:`genlab.web`. Fields that are files (uploads) are not in the
models: the routes take them from the form, and the document describes them beside the model's fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from genlab.measures import ANOMALY_MAP_MEANING, RECON_ERROR_MEANING

Label = StrictInt | StrictStr  # one class, by index or name
LABEL_HELP = (
    "conditional models: the class of every image, by name or index (see /models), or a list with one per image; "
    "other models refuse it"
)
Labels = Annotated[Label | list[Label] | None, Field(description=LABEL_HELP)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Temperature = Annotated[StrictFloat, Field(gt=0, le=10)]
Format = Literal["png", "png_list", "array", "npy"]
LabelSource = Literal["request", "inferred"] | None
LABEL_SOURCE_HELP = (
    "'request': the request's `label`; 'inferred': the class that explains the image best (lowest score); "
    "null for models that are not conditional"
)


def _named(value: object) -> object:
    if value is None:
        raise ValueError("give a model name from /models, or leave the field out for the default model")
    return value


ModelName = Annotated[
    StrictStr | None, BeforeValidator(_named), Field(description="a model from /models; left out: the first")
]
ImageArray = Annotated[
    list[Any] | None, Field(description="uint8 images [N, C, H, W] (or one [C, H, W]) as nested lists")
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Generate(Request):
    """Sample images from the prior, or decode the latents ``z``."""

    n: Annotated[StrictInt, Field(ge=1, description="images to draw (at most max_images, see /models)")] = 16
    seed: Seed | None = None
    z: Annotated[list[list[StrictFloat]] | None, Field(description="latents [n, latent] to decode")] = None
    temperature: Temperature = 1.0
    label: Labels = None
    format: Format = "png"
    model: ModelName = None


class Interpolate(Request):
    """The decoded path between two seeds' latents or two images' encoder means."""

    seeds: Annotated[list[Seed] | None, Field(min_length=2, max_length=2)] = None
    array: ImageArray = None
    steps: Annotated[StrictInt, Field(ge=2, description="points on the path (at most max_images)")] = 8
    method: Literal["slerp", "linear"] = "slerp"
    temperature: Temperature = 1.0
    label: Labels = None
    format: Format = "png"
    model: ModelName = None


class Reconstruct(Request):
    """Reconstruct images through the encoder mean and the decoder."""

    array: ImageArray = None
    label: Labels = None
    format: Literal["png_list", "array"] = "png_list"
    model: ModelName = None


class Score(Request):
    """Score images against the model's calibration."""

    array: ImageArray = None
    percentile: Annotated[StrictFloat | None, Field(ge=0, le=100)] = None
    threshold: StrictFloat | None = None
    label: Labels = None
    maps: StrictBool = False
    maps_format: Literal["png", "array"] = "png"
    maps_size: Annotated[
        Literal["model", "image"],
        Field(
            description="the anomaly maps' size: the model's ('model'), or each uploaded image's own ('image': the "
            "map of the centre square the model saw, laid over the image, zero outside the square; an `array` is "
            "at the model's size either way)"
        ),
    ] = "model"
    model: ModelName = None


class Batch(Request):
    """The binary routes' fields beside their .npy file parts."""

    model: ModelName = None


# -- responses ----------------------------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    name: str
    family: str
    default: bool
    has_encoder: bool
    latent_dim: int
    image_shape: list[int]
    score_names: list[str]
    providers: dict[str, str]
    conditional: bool = Field(description="whether the model draws, reconstructs and scores images under a class")
    classes: list[str] = Field(
        description="the classes `label` takes, label k being classes[k]; empty unless conditional"
    )
    request_merging: bool = Field(description="whether concurrent requests are merged into one ONNX Runtime call")
    max_images: int = Field(description="the most images (or latents) one request may hold (GENLAB_MAX_IMAGES)")
    manifest: dict[str, Any]


class Reconstruction(BaseModel):
    """What /reconstruct answers; the label fields only for a conditional model."""

    model: str
    images: list[str] | list[Any] = Field(
        description="the reconstructions: base64 PNGs (format=png_list) or uint8 [N, C, H, W] (format=array)"
    )
    mu: list[list[float]] = Field(description="posterior means, [N, latent]")
    recon_error: list[float] = Field(description=RECON_ERROR_MEANING)
    labels: list[int] | None = Field(None, description="conditional models: the class index of each image")
    label_names: list[str] | None = Field(None, description="conditional models: the names of those classes")
    label_source: LabelSource = Field(None, description=LABEL_SOURCE_HELP)


class ImageScore(BaseModel):
    """One image's scores; the label fields only for a conditional model, the map only when asked for."""

    score: float = Field(description="the raw primary score; larger is more anomalous")
    normalized_score: float | None = Field(
        description="the score mapped to [0, 1] with the threshold at exactly 0.5 (anomalib's convention): "
        "(score - threshold) / (max - min of held-out normal scores) + 0.5, clipped; null without calibration"
    )
    percentile: float | None = Field(
        description="percentile of the score among held-out normal images (0-100); null without calibration"
    )
    is_anomaly: bool = Field(description="score > threshold (equivalently normalized_score > 0.5)")
    components: dict[str, dict[str, float | None]] = Field(description="name -> {value, percentile}")
    label: int | None = Field(None, description="conditional models: the class index the image was scored under")
    label_name: str | None = Field(None, description="conditional models: the name of that class")
    label_source: LabelSource = Field(None, description=LABEL_SOURCE_HELP)
    anomaly_map: str | list[Any] | None = Field(
        None,
        description="with maps=true: the anomaly map, as a base64 PNG of uint8 rint(255 x value) (maps_format=png) "
        f"or as float [C, H, W] (maps_format=array): {ANOMALY_MAP_MEANING}, or, for a model with a local map "
        "(GET /models: the manifest's scores.map_description), one channel in [0, 1), 0.5 as unusual as the most "
        "unusual 0.1% of normal pixels",
    )
    anomaly_map_size: list[int] | None = Field(
        None,
        description="with maps=true: the map's [H, W], the model's (maps_size=model) or the image's as sent "
        "(maps_size=image)",
    )


class AnomalyScores(BaseModel):
    model: str
    score_name: str
    meaning: str
    threshold: float
    threshold_percentile: float | None
    threshold_source: Literal["calibration", "request"]
    results: list[ImageScore]


class Drawn(BaseModel):
    """/generate's and /interpolate's JSON answer (format png_list or array)."""

    model: str
    shape: list[int] = Field(description="[n, C, H, W]")
    images: list[str] | list[Any] = Field(description="base64 PNGs (png_list) or uint8 [n, C, H, W] (array)")
    seed: int | None = Field(None, description="/generate: the seed drawn from; null when latents `z` were decoded")
    seeds: list[int] | None = Field(None, description="/interpolate: the two seeds, when they were given")
    method: Literal["slerp", "linear"] | None = Field(None, description="/interpolate: the path")
    t: list[float] | None = Field(None, description="/interpolate: each step's place on the path, 0..1")
    labels: list[int] | None = Field(None, description="conditional models: the class index of every image")
    label_names: list[str] | None = Field(None, description="conditional models: the name of every image's class")


class Error(BaseModel):
    """Every refusal: what is wrong, and the field at fault."""

    error: str = Field(description="what is wrong, starting with the field's name")
    field: str = Field(
        description="the request field at fault (or a header, 'body', 'path' for an unknown route, 'method' for a "
        "method the route does not take, 'server' for a server fault)"
    )


# -- what the document says beyond the models ---------------------------------------------------------------------
def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


HEADERS = {
    "X-Genlab-Model": _header("the model that answered"),
    "X-Genlab-Seed": _header("the seed of what was drawn (empty when nothing was)"),
    "X-Genlab-Labels": _header("conditional models: the class index of every image, comma-separated"),
    "X-Genlab-Scores": _header("the score components, in the order of the table's columns"),
    "X-Genlab-Method": _header("the interpolation, slerp or linear"),
    "X-Genlab-Seeds": _header("the two seeds of the path's ends, comma-separated (empty for images)"),
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error, "description": description}
    for status, description in {
        400: "Bad request: a malformed body, an invalid field or an unknown one (named in `field`)",
        401: "No API key, or a wrong one (when the server has one)",
        404: "Unknown model (see /models)",
        413: "Too large: the body, a file, or the number of images or latents is above its limit",
        415: "Unsupported Content-Type",
        422: "Well-formed but unusable: e.g. an array of the wrong shape, or a model without an encoder",
        500: "Server fault (never expected; please report it)",
    }.items()
}
NPY = "application/octet-stream"


def drawn_responses(headers: tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers PNG, .npy or JSON (:class:`Drawn`), with its headers."""
    return {
        **ERRORS,
        200: {
            "description": "a PNG (format=png), a .npy file (format=npy) or JSON (format=png_list, array)",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}, NPY: {}},
            "model": Drawn,
            "headers": {name: HEADERS[name] for name in headers},
        },
    }


def npy_responses(headers: tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    return {
        **ERRORS,
        200: {
            "description": "a .npy file",
            "content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
            "headers": {name: HEADERS[name] for name in headers},
        },
    }


def request_body(model: type[Request], files: dict[str, str], json: bool = True) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads ``model`` from JSON (when ``json``) or from a form whose file
    parts are ``files`` (name -> description)."""
    schema = model.model_json_schema()
    form = {**schema, "properties": {**schema["properties"]}}
    for name, description in files.items():
        form["properties"][name] = {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": description,
        }
    content: dict[str, Any] = {"multipart/form-data": {"schema": form}}
    if json:
        content["application/json"] = {"schema": schema}
    return {"requestBody": {"required": False, "content": content}}
