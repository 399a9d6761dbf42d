"""The edge's reading of form bodies, in-process: it must agree with the parser BentoML uses behind it.

Property-based (hypothesis): for any multipart body built from hostile pieces (odd parameters, a
``filename=`` inside another parameter's value, mixed-case or repeated boundaries, bytes before
the first boundary, missing closing boundaries), whenever the edge lets a body through, Starlette's
parser (what BentoML calls) reads it without an error, and every part named like a file field is a
file there. Plain cases pin the refusals the fuzzing found once.
"""

from __future__ import annotations

import asyncio

import pytest
from genlab.service.edge import Edge
from genlab.service.forms import FormLimits, json_depth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

ROUTE = "/reconstruct"
FILE_FIELDS = frozenset({"images"})
EDGE = Edge(app=None, file_fields={ROUTE: FILE_FIELDS}, form_limits=FormLimits(max_parts=20))


def edge_verdict(content_type: bytes, body: bytes) -> tuple[int, str, str] | None:
    return EDGE._body_problem({"headers": [(b"content-type", content_type)]}, ROUTE, body)


def starlette_parts(content_type: bytes, body: bytes) -> list[tuple[str, object]]:
    async def stream():
        yield body

    async def parse():
        form = await MultiPartParser(Headers(raw=[(b"content-type", content_type)]), stream()).parse()
        return list(form.multi_items())

    return asyncio.run(parse())


def part(name: bytes, extra: bytes, value: bytes, boundary: bytes) -> bytes:
    return (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + name
        + b'"'
        + extra
        + b"\r\n\r\n"
        + value
        + b"\r\n"
    )


BOUNDARY = st.text("AbCdEf0123456789-_'", min_size=1, max_size=20).map(str.encode)
NAME = st.sampled_from([b"images", b"Images", b"label", b"model", b"images[]", b"", "images".encode("utf-16-le")])
EXTRA = st.sampled_from(
    [
        b"",
        b'; filename="a.png"',
        b'; x="filename="',
        b"; xfilename=a",
        b"; filename*=UTF-8''a.png",
        b'; filename=""',
        b"; FILENAME=a.png",
        b'; name="images"',
        b'; x="; filename=a"',
        b";filename=a",
        b'; filename="a.png"; filename="b.png"',
    ]
)
VALUE = st.sampled_from([b"x", b"http://127.0.0.1:1/x.png", b"/etc/passwd", b"[[[1]]]", b"\x89PNG\r\n\x1a\n", b""])


@st.composite
def multipart_requests(draw) -> tuple[bytes, bytes]:
    boundary = draw(BOUNDARY)
    header_boundary = draw(st.sampled_from([boundary, boundary.lower(), boundary.upper(), b'"' + boundary + b'"']))
    parameters = draw(
        st.sampled_from(
            [
                b"; boundary=" + header_boundary,
                b";boundary=" + header_boundary,
                b"; boundary=" + header_boundary + b"; boundary=other",
                b"; charset=utf-8; boundary=" + header_boundary,
                b'; x="boundary=zz"; boundary=' + header_boundary,
                b"; Boundary=" + header_boundary,
                b"; boundary=" + header_boundary + b";",
                b"; charset=utf-16-le; boundary=" + header_boundary,
            ]
        )
    )
    parts = draw(st.lists(st.tuples(NAME, EXTRA, VALUE), min_size=0, max_size=4))
    body = b"".join(part(n, e, v, boundary) for n, e, v in parts)
    body = draw(st.sampled_from([b"", b"junk", b"\r\n"])) + body
    body += draw(
        st.sampled_from([b"--" + boundary + b"--\r\n", b"--" + boundary + b"--", b"", b"--" + boundary + b"\r\n"])
    )
    return b"multipart/form-data" + parameters, body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multipart_requests())
def test_what_the_edge_lets_through_starlette_reads_the_same_way(request):
    content_type, body = request
    verdict = edge_verdict(content_type, body)
    if verdict is not None:
        status, field, message = verdict
        assert 400 <= status < 500 and field and message
        return
    try:
        items = starlette_parts(content_type, body)
    except MultiPartException as err:  # BentoML turns this into a 500: the edge must have refused it
        pytest.fail(f"edge passed a body Starlette cannot read ({err}): {content_type!r} {body!r}")
    for name, value in items:
        if name in FILE_FIELDS:
            assert isinstance(value, UploadFile), (name, value, content_type, body)  # never a text value


@pytest.mark.parametrize(
    "content_type, body, field",
    [
        # a text value where a file is expected, dressed up as a file part
        (
            b"multipart/form-data; boundary=b",
            part(b"images", b'; x="filename="', b"http://127.0.0.1:1/x", b"b") + b"--b--\r\n",
            "images",
        ),
        (
            b"multipart/form-data; boundary=b",
            part(b"images", b"; xfilename=a", b"/etc/passwd", b"b") + b"--b--\r\n",
            "images",
        ),
        # two boundaries: which one the parser reads is not for the client to pick
        (
            b"multipart/form-data; boundary=b; boundary=c",
            part(b"images", b'; filename="a"', b"x", b"b") + b"--b--\r\n",
            "Content-Type",
        ),
        (b'multipart/form-data; x="; boundary=c"', b"", "Content-Type"),
        # Starlette decodes names with the form's charset: in UTF-16 these bytes are "images"
        (
            b"multipart/form-data; charset=utf-16-le; boundary=b",
            part("images".encode("utf-16-le"), b"", b"/etc/passwd", b"b") + b"--b--\r\n",
            "Content-Type",
        ),
        (
            b"multipart/form-data; boundary=b",
            b"junk" + part(b"images", b'; filename="a"', b"x", b"b") + b"--b--\r\n",
            "body",
        ),
        (
            b"multipart/form-data; boundary=b",
            part(b"images", b'; filename="a"', b"x", b"b"),
            "body",
        ),  # no closing boundary
        (
            b"multipart/form-data; boundary=b",
            b"".join(part(b"f", b"", b"1", b"b") for _ in range(21)) + b"--b--\r\n",
            "body",
        ),
        (b"multipart/form-data; boundary=b", part(b"f" * 200, b"", b"1", b"b") + b"--b--\r\n", "body"),
        (
            b"multipart/form-data; boundary=b",
            part(b"label", b"", b"[" * 100 + b"]" * 100, b"b") + b"--b--\r\n",
            "label",
        ),
        (b"multipart/form-data; boundary=b", part(b"label", b"", b"9" * 5000, b"b") + b"--b--\r\n", "label"),
        (b"application/x-www-form-urlencoded", b"images=http%3A%2F%2F127.0.0.1%3A1%2Fx.png", "images"),
        (b"application/x-www-form-urlencoded", b"&".join(b"f%d=1" % i for i in range(21)), "body"),
        (b"application/json", b'{"\\u0069mages": ["/etc/passwd"]}', "images"),  # an escaped key is still the file field
        (b"application/json", b'{"images": 1, "array": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
        (b"application/json; charset=utf-8; =x", b"{}", "Content-Type"),
    ],
)
def test_the_edge_refuses_naming_the_field(content_type, body, field):
    verdict = edge_verdict(content_type, body)
    assert verdict is not None and verdict[1] == field and 400 <= verdict[0] < 500, verdict


def test_a_browser_boundary_keeps_its_case():
    boundary = b"----WebKitFormBoundaryAbC7xYz"
    body = part(b"images", b'; filename="digit.png"', b"\x89PNG", boundary) + b"--" + boundary + b"--\r\n"
    assert edge_verdict(b"multipart/form-data; boundary=" + boundary, body) is None
    assert edge_verdict(b'multipart/form-data; boundary="' + boundary + b'"', body) is None


def test_a_json_body_is_bounded_by_the_values_it_holds():
    small = Edge(app=None, file_fields={ROUTE: FILE_FIELDS}, json_values=lambda: 1000)
    scope = {"headers": [(b"content-type", b"application/json")]}
    assert small._body_problem(scope, ROUTE, b'{"array": [' + b",".join([b"0"] * 999) + b"]}") is None
    status, field, message = small._body_problem(scope, ROUTE, b'{"array": [' + b",".join([b"0"] * 1001) + b"]}")
    assert (status, field) == (413, "body") and "1,001" in message


@pytest.mark.parametrize(
    "text, depth", [(b"", 0), (b"1", 0), (b"[1, [2]]", 2), (b'{"a": [[]], "b": {}}', 3), (b"]][[", 0)]
)
def test_json_depth_bounds_the_nesting(text, depth):
    assert json_depth(text) == depth
