"""genlab's edge: one ASGI middleware in front of the BentoML app, for what BentoML does not do.

In order, for every HTTP request:

1. **Access control.** With ``GENLAB_API_KEY`` set, every route except the health probes needs
   ``Authorization: Bearer <key>`` (compared in constant time); otherwise 401.
2. **Body limit before parsing.** A body above ``GENLAB_MAX_BODY_BYTES`` is refused with 413 as
   soon as its ``Content-Length`` says so, or while it is received, before a byte of it is
   parsed (BentoML reads and parses whole bodies before validating them).
3. **Bodies BentoML mishandles** (BentoML 1.4.39): a ``multipart/form-data`` request without a
   boundary (a 500 in BentoML); a text part, or a JSON or form body that is a URL, where a file is
   expected (BentoML would *download that URL* server-side: a 500 at best, a request forgery at
   worst; ``_bentoml_impl/serde.py``); a file field in a JSON body (BentoML would hand the
   endpoint a server-side ``Path`` the client chose), or in an ``application/x-www-form-urlencoded``
   body (parsed as multipart, with the same URL download). Each gets a 400 naming the field.
4. **One error shape.** Every 4xx the app answers is ``{"error": message, "field": name}``:
   genlab's own refusals already are; BentoML's validation errors (``{"error", "detail": [...]}``)
   get the first field named in ``detail``; its other 4xx (a JSON *array* in 1.4.39) are rewrapped.
5. **An OpenAPI document that tools accept** at ``/docs.json``: see :mod:`service.openapi`.
"""

from __future__ import annotations

import hmac
import json
import re
from urllib.parse import parse_qsl
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_BOUNDARY = re.compile(rb'boundary="?([^";,]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]*)"([^\r\n]*)', re.IGNORECASE)


def error_body(message: str, field: str) -> bytes:
    return json.dumps({"error": message, "field": field}).encode()


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return b""


def file_part_problem(body: bytes, content_type: bytes, file_fields: frozenset[str]) -> tuple[str, str] | None:
    """(field, message) when a multipart body is malformed or sends text where a file is expected, else None.

    Reads only the structure and the part headers; the parts themselves are left to BentoML's parser
    (which answers a malformed body with a 500).
    """
    match = _BOUNDARY.search(content_type)
    if not match:
        return "Content-Type", "multipart/form-data needs a boundary parameter"
    pieces = body.split(b"--" + match.group(1))
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        return "body", "malformed multipart/form-data: no closing boundary"
    for part in pieces[1:-1]:
        head, separator, _ = part.partition(b"\r\n\r\n")
        disposition = _DISPOSITION.search(head)
        if not part.startswith(b"\r\n") or not separator or disposition is None:
            return "body", "malformed multipart/form-data: every part needs a Content-Disposition header with a name"
        name = disposition.group(1).decode("utf-8", "replace")
        if name in file_fields and b"filename=" not in disposition.group(2).lower():
            return name, "must be a file part (with a filename), not a text field"
    return None


def validation_error_to_body(payload: Any) -> bytes:
    """BentoML's 4xx bodies -> ``{"error", "field"}``; genlab's own pass unchanged."""
    if isinstance(payload, dict) and "field" in payload and "error" in payload:
        return json.dumps(payload).encode()
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list) and payload["detail"]:
        parts, field = [], None
        for item in payload["detail"]:
            loc = [str(x) for x in item.get("loc", ()) if x not in ("body",)]
            field = field or (loc[0] if loc else "body")
            parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', 'invalid')}")
        return error_body("; ".join(parts), field or "body")
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]
    message = payload.get("error", "bad request") if isinstance(payload, dict) else str(payload)
    return error_body(str(message), "body")


class Edge:
    """The middleware (``Genlab.add_asgi_middleware(Edge, ...)``); see the module docstring."""

    def __init__(self, app: Any, api_key: str = "", max_body_bytes: int = 32 << 20,
                 file_fields: dict[str, frozenset[str]] | None = None, openapi: Callable[[dict], dict] | None = None,
                 open_paths: tuple[str, ...] = ()):
        self.app = app
        self.api_key = api_key.encode()
        self.max_body_bytes = max_body_bytes
        self.file_fields = file_fields or {}  # route -> the fields that must be file parts
        self.openapi = openapi
        self.open_paths = open_paths
        self._spec: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.api_key and path not in self.open_paths and not self._authorized(scope):
            return await respond(send, 401, error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                                       "Authorization"), [(b"www-authenticate", b"Bearer")])
        if scope.get("method") == "GET" and path == "/docs.json" and self.openapi is not None:
            return await self._docs(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body = await self._read_body(scope, receive, send)
        if body is None:
            return  # refused (413) or the client went away
        problem = self._body_problem(scope, path, body)
        if problem is not None:
            status, field, message = problem
            return await respond(send, status, error_body(message, field))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect

        await self.app(scope, replay, self._normalising(send))

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, token = _header(scope, b"authorization").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await respond(send, 413, error_body(f"request body is {int(declared):,} bytes; the limit is {limit:,}", "body"),
                          [(b"connection", b"close")])
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await respond(send, 413, error_body(f"request body exceeds the limit of {limit:,} bytes", "body"),
                              [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _body_problem(self, scope: Scope, path: str, body: bytes) -> tuple[int, str, str] | None:
        content_type = _header(scope, b"content-type").lower()
        media = content_type.split(b";")[0].strip()
        file_fields = self.file_fields.get(path)
        if file_fields is None:  # not one of genlab's API routes
            return None
        if media == b"multipart/form-data":
            problem = file_part_problem(body, content_type, file_fields)
            return None if problem is None else (400, *problem)
        if media == b"application/x-www-form-urlencoded":  # BentoML's own client sends these when no file is attached
            sent = {key for key, _ in parse_qsl(body.decode("latin-1"), keep_blank_values=True)}
            for field in sorted(sent & file_fields):
                return 400, field, "must be a file part of a multipart/form-data body, not a form value"
            return None
        if body.strip() and not body.lstrip().startswith(b"{"):
            return 400, "body", "the request body must be a JSON object (or multipart/form-data for file uploads)"
        for field in file_fields:  # a JSON "path" would become a server-side Path: files come only as uploads
            if re.search(rb'"' + re.escape(field.encode()) + rb'"\s*:', body):
                return 400, field, "files are uploaded as multipart/form-data parts; in JSON send the pixels as 'array'"
        return None

    def _normalising(self, send: Send) -> Send:
        """``send`` that rewrites the app's 4xx JSON bodies into ``{"error", "field"}``."""
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def wrapped(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = dict((k.lower(), v) for k, v in message.get("headers", ())).get(b"content-type", b"")
                if 400 <= message["status"] < 500 and content_type.startswith(b"application/json"):
                    start = message
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            try:
                body = validation_error_to_body(json.loads(b"".join(chunks) or b"{}"))
            except ValueError:
                body = error_body(b"".join(chunks).decode("utf-8", "replace")[:500] or "bad request", "body")
            headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return wrapped

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._spec is None:
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
        await respond(send, 200, self._spec)
