"""What genlab's HTTP services share: one error type and one error shape, the exception-handler map that answers
every error in it, request bodies read into pydantic models, the API key in front of everything a process answers,
and a body limit kept while the body is received.

Every error a genlab service answers is ``{"error": message, "field": name}``: the field at fault (a request field,
a header such as ``Authorization``, ``body``, ``path`` for an unknown route, ``method`` for a method the route does
not take, ``server`` for a fault of the server's own).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from genlab.bearer import REFUSAL, headers_authorized

log = logging.getLogger("genlab.web")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
M = TypeVar("M", bound=BaseModel)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class RequestError(Exception):
    """Bad input: answered with ``status`` and ``{"error", "field"}``."""

    def __init__(self, field: str, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field or "body"
        self.message = message
        self.status = status
        self.headers = headers

    def body(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def unknown_field(name: str, known: Collection[str]) -> str:
    """The refusal of a field a route does not take, with the closest name it does take."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {name[:100]!r}{hint} (this route takes: {', '.join(sorted(known))})"


def refused_input(err: ValidationError, known: Collection[str]) -> RequestError:
    """A request model's validation errors -> one 400 naming the first field at fault."""
    errors = err.errors(include_url=False)
    first = errors[0]
    field = str(first["loc"][0]) if first["loc"] else "body"
    if first["type"] == "extra_forbidden":
        return RequestError(field, unknown_field(field, known))
    where = [".".join(map(str, e["loc"])) or "body" for e in errors[:3]]
    return RequestError(field, "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors)))


# -- reading request bodies ---------------------------------------------------------------------------------------
async def read_json(request: Request, model: type[M], max_values: int, files: Collection[str] = ()) -> M:
    """A JSON object body -> ``model``; at most ``max_values`` values (counted before anything is parsed, so no body
    makes the server build millions of objects); a file field's name in JSON is refused (files are uploads)."""
    body = await request.body()
    if not body.strip():
        body = b"{}"
    values = body.count(b",") + 1
    if values > max_values:
        raise RequestError(
            "body",
            f"the JSON body holds about {values:,} values; the limit is {max_values:,} (send large batches as .npy "
            "files to /batch/*)",
            413,
        )
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise RequestError("body", f"not valid JSON ({str(err)[:120]})") from None
    if not isinstance(sent, dict):
        raise RequestError("body", "the request body must be a JSON object (or multipart/form-data for uploads)")
    named = sorted(set(files) & set(sent))
    if named:
        message = "files are uploaded as multipart/form-data parts; in JSON send the pixels as 'array'"
        raise RequestError(named[0], message)
    return validated(model, sent)


async def read_form(
    request: Request, model: type[M], files: Collection[str], max_parts: int, max_text_bytes: int = 1 << 20
) -> tuple[M, dict[str, list[UploadFile]]]:
    """A form body -> (``model`` of its text values, each parsed as JSON where it is JSON, the file parts by field).
    Starlette's parser keeps the limits while it parses: parts, files, the size of a text value."""
    try:
        form: FormData = await request.form(max_files=max_parts, max_fields=max_parts, max_part_size=max_text_bytes)
    except HTTPException as err:  # Starlette's parser refused the body
        detail = str(err.detail)
        raise RequestError(
            "Content-Type" if "boundary" in detail.lower() else "body", detail, err.status_code
        ) from None
    values: dict[str, Any] = {}
    uploads: dict[str, list[UploadFile]] = {name: [] for name in files}
    for name, value in form.multi_items():
        if name in files:
            if not isinstance(value, UploadFile):
                raise RequestError(name, "must be a file part (with a filename) of a multipart/form-data body")
            uploads[name].append(value)
        elif isinstance(value, UploadFile):
            known = [*model.model_fields, *files]
            raise RequestError(
                name, "must be a text value, not a file" if name in known else unknown_field(name, known)
            )
        elif name in values:
            raise RequestError(name, "given twice; send each field once")
        else:
            try:
                values[name] = json.loads(value)
            except RecursionError:
                raise RequestError(name, "nested too deeply") from None
            except ValueError:
                values[name] = value
    return validated(model, values, files), uploads


def validated(model: type[M], values: dict[str, Any], files: Collection[str] = ()) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise refused_input(err, [*model.model_fields, *files]) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


# -- answering errors ---------------------------------------------------------------------------------------------
async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    log.warning("refused %s %s: %s", request.method, request.url.path[:200], str(exc)[:300])
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals: an unknown route (404), a method a route does not take (405), a form it cannot
    parse (400)."""
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 404:
        err = RequestError("path", f"no route {path!r} (the API's routes: see /docs.json)", 404)
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        err = RequestError("method", f"{path} does not take {request.method}; use {allowed}", 405, exc.headers)
    else:
        err = RequestError("body", str(exc.detail), exc.status_code, exc.headers)
    return error_response(err)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path[:200], exc_info=exc)
    return error_response(RequestError("server", f"the server failed ({type(exc).__name__}); please report it", 500))


EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    RequestError: _request_error,
    HTTPException: _http_error,
    Exception: _server_error,
}


# -- in front of everything ---------------------------------------------------------------------------------------
class RequireKey:
    """ASGI middleware: with an API key, 401 for every request but those to ``open_paths`` and under ``open_prefixes``
    (paths with ``..`` are never open)."""

    def __init__(
        self, app: ASGIApp, api_key: str, open_paths: Collection[str] = (), open_prefixes: tuple[str, ...] = ()
    ):
        self.app, self.api_key = app, api_key
        self.open_paths, self.open_prefixes = frozenset(open_paths), open_prefixes

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or (path.startswith(self.open_prefixes) and ".." not in path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and not self.is_open(scope.get("path", ""))
        if guarded and not headers_authorized(scope.get("headers", ()), self.api_key):
            refusal = RequestError("Authorization", REFUSAL, 401, {"www-authenticate": "Bearer"})
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a body above ``max_bytes`` is refused with 413 as soon as its Content-Length says so, or while
    it is received (the app's read of it fails with a :class:`RequestError`), before a byte of it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            refusal = RequestError("body", f"request body is {int(declared):,} bytes; the limit is {limit:,}", 413)
            refusal.headers = {"connection": "close"}
            await error_response(refusal)(scope, receive, send)
            return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise RequestError("body", f"request body exceeds the limit of {limit:,} bytes", 413)
            return message

        await self.app(scope, counting, send)
