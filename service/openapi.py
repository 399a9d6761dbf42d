"""The OpenAPI document genlab publishes at ``/docs.json``: BentoML's, made valid and complete.

BentoML 1.4.39 declares OpenAPI 3.0.2 but writes some JSON Schema of later versions, which
validators and generated clients reject, and it leaves out what genlab's routes really answer.
:func:`fix_spec` (applied once, by :class:`service.edge.Edge`) corrects both:

- ``anyOf: [X, {type: null}]`` -> ``X`` with ``nullable: true``; a numeric ``exclusiveMinimum``
  / ``exclusiveMaximum`` -> ``minimum`` / ``maximum`` with the 3.0 boolean flag;
- the request and response bodies written inline keep their fields' unions: BentoML keeps only
  the first option of an ``anyOf`` there (``label``, an int *or* a name *or* a list, would read
  as an int; ``threshold_percentile``, a number or null, as a number), so those fields are taken
  from the complete schemas under ``components``;
- routes that take file uploads also take JSON (without the file fields), and both are described;
- every status a route answers is listed with its body: 200 with each content type it sends
  (``/generate`` and ``/interpolate``: PNG, .npy or JSON; ``/batch/*``: .npy) and the ``X-Genlab-*`` headers it sets,
  and 400, 401 (with an API key), 404, 413, 422 and 500 with ``{"error", "field"}`` (BentoML's own
  ``detail``-string 400 is gone);
- the ``model`` field lists the names of the models this server holds;
- with an API key, a bearer security scheme on every route but the health probes.
"""

from __future__ import annotations

import copy
from typing import Any

from genlab.bearer import HEALTH_PATHS

ERROR = "GenlabError"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, starting with the field's name"},
        "field": {
            "type": "string",
            "description": "the request field at fault (or a header, 'body', 'path' for an unknown route, "
            "'method' for a method the route does not take, 'server' for a server fault)",
        },
    },
}
ERROR_STATUSES = {
    "400": "Bad request: a malformed body, an invalid field or an unknown one (named in `field`)",
    "404": "Unknown model (see /models)",
    "413": "Too large: the body, a file, or the number of images or latents is above its limit",
    "415": "Unsupported Content-Type (BentoML refuses its internal pickle format here)",
    "422": "Well-formed but unusable: e.g. an array of the wrong shape, or a GAN asked to reconstruct",
    "500": "Server fault (never expected; please report it)",
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
GENERATE_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string"},
    "seed": {"type": "integer", "nullable": True, "description": "null when explicit latents `z` were decoded"},
    "shape": {"type": "array", "items": {"type": "integer"}, "description": "[n, C, H, W]"},
    "images": {"type": "array", "items": {}, "description": "base64 PNGs (png_list) or uint8 [n, C, H, W] (array)"},
    "labels": {
        "type": "array",
        "items": {"type": "integer"},
        "description": "conditional models only: the class index of every image",
    },
    "label_names": {
        "type": "array",
        "items": {"type": "string"},
        "description": "conditional models only: the name of every image's class",
    },
}
GENERATE_JSON = {
    "type": "object",
    "required": ["model", "seed", "shape", "images"],
    "properties": GENERATE_PROPERTIES,
}
INTERPOLATE_JSON = {
    "type": "object",
    "required": ["model", "method", "t", "shape", "images"],
    "properties": {
        "model": {"type": "string"},
        "method": {"type": "string", "enum": ["slerp", "linear"]},
        "t": {"type": "array", "items": {"type": "number"}, "description": "each step's place on the path, 0..1"},
        "seeds": {"type": "array", "items": {"type": "integer"}, "description": "the two seeds, when they were given"},
        **{k: v for k, v in GENERATE_PROPERTIES.items() if k in ("shape", "images", "labels", "label_names")},
    },
}
_TEXT = {"type": "string"}
HEADERS = {  # what the 200 answers carry besides the body (schemathesis checks them against these)
    "X-Genlab-Model": {"description": "the model that answered", "schema": _TEXT},
    "X-Genlab-Seed": {"description": "the seed of what was drawn (empty when nothing was)", "schema": _TEXT},
    "X-Genlab-Labels": {
        "description": "conditional models: the class index of every image, comma-separated",
        "schema": _TEXT,
    },
    "X-Genlab-Scores": {"description": "the score components, in the order of the table's columns", "schema": _TEXT},
    "X-Genlab-Method": {"description": "the interpolation, slerp or linear", "schema": _TEXT},
    "X-Genlab-Seeds": {
        "description": "the two seeds of the ends, comma-separated, when they were given",
        "schema": _TEXT,
    },
}
SUCCESS_HEADERS = {
    "/generate": ("X-Genlab-Model", "X-Genlab-Seed", "X-Genlab-Labels"),
    "/interpolate": ("X-Genlab-Model", "X-Genlab-Method", "X-Genlab-Seeds", "X-Genlab-Labels"),
    "/batch/decode": ("X-Genlab-Model",),
    "/batch/score": ("X-Genlab-Model", "X-Genlab-Scores", "X-Genlab-Labels"),
}
SUCCESS_CONTENT = {
    "/generate": {
        "image/png": BINARY,
        "application/octet-stream": BINARY,
        "application/json": {"schema": GENERATE_JSON},
    },
    "/interpolate": {
        "image/png": BINARY,
        "application/octet-stream": BINARY,
        "application/json": {"schema": INTERPOLATE_JSON},
    },
    "/batch/decode": {"application/octet-stream": BINARY},
    "/batch/score": {"application/octet-stream": BINARY},
}


def _to_openapi_30(node: Any) -> Any:
    """JSON Schema constructs of later drafts -> their OpenAPI 3.0 forms, recursively."""
    if isinstance(node, list):
        return [_to_openapi_30(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _to_openapi_30(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            merged = rest[0] if len(rest) == 1 else {key: rest}
            node = {**{k: v for k, v in node.items() if k != key}, **merged, "nullable": True}
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[bound], node[exclusive] = value, True
    if "default" in node and node["default"] is None:
        node["nullable"] = True
    return node


def _restore_unions(inline: dict[str, Any], component: dict[str, Any] | None) -> None:
    """Put back, from the complete ``component`` schema, the ``anyOf`` fields BentoML cut to their first option in
    the ``inline`` copy of a body schema."""
    properties = inline.get("properties", {})
    for name, field in (component or {}).get("properties", {}).items():
        if name in properties and "anyOf" in field:
            properties[name] = copy.deepcopy(field)


def _restore_operation_unions(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Every inline body of ``operation``: the request's (component ``<api>__Input``) and the JSON answer's (the
    component its title names)."""
    request = schemas.get(f"{operation.get('x-bentoml-name')}__Input")
    for media in operation.get("requestBody", {}).get("content", {}).values():
        _restore_unions(media.get("schema", {}), request)
    answer = (
        operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
    )
    _restore_unions(answer, schemas.get(answer.get("title", "")))


def _json_body(multipart: dict[str, Any], file_fields: frozenset[str]) -> dict[str, Any]:
    schema = copy.deepcopy(multipart["schema"])
    for field in file_fields:
        schema.get("properties", {}).pop(field, None)
    if "required" in schema:
        schema["required"] = [r for r in schema["required"] if r not in file_fields] or None
        if schema["required"] is None:
            del schema["required"]
    return {"schema": schema}


def fix_spec(
    spec: dict[str, Any], file_fields: dict[str, frozenset[str]], auth: bool, models: list[str]
) -> dict[str, Any]:
    """BentoML's OpenAPI document for the genlab service -> a valid, complete OpenAPI 3.0 document.

    ``file_fields``: route -> its file-upload fields (every genlab API route is a key); ``auth``:
    whether an API key guards the routes; ``models``: the names this server answers to (the
    ``model`` field's enum).
    """
    spec = copy.deepcopy(spec)
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict):
                _restore_operation_unions(operation, spec.get("components", {}).get("schemas", {}))
    spec = _to_openapi_30(spec)
    for schema in spec.get("components", {}).get("schemas", {}).values():
        if "model" in schema.get("properties", {}) and schema.get("title", "").endswith("__Input"):
            schema["properties"]["model"]["enum"] = [*models, None]
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}}
    for route, item in spec.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if route in file_fields:
                for status, description in ERROR_STATUSES.items():
                    responses[status] = {"description": description, "content": error}
                if route in SUCCESS_CONTENT:
                    responses["200"] = {
                        "description": "Successful Response",
                        "content": SUCCESS_CONTENT[route],
                        "headers": {name: HEADERS[name] for name in SUCCESS_HEADERS[route]},
                    }
                content = operation.get("requestBody", {}).get("content", {})
                for media in content.values():
                    model = media.get("schema", {}).get("properties", {}).get("model")
                    if model is not None:
                        model["enum"] = [*models, None]
                if file_fields[route] and "multipart/form-data" in content:
                    content["application/json"] = _json_body(content["multipart/form-data"], file_fields[route])
            if auth and route not in HEALTH_PATHS:
                responses["401"] = {"description": "Missing or wrong API key", "content": error}
                operation["security"] = [{"bearer": []}]
    if auth:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return spec
