"""genlab's edge: one ASGI middleware in front of the BentoML app, for what BentoML does not do.

In order, for every HTTP request:

1. **Access control.** With ``GENLAB_API_KEY`` set, every route except the health probes needs
   ``Authorization: Bearer <key>`` (compared in constant time); otherwise 401.
2. **Body limit before parsing.** A body above ``GENLAB_MAX_BODY_BYTES`` is refused with 413 as
   soon as its ``Content-Length`` says so, or while it is received, before a byte of it is
   parsed (BentoML reads and parses whole bodies before validating them).
3. **Bodies read as BentoML will read them, and refused where it would fail or go astray.** Forms
   (``multipart/form-data``, ``application/x-www-form-urlencoded``) are parsed once here with the
   parser and rules BentoML's Starlette uses (:mod:`service.forms`): a text value where a file is
   expected is a 400 naming the field (BentoML would *download that URL* server-side, or read a
   server path), and so is anything malformed or ambiguous, before BentoML can turn it into a 500.
   Forms have a bounded number of parts, name length and text size. A JSON body must be an object
   holding at most ``max_json_values`` values (counted before it is parsed, so no body can make the
   server build millions of Python objects) and no file field (BentoML would hand the endpoint a
   server-side ``Path`` the client chose).
4. **One error shape.** Every error the server answers is ``{"error": message, "field": name}``:
   genlab's own refusals already are; BentoML's validation errors (``{"error", "detail": [...]}``)
   get the first field named in ``detail`` (an unknown field is named with the closest valid one);
   its other 4xx (a JSON *array* in 1.4.39) are rewrapped, and so are the router's plain-text 404
   (field ``path``) and 405 (field ``method``) and any 5xx (field ``server``). A form part that the
   route does not take is refused here, before BentoML would try to read it as text.
5. **GET for read-only routes**: ``GET /models`` is answered as ``POST /models``.
6. **An OpenAPI document that tools accept** at ``/docs.json``: see :mod:`service.openapi`.
7. **Pages at their addresses.** ``rewrites`` maps a GET path to the one that answers it (the browser page at ``/``,
   BentoML's Swagger UI at ``/docs``). Paths under ``open_prefixes`` (the page's static files, which hold no data)
   need no key. Paths under ``own_errors`` (the Open Inference Protocol's ``/v2``) keep the access control and body
   limit but answer their errors in their own protocol's shape.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from genlab.service.forms import (
    FormError,
    FormLimits,
    media_parameters,
    multipart_boundary,
    multipart_parts,
    urlencoded_parts,
)
from genlab.service.settings import Settings

from genlab.bearer import REFUSAL, headers_authorized

JSON_BYTES_PER_VALUE = 32  # room for a float with all its digits: a JSON body's bytes are bounded with its values
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def error_body(message: str, field: str) -> bytes:
    return json.dumps({"error": message, "field": field}).encode()


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return b""


def unknown_field(name: str, known: frozenset[str]) -> str:
    """The refusal of a field the route does not take, with the closest name it does take."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {name[:100]!r}{hint} (this route takes: {', '.join(sorted(known))})"


def validation_error_to_body(payload: Any, known: frozenset[str] = frozenset()) -> bytes:
    """BentoML's 4xx bodies -> ``{"error", "field"}``; genlab's own pass unchanged. ``known``: the route's fields, which
    name the closest valid field when the error is an unknown one (pydantic's ``extra_forbidden``)."""
    if isinstance(payload, dict) and "field" in payload and "error" in payload:
        return json.dumps(payload).encode()
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list) and payload["detail"]:
        parts, field = [], None
        for item in payload["detail"]:
            loc = [str(x) for x in item.get("loc", ()) if x not in ("body",)]
            field = field or (loc[0] if loc else "body")
            if item.get("type") == "extra_forbidden" and loc and known:
                parts.append(unknown_field(loc[0], known))
            else:
                parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', 'invalid')}")
        return error_body("; ".join(parts), field or "body")
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]
    message = payload.get("error", "bad request") if isinstance(payload, dict) else str(payload)
    return error_body(str(message), "body")


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app that reads a body the edge has already read (``body``), then the client's disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect

    return replay


def _json_type(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


def _json_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers, as for a JSON body of two bytes."""
    kept = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in (b"content-type", b"content-length")]
    return [*kept, (b"content-type", b"application/json"), (b"content-length", b"2")]


class Edge:
    """The middleware (``Genlab.add_asgi_middleware(Edge, ...)``); see the module docstring."""

    def __init__(
        self,
        app: Any,
        api_key: str = "",
        max_body_bytes: int = Settings.max_body_bytes,
        file_fields: dict[str, frozenset[str]] | None = None,
        fields: dict[str, frozenset[str]] | None = None,
        openapi: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        open_paths: tuple[str, ...] = (),
        json_values: Callable[[], int] = lambda: 1 << 20,
        form_limits: FormLimits | None = None,
        get_routes: frozenset[str] = frozenset(),
        rewrites: dict[str, str] | None = None,
        open_prefixes: tuple[str, ...] = (),
        own_errors: tuple[str, ...] = (),
    ):
        self.app = app
        self.api_key = api_key.encode()
        self.max_body_bytes = max_body_bytes
        self.file_fields = file_fields or {}  # route -> the fields that must be file parts
        self.fields = fields or {}  # route -> every field it takes (a route not named here is not checked)
        self.openapi = openapi
        self.open_paths = open_paths
        self._json_values = json_values  # the most values a JSON body may hold (read from the models on first use)
        self.form_limits = form_limits or FormLimits()
        self.get_routes = get_routes  # routes without inputs that answer GET too (e.g. /models)
        self.rewrites = rewrites or {}  # GET path -> the path that answers it
        self.open_prefixes = open_prefixes  # paths under these need no key
        self.own_errors = own_errors  # paths under these answer errors in their own shape
        self._spec: bytes | None = None

    @functools.cached_property
    def max_json_values(self) -> int:
        return self._json_values()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if not self._open(path) and not headers_authorized(scope.get("headers", ()), self.api_key):
            return await respond(
                send,
                401,
                error_body(REFUSAL, "Authorization"),
                [(b"www-authenticate", b"Bearer")],
            )
        method = scope.get("method")
        if method in ("GET", "HEAD") and path in self.rewrites:
            target = self.rewrites[path]
            scope = {**scope, "path": target, "raw_path": target.encode()}
            path = target
        if path.startswith(self.own_errors):
            return await self._own_errors(scope, receive, send)
        if method == "GET" and path == "/docs.json" and self.openapi is not None:
            return await self._docs(scope, receive, send)
        if method == "GET" and path in self.get_routes:  # a read-only route answers GET as well as POST
            scope, receive = {**scope, "method": "POST", "headers": _json_headers(scope)}, _replay(b"{}", receive)
        elif method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, self._normalising(send, scope))
            return
        else:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return  # refused (413) or the client went away
            problem = self._body_problem(scope, path, body)
            if problem is not None:
                status, field, message = problem
                return await respond(send, status, error_body(message, field))
            receive = _replay(body, receive)
        await self.app(scope, receive, self._normalising(send, scope))

    def _open(self, path: str) -> bool:
        return path in self.open_paths or (path.startswith(self.open_prefixes) and ".." not in path)

    async def _own_errors(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request to a path that answers its own errors: its body is read within the limit, then passed on."""
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive, send)
            if body is None:
                return  # refused (413) or the client went away
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await respond(
                send,
                413,
                error_body(f"request body is {int(declared):,} bytes; the limit is {limit:,}", "body"),
                [(b"connection", b"close")],
            )
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await respond(
                    send,
                    413,
                    error_body(f"request body exceeds the limit of {limit:,} bytes", "body"),
                    [(b"connection", b"close")],
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _body_problem(self, scope: Scope, path: str, body: bytes) -> tuple[int, str, str] | None:
        file_fields = self.file_fields.get(path)
        if file_fields is None:  # not one of genlab's API routes
            return None
        content_type = _header(scope, b"content-type")
        try:
            media = media_parameters(content_type)[0] if content_type else b""
            if media == b"multipart/form-data":
                parts = multipart_parts(body, multipart_boundary(content_type), self.form_limits)
            elif media == b"application/x-www-form-urlencoded":  # BentoML's client sends these when no file is attached
                parts = urlencoded_parts(body, self.form_limits)
            else:
                return self._json_problem(body, file_fields)
        except FormError as err:
            return err.status, err.field, err.message
        known = self.fields.get(path)
        for part in parts:
            if known is not None and part.name not in known:
                return 400, part.name, unknown_field(part.name, known)
            if part.name in file_fields and not part.is_file:
                return (
                    400,
                    part.name,
                    "must be a file part (with a filename) of a multipart/form-data body, not a text value",
                )
        return None

    def _json_problem(self, body: bytes, file_fields: frozenset[str]) -> tuple[int, str, str] | None:
        """A JSON body must be an object, within the value budget, without file fields."""
        if not body.strip():
            return None
        if not body.lstrip().startswith(b"{"):
            return 400, "body", "the request body must be a JSON object (or multipart/form-data for file uploads)"
        values = body.count(b",") + 1  # an upper bound on the numbers in it, counted before anything is parsed
        limit = self.max_json_values
        if values > limit or len(body) > JSON_BYTES_PER_VALUE * limit + (1 << 20):
            return (
                413,
                "body",
                (
                    f"the JSON body holds about {values:,} values in {len(body):,} bytes; the limit is {limit:,} "
                    "values (send large batches as .npy files to /batch/*)"
                ),
            )
        named = [name for name in file_fields if f'"{name}"'.encode() in body]
        if not named and b"\\" not in body:
            return None  # no file field can be in it (not even spelt with escapes): parsing is left to BentoML
        try:
            sent = json.loads(body)
        except (ValueError, RecursionError) as err:
            return 400, "body", f"not valid JSON ({str(err)[:120]})"
        for name in sorted(file_fields & set(sent) if isinstance(sent, dict) else ()):
            # a JSON "path" would become a server-side Path: files come only as uploads
            return 400, name, "files are uploaded as multipart/form-data parts; in JSON send the pixels as 'array'"
        return None

    def _normalising(self, send: Send, scope: Scope) -> Send:
        """``send`` that gives every error the app answers the one shape ``{"error", "field"}``: its 4xx JSON bodies
        (BentoML's validation errors and other refusals), the router's plain-text 404 and 405, and server errors
        (field ``server``)."""
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def wrapped(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] >= 400 and scope.get("method") != "HEAD":
                    start = message
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = self._error_body(start, b"".join(chunks), scope)
            headers = [
                (k, v) for k, v in start.get("headers", ()) if k.lower() not in (b"content-length", b"content-type")
            ]
            await send({**start, "headers": [*headers, *_json_type(len(body))]})
            await send({"type": "http.response.body", "body": body})

        return wrapped

    def _error_body(self, start: dict[str, Any], body: bytes, scope: Scope) -> bytes:
        status, path = start["status"], scope.get("path", "")
        content_type = dict((k.lower(), v) for k, v in start.get("headers", ())).get(b"content-type", b"")
        if status == 404 and not content_type.startswith(b"application/json"):
            routes = ", ".join(sorted(self.file_fields))
            return error_body(
                f"no route {path[:200]!r}; the API's routes: {routes} (OpenAPI document: /docs.json)", "path"
            )
        if status == 405:
            allowed = dict((k.lower(), v) for k, v in start.get("headers", ())).get(b"allow", b"POST").decode()
            return error_body(f"{path[:200]} does not take {scope.get('method')}; use {allowed}", "method")
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {"error": body.decode("utf-8", "replace")[:500] or "bad request"}
        if status >= 500:
            if isinstance(payload, list) and payload and isinstance(payload[0], dict):
                payload = payload[0]
            message = payload.get("error", "server error") if isinstance(payload, dict) else str(payload)
            field = payload.get("field", "server") if isinstance(payload, dict) else "server"
            return error_body(str(message), str(field))
        return validation_error_to_body(payload, self.fields.get(path, frozenset()))

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._spec is None and self.openapi is not None:
            captured: dict[str, Any] = {"status": 500, "body": []}

            async def capture(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    captured["status"] = message["status"]
                elif message["type"] == "http.response.body":
                    captured["body"].append(message.get("body", b""))

            await self.app(scope, receive, capture)
            if captured["status"] != 200:
                return await respond(send, 500, error_body("could not build the OpenAPI document", "body"))
            self._spec = json.dumps(self.openapi(json.loads(b"".join(captured["body"])))).encode()
        await respond(send, 200, self._spec or b"{}")
