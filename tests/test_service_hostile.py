"""A real `genlab serve` (default limits, one worker) against a hostile or careless client.

Each test is one way a client can try to freeze the server, slip a value past the parser, or make it
fail with a 500; `running_server` also fails the module if any request left a traceback in the log.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_fixtures import running_server

UPLOAD_ROUTES = {"/reconstruct": "images", "/anomaly-score": "images", "/batch/decode": "z", "/batch/score": "images"}


@pytest.fixture(scope="module")
def url(exports, tmp_path_factory):
    with running_server([exports["vaegan"]], tmp_path_factory.mktemp("hostile") / "serve.log") as url:
        yield url


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache  # the same bytes each time (a 4096 px one takes a moment to compress; some tests send hundreds)
def blank_png(side: int) -> bytes:
    """An all-black greyscale PNG of side x side pixels: a few KB on the wire, side**2 bytes decoded."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes((side + 1) * side), 9))
        + _chunk(b"IEND", b"")
    )


def _refused(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["field"] == field and body["error"], body
    return body["error"]


def _livez_while(url: str, job) -> tuple[list[float], object]:
    """Poll /livez every 50 ms while ``job()`` runs in another thread: the probe's latencies and the job's result."""
    latencies = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool, httpx.Client(timeout=30) as probe:
        future = pool.submit(job)
        while not future.done():
            start = time.perf_counter()
            assert probe.get(f"{url}/livez").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        return latencies, future.result()


def test_a_decompression_flood_is_refused_from_the_headers_and_livez_keeps_answering(url):
    """256 blank 4096x4096 PNGs, 16 KB each: each within the per-image limit, 4.3 G pixels together."""
    files = [("images", (f"{i}.png", blank_png(4096))) for i in range(256)]
    latencies, response = _livez_while(url, lambda: httpx.post(f"{url}/anomaly-score", files=files, timeout=120))
    assert "the limit per request is" in _refused(response, 413, "images")
    assert max(latencies) < 1.0, max(latencies)


def test_livez_answers_within_a_second_while_maximal_uploads_are_decoded(url):
    """Uploads at the request's pixel budget (64 Mi pixels: 16 of 2048x2048), back to back from two clients."""
    files = [("images", (f"{i}.png", blank_png(2048))) for i in range(16)]

    def uploads() -> list[int]:
        with httpx.Client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda _: client.post(f"{url}/anomaly-score", files=files).status_code, range(4)))

    latencies, statuses = _livez_while(url, uploads)
    assert statuses == [200] * 4
    assert len(latencies) >= 3 and max(latencies) < 1.0, (len(latencies), max(latencies))


def _png_digit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("route", sorted(UPLOAD_ROUTES))
def test_a_browsers_upload_with_a_mixed_case_boundary_is_accepted(url, route):
    field = UPLOAD_ROUTES[route]
    payload = (
        _npy(np.zeros((2, 4), np.float32))
        if field == "z"
        else _npy(np.zeros((2, 1, 28, 28), np.uint8))
        if route == "/batch/score"
        else _png_digit()
    )
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="x"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = httpx.post(
        url + route, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "disposition",
    ['name="images"; x="filename="', 'name="images"; xfilename=a.png', 'name="images"; x="; filename=a.png"'],
)
@pytest.mark.parametrize("value", ["http://127.0.0.1:1/livez", "/etc/passwd"])
def test_no_text_value_reaches_a_download_or_a_server_path(url, disposition, value):
    body = f"--b\r\nContent-Disposition: form-data; {disposition}\r\n\r\n{value}\r\n--b--\r\n".encode()
    r = httpx.post(
        f"{url}/reconstruct", content=body, headers={"content-type": "multipart/form-data; boundary=b"}, timeout=10
    )
    _refused(r, 400, "images")


def test_a_second_boundary_parameter_is_refused(url):
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nx\r\n--b--\r\n'
    r = httpx.post(
        f"{url}/reconstruct", content=body, headers={"content-type": "multipart/form-data; boundary=b; boundary=c"}
    )
    _refused(r, 400, "body")


def _bad_npy_header() -> bytes:
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000000, 1, 28, 28), }"
    header += b" " * (117 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(100)


def _form(route: str, files, status: int, field: str) -> tuple:
    return route, {"files": files}, status, field


@pytest.mark.parametrize(
    "route, request_kwargs, status, field",
    [
        (
            "/reconstruct",
            {
                "content": b"junk\r\n--b\r\n"
                b'Content-Disposition: form-data; name="images"; filename="a"\r\n\r\nx\r\n--b--\r\n',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "body",
        ),
        _form("/reconstruct", [(f"f{i}", (None, "1")) for i in range(1200)], 400, "body"),  # the parser's part limit
        _form("/reconstruct", [("f" * 200_000, (None, "1"))], 400, "body"),
        _form("/anomaly-score", [("array", (None, "[[[[" + "9" * 400 + "]]]]"))], 422, "array"),
        _form("/anomaly-score", [("images", ("a.png", blank_png(28))), ("label", (None, "9" * 5000))], 422, "label"),
        _form("/generate", [("label", (None, "[" * 100_000 + "]" * 100_000))], 400, "label"),
        _form("/batch/score", {"images": ("x.npy", _bad_npy_header())}, 400, "images"),
        (
            "/anomaly-score",
            {"content": b'{"array": [[[[' + b"9" * 400 + b"]]]]}", "headers": {"content-type": "application/json"}},
            422,
            "array",
        ),
        (
            "/generate",
            {"content": b'{"z": [[' + b"9" * 400 + b", 0, 0, 0]]}", "headers": {"content-type": "application/json"}},
            400,
            "z",
        ),
        (
            "/anomaly-score",
            {
                "content": b'{"array": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                "headers": {"content-type": "application/json"},
            },
            400,
            "body",
        ),
    ],
)
def test_odd_bodies_get_a_4xx_naming_the_field_never_a_500(url, route, request_kwargs, status, field):
    _refused(httpx.post(url + route, timeout=30, **request_kwargs), status, field)


def test_a_json_body_above_the_value_budget_is_refused_before_it_is_parsed(url):
    body = b'{"array": [' + b"0," * (15 << 20) + b"0]}"  # 30 MiB, under the body limit
    r = httpx.post(f"{url}/anomaly-score", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert "values" in _refused(r, 413, "body")
    digit = httpx.post(f"{url}/generate", json={"n": 256, "seed": 0, "format": "array"}, timeout=60).json()["images"]
    assert (
        httpx.post(f"{url}/anomaly-score", json={"array": digit}, timeout=60).status_code == 200
    )  # a full batch passes
