"""Form bodies as BentoML will see them, read once at the edge with the same parser and the same rules.

BentoML parses ``multipart/form-data`` with Starlette, which uses python-multipart: the boundary is
``parse_options_header(Content-Type)["boundary"]`` and a part is a *file* exactly when its
``Content-Disposition`` parameters (``parse_options_header`` again) hold ``filename``. The edge
reads the body with that parser and those calls, so what it decides (a file or a text value, a
field's name) is what the endpoint gets. On top it is strict where Starlette is lenient or fails
with a 500: one well-formed ``Content-Type`` with exactly one ``boundary``; a closing boundary;
nothing before the first boundary; a bounded number of parts, name length and text size; and every
text value parseable as BentoML will parse it (``json.loads``, with strings kept as strings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[^"\\\r\n]|\\[^\r\n])*"'
_MEDIA = re.compile(rb"[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")[ \t]*")
_PARAMETER = re.compile(
    rb";[ \t]*(?:(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb")[ \t]*)?"
)  # RFC 9110 allows "a/b;"
MAX_BOUNDARY = 70  # RFC 2046
_STEP = np.zeros(256, np.int32)  # byte -> change of nesting: +1 for [ and {, -1 for ] and }
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


class FormError(Exception):
    """A form body the edge refuses: ``status``, the field at fault (or ``body`` / ``Content-Type``), a message."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field or "body", message, status  # a part may have an empty name


@dataclass(frozen=True)
class FormLimits:
    max_parts: int = 300  # file parts and text values together
    max_name_chars: int = 128
    max_text_bytes: int = 1 << 20  # Starlette's own limit for a text part: above it, BentoML answers 500
    max_json_depth: int = 64


@dataclass
class Part:
    name: str
    is_file: bool
    size: int = 0
    text: bytearray = field(default_factory=bytearray)  # a text part's value (files are only counted)


def media_parameters(content_type: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``type/subtype; name=value ...`` (RFC 9110 grammar, strictly) -> (lower-case media type, [(lower-case name,
    unquoted value)]); anything else is a :class:`FormError` naming Content-Type."""
    media = _MEDIA.match(content_type)
    if media is None:
        raise FormError("Content-Type", "not a media type (type/subtype)")
    parameters, position = [], media.end()
    while position < len(content_type):
        match = _PARAMETER.match(content_type, position)
        if match is None:
            raise FormError("Content-Type", f"malformed parameter at character {position}")
        position = match.end()
        if match.group(1) is None:
            continue
        value = match.group(2)
        if value.startswith(b'"'):
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
        parameters.append((match.group(1).lower(), value))
    return media.group(1).lower(), parameters


def multipart_boundary(content_type: bytes) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type: exactly one, 1..70 characters, and the one Starlette
    will read (case kept: browsers send ``----WebKitFormBoundary...``)."""
    _, parameters = media_parameters(content_type)
    boundaries = [value for name, value in parameters if name == b"boundary"]
    if not boundaries:
        raise FormError("Content-Type", "multipart/form-data needs a boundary parameter")
    if len(boundaries) > 1:
        raise FormError("Content-Type", "more than one boundary parameter")
    charsets = {value.lower() for name, value in parameters if name == b"charset"}
    if not charsets <= {
        b"utf-8",
        b"us-ascii",
    }:  # Starlette would decode field names with it: "images" can hide in UTF-16
        raise FormError("Content-Type", "the charset of a form must be utf-8")
    boundary = boundaries[0]
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise FormError("Content-Type", f"the boundary must be 1..{MAX_BOUNDARY} characters")
    if parse_options_header(content_type)[1].get(b"boundary") != boundary:
        raise FormError("Content-Type", "ambiguous boundary parameter")
    return boundary


def _part(headers: list[tuple[bytes, bytes]], before: int, limits: FormLimits) -> Part:
    """The part these headers (lower-case names, values) begin, after ``before`` others: named, and a file or a text
    value, as Starlette will read it; checked against ``limits``."""
    dispositions = [v for k, v in headers if k == b"content-disposition"]
    if len(dispositions) != 1:
        raise FormError("body", "every part needs exactly one Content-Disposition header")
    options = parse_options_header(dispositions[0])[1]
    if b"name" not in options:
        raise FormError("body", "every part's Content-Disposition needs a name")
    if len(options[b"name"]) > limits.max_name_chars:
        raise FormError("body", f"a field name is longer than {limits.max_name_chars} characters")
    if before >= limits.max_parts:
        raise FormError("body", f"more than {limits.max_parts} parts", 413)
    return Part(options[b"name"].decode("utf-8", "replace"), b"filename" in options)


def multipart_parts(body: bytes, boundary: bytes, limits: FormLimits) -> list[Part]:
    """Every part of a multipart body, named and sorted into files and text values as Starlette will; checked
    against ``limits``."""
    parts: list[Part] = []
    headers: list[tuple[bytes, bytes]] = []
    name, value = bytearray(), bytearray()
    ended = False

    def header_end() -> None:
        headers.append((bytes(name).lower(), bytes(value)))
        name.clear()
        value.clear()

    def headers_finished() -> None:
        parts.append(_part(headers, len(parts), limits))
        headers.clear()

    def data(chunk: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.size += end - start
        if not part.is_file:
            if part.size > limits.max_text_bytes:
                raise FormError(
                    part.name, f"text value above {limits.max_text_bytes:,} bytes (send files as file parts)", 413
                )
            part.text += chunk[start:end]

    def end() -> None:
        nonlocal ended
        ended = True

    callbacks = {
        "on_header_field": lambda d, s, e: name.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": header_end,
        "on_headers_finished": headers_finished,
        "on_part_data": data,
        "on_end": end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]  # (its TypedDict of callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as err:
        raise FormError("body", f"malformed multipart/form-data ({str(err)[:120]})") from None
    if not ended:
        raise FormError("body", "malformed multipart/form-data: no closing boundary")
    for part in parts:
        if not part.is_file:
            check_form_value(part.name, bytes(part.text), limits)
    return parts


def urlencoded_parts(body: bytes, limits: FormLimits) -> list[Part]:
    """An ``application/x-www-form-urlencoded`` body (which BentoML reads like a form) as text parts, checked alike."""
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=limits.max_parts)
    except ValueError:
        raise FormError("body", f"more than {limits.max_parts} form fields", 413) from None
    parts = [Part(name, False, len(value), bytearray(value.encode("utf-8", "replace"))) for name, value in pairs]
    for part in parts:
        if len(part.name) > limits.max_name_chars:
            raise FormError("body", f"a field name is longer than {limits.max_name_chars} characters")
        check_form_value(part.name, bytes(part.text), limits)
    return parts


def check_form_value(name: str, text: bytes, limits: FormLimits) -> None:
    """A text value BentoML will ``json.loads`` (keeping it as a string where that fails): refuse what makes that
    raise anything else (nesting past the recursion limit, integers of thousands of digits)."""
    if json_depth(text) > limits.max_json_depth:
        raise FormError(name, f"nested deeper than {limits.max_json_depth} levels")
    try:
        json.loads(text)
    except json.JSONDecodeError:
        pass  # a plain string, as BentoML keeps it
    except (ValueError, RecursionError) as err:
        raise FormError(name, f"not a value this service reads ({str(err)[:120]})") from None


def json_depth(text: bytes) -> int:
    """An upper bound on the nesting of a JSON text: opening minus closing brackets, at their deepest (brackets inside
    strings count too, which only ever overstates it)."""
    if not text:
        return 0
    return int(max(0, np.cumsum(_STEP[np.frombuffer(text, np.uint8)]).max()))
