"""The HTTP contract of a real `genlab serve` with an API key and a small body limit.

schemathesis (an OpenAPI fuzzer) reads the published /docs.json and sends generated requests,
valid and invalid, to every route: no answer may be a server error, and every answer must be
documented (status, content type, body schema). Then the faults it found once, each as a
plain request, the body limit, the API key and the binary batch routes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest

from tests.service_fixtures import running_server

KEY = "contract-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 1 << 20
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
ROUTES = ("/generate", "/reconstruct", "/anomaly-score", "/batch/decode", "/batch/score", "/models")


@pytest.fixture(scope="module")
def guarded(exports, tmp_path_factory):
    env = {"GENLAB_API_KEY": KEY, "GENLAB_MAX_BODY_BYTES": str(BODY_LIMIT), "GENLAB_MAX_IMAGES": "16"}
    models = [exports["vaegan"], exports["gan"], exports["vaegan-cond"]]  # the conditional one: `label` is fuzzed too
    with running_server(models, tmp_path_factory.mktemp("contract") / "serve.log", env) as url:
        yield url


def fuzz(url: str, max_examples: int, report: Path) -> None:
    """schemathesis' CLI over every operation of /docs.json, seeded and bounded; fails on any finding."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/docs.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(max_examples),
        "--seed",
        "1",
        "--generation-deterministic",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=report.parent,  # its files stay there
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    tested = {case.get("name") for case in ElementTree.parse(report).iter("testcase")}
    assert {f"POST {route}" for route in ROUTES} <= tested, tested  # every route was exercised
    assert "generated" in result.stdout and " passed" in result.stdout


def test_fuzzing_finds_no_server_error_and_nothing_undocumented(guarded, tmp_path):
    fuzz(guarded, 25, tmp_path / "junit.xml")


@pytest.mark.slow
def test_longer_fuzzing(guarded, tmp_path):
    fuzz(guarded, 500, tmp_path / "junit.xml")


def test_the_document_describes_what_every_route_takes_and_answers(guarded):
    """The OpenAPI 3.1 document FastAPI generates from the routes: every status with genlab's error body, both
    bodies of the routes that take uploads or JSON, the media types and headers of the binary answers, the key."""
    spec = httpx.get(f"{guarded}/docs.json", headers=AUTH, timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    for route in ROUTES:
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "422"} <= set(responses), (route, sorted(responses))
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert spec["paths"][route]["post"]["security"] == [{"bearer": []}]
    assert set(spec["paths"]["/generate"]["post"]["responses"]["200"]["content"]) == {
        "image/png",
        "application/octet-stream",
        "application/json",
    }
    body = spec["paths"]["/anomaly-score"]["post"]["requestBody"]["content"]
    assert "images" in body["multipart/form-data"]["schema"]["properties"]
    assert "images" not in body["application/json"]["schema"]["properties"]
    assert "array" in body["application/json"]["schema"]["properties"]
    assert body["application/json"]["schema"]["additionalProperties"] is False  # unknown fields are refused
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for route in ("/generate", "/reconstruct", "/anomaly-score"):  # a conditional model's class, in JSON and in forms
        for media in spec["paths"][route]["post"]["requestBody"]["content"].values():
            label = media["schema"]["properties"]["label"]  # an index, a name, a list of them, or left out
            assert [o.get("type") for o in label["anyOf"]] == ["integer", "string", "array", "null"], label
    answer = spec["components"]["schemas"]["AnomalyScores"]
    assert {"type": "null"} in answer["properties"]["threshold_percentile"]["anyOf"]  # null with a raw threshold
    for route in ("/batch/decode", "/batch/score"):
        form = spec["paths"][route]["post"]["requestBody"]["content"]
        assert set(form) == {"multipart/form-data"} and "labels" in form["multipart/form-data"]["schema"]["properties"]
    generated = spec["paths"]["/generate"]["post"]["responses"]["200"]
    assert "X-Genlab-Labels" in generated["headers"]
    assert generated["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Drawn"}
    assert {"labels", "label_names", "seed"} <= set(spec["components"]["schemas"]["Drawn"]["properties"])


# -- the faults the fuzzer found, and the hostile inputs beside them ---------------------------------------
def _refused(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["field"] == field and body["error"], body


@pytest.mark.parametrize("route", ["/reconstruct", "/anomaly-score"])
def test_a_text_field_where_a_file_is_expected_is_a_400(guarded, route):
    r = httpx.post(guarded + route, headers=AUTH, files={"images": (None, "http://127.0.0.1:1/x.png")}, timeout=10)
    _refused(r, 400, "images")
    r = httpx.post(
        guarded + route,
        headers={**AUTH, "content-type": "application/x-www-form-urlencoded"},
        content=b"images=http%3A%2F%2F127.0.0.1%3A1%2Fx.png",
        timeout=10,
    )
    _refused(r, 400, "images")


@pytest.mark.parametrize("route", [route for route in ROUTES if route != "/models"])  # /models reads no body
def test_multipart_without_a_boundary_is_a_400(guarded, route):
    r = httpx.post(guarded + route, headers={**AUTH, "content-type": "multipart/form-data"}, content=b"x", timeout=10)
    _refused(r, 400, "Content-Type")


@pytest.mark.parametrize(
    "body, field",
    [
        (b'"http://127.0.0.1:1/secret"', "body"),  # BentoML would download a URL body
        (b'{"images": ["/etc/passwd"]}', "images"),  # ... and hand the endpoint a server path
        (b"[1, 2, 3]", "body"),
    ],
)
def test_bodies_that_would_reach_the_network_or_the_disk_are_refused(guarded, body, field):
    r = httpx.post(
        f"{guarded}/anomaly-score", headers={**AUTH, "content-type": "application/json"}, content=body, timeout=10
    )
    _refused(r, 400, field)


def test_bentomls_own_errors_come_in_genlabs_shape(guarded):
    r = httpx.post(f"{guarded}/generate", headers=AUTH, json={"n": "many"}, timeout=10)
    _refused(r, 400, "n")
    r = httpx.post(
        f"{guarded}/generate",
        headers={**AUTH, "content-type": "application/vnd.bentoml+pickle"},
        content=b"{}",
        timeout=10,
    )
    assert r.status_code == 415 and r.json()["field"] == "body"


# -- limits and access ---------------------------------------------------------------------------------
def test_a_body_above_the_limit_is_refused_before_it_is_parsed(guarded):
    declared = httpx.post(
        f"{guarded}/anomaly-score",
        headers={**AUTH, "content-type": "application/json"},
        content=b"{" + b" " * BODY_LIMIT + b"}",
        timeout=30,
    )
    _refused(declared, 413, "body")

    def chunks():  # no Content-Length: counted while it arrives
        yield b'{"array": ['
        for _ in range(BODY_LIMIT // 4096 + 2):
            yield b"0," * 2048
        yield b"0]}"

    streamed = httpx.post(
        f"{guarded}/anomaly-score", headers={**AUTH, "content-type": "application/json"}, content=chunks(), timeout=30
    )
    _refused(streamed, 413, "body")
    assert httpx.get(f"{guarded}/readyz", timeout=10).status_code == 200  # and the server is fine


def test_the_api_key_guards_every_route_but_the_probes(guarded):
    for route in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.post(guarded + route, headers=headers, json={}, timeout=10)
            _refused(r, 401, "Authorization")
            assert r.headers["www-authenticate"] == "Bearer"
    for route in ("/docs.json", "/metrics"):
        assert httpx.get(guarded + route, timeout=10).status_code == 401
    for probe in ("/livez", "/readyz"):
        assert httpx.get(guarded + probe, timeout=10).status_code == 200
    assert httpx.post(f"{guarded}/models", headers=AUTH, json={}, timeout=10).status_code == 200


# -- the binary path -----------------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_batch_routes_take_and_return_npy(guarded, exports):
    from genlab.export.reader import open_export, sample_latents

    exported = open_export(exports["vaegan"], providers="cpu")
    z = sample_latents(5, exported.latent_dim, seed=3)
    decoded = httpx.post(f"{guarded}/batch/decode", headers=AUTH, files={"z": ("z.npy", _npy(z))}, timeout=30)
    assert decoded.status_code == 200 and decoded.headers["content-type"] == "application/octet-stream"
    images = np.load(io.BytesIO(decoded.content))
    assert images.dtype == np.uint8 and np.array_equal(images, exported.decode(z))

    scored = httpx.post(f"{guarded}/batch/score", headers=AUTH, files={"images": ("x.npy", _npy(images))}, timeout=30)
    assert scored.status_code == 200
    table = np.load(io.BytesIO(scored.content))
    names = scored.headers["x-genlab-scores"].split(",")
    assert names == exported.score_names and table.shape == (5, len(names)) and table.dtype == np.float32
    expected = exported.scores(images)
    for k, name in enumerate(names):
        np.testing.assert_allclose(table[:, k], expected[name], rtol=1e-6)
    # the same numbers as the JSON route
    as_json = httpx.post(f"{guarded}/anomaly-score", headers=AUTH, json={"array": images.tolist()}, timeout=30).json()
    np.testing.assert_allclose([r["score"] for r in as_json["results"]], table[:, 0], rtol=1e-6)


@pytest.mark.parametrize(
    "route, field, payload, status",
    [
        ("/batch/score", "images", np.zeros((2, 1, 28, 28), np.float32), 422),  # not uint8
        ("/batch/score", "images", np.zeros((2, 3, 28, 28), np.uint8), 422),  # wrong shape
        ("/batch/score", "images", np.zeros((17, 1, 28, 28), np.uint8), 413),  # above GENLAB_MAX_IMAGES
        ("/batch/decode", "z", np.full((2, 4), np.nan, np.float32), 422),
        ("/batch/decode", "z", np.zeros((2, 5), np.float32), 422),
        ("/batch/decode", "z", np.array([{"a": 1}], dtype=object), 400),  # would need pickle: never loaded
    ],
)
def test_bad_npy_uploads_are_refused_naming_the_field(guarded, route, field, payload, status):
    buffer = io.BytesIO()
    np.save(buffer, payload, allow_pickle=True)
    r = httpx.post(guarded + route, headers=AUTH, files={field: ("x.npy", buffer.getvalue())}, timeout=30)
    _refused(r, status, field)
