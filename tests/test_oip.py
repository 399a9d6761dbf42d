"""The Open Inference Protocol routes (/v2) against a real `genlab serve`, spoken by the protocol's own client.

One server for the module, with an API key (tritonclient passes it in ``headers=``): a VAE-GAN (the default), the
conditional VAE-GAN and a GAN export without an encoder. Every answer is checked against the genlab routes that
do the same (/batch/decode, /batch/score) on the same inputs and the same server; every refusal must have the
protocol's error shape and reach tritonclient as a readable exception, never a 5xx (``running_server`` also fails the
module if any request left a traceback in the log). The parsing of inference requests is fuzzed in-process
(hypothesis) and over HTTP with malformed headers and truncated binary parts.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from tests.service_fixtures import CONDITIONAL_MODEL as COND
from tests.service_fixtures import running_server

KEY = "oip-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = b'{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28]'  # the start of one image's tensor
MODEL = "genlab-vaegan-mnist-5k"  # the shared VAE-GAN's export name
NO_ENCODER = "genlab-gan-no-encoder"
LATENT = 4  # the tiny models' latent size
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def url(exports, tmp_path_factory):
    models = [exports["vaegan"], exports["vaegan-cond"], exports["gan-no-encoder"]]
    log = tmp_path_factory.mktemp("oip") / "serve.log"
    with running_server(models, log, env={"GENLAB_API_KEY": KEY}) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    with triton.InferenceServerClient(url.removeprefix("http://"), concurrency=4) as c:
        yield c


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), np.uint8)


def _latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _batch(url: str, route: str, field: str, array: np.ndarray, model: str, labels=None) -> httpx.Response:
    files = [(field, ("x.npy", _npy(array)))]
    if labels is not None:
        files.append(("labels", ("labels.npy", _npy(np.asarray(labels, np.int64)))))
    r = httpx.post(f"{url}{route}", files=files, data={"model": model}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _infer(client, model: str, inputs: list, outputs=None) -> triton.InferResult:
    return client.infer(model, inputs, outputs=outputs, headers=dict(AUTH))  # infer adds headers to the dict it gets


def _refused(call, status: str, *words: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status, (info.value.status(), info.value.message())
    message = info.value.message()
    assert all(w in message for w in words), message
    return message


# -- health and metadata --------------------------------------------------------------------------------------------
def test_health_needs_no_key_and_the_server_describes_itself(client, url):
    assert client.is_server_live() and client.is_server_ready()  # no key: the probes are open
    meta = client.get_server_metadata(headers=AUTH)
    assert meta["name"] == "genlab" and "binary_tensor_data" in meta["extensions"]
    assert httpx.get(f"{url}/v2", headers=AUTH).json() == meta


def test_without_the_key_the_client_gets_a_readable_401(client):
    _refused(lambda: client.get_model_metadata(f"{MODEL}-score"), "401", "API key")
    _refused(lambda: client.infer(f"{MODEL}-score", [_input("images", _images(1), "UINT8", True)]), "401", "API key")


def test_every_model_is_offered_as_its_graphs(client):
    score = client.get_model_metadata(f"{MODEL}-score", headers=AUTH)
    assert score["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, *SHAPE]}]
    names = score["parameters"]["score_names"].split(",")
    assert names[0] == "score" and score["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, len(names)]}
    ]
    decoder = client.get_model_metadata(f"{MODEL}-decoder", headers=AUTH)
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}]
    assert decoder["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, *SHAPE]}]
    encoder = client.get_model_metadata(f"{MODEL}-encoder", headers=AUTH)
    assert [o["name"] for o in encoder["outputs"]] == ["mu", "logvar"]
    version = score["versions"][0]
    assert decoder["versions"] == [version] and client.is_model_ready(f"{MODEL}-score", version, headers=AUTH)
    assert client.get_model_metadata(f"{MODEL}-score", version, headers=AUTH) == score
    _refused(lambda: client.get_model_metadata(f"{MODEL}-score", "0", headers=AUTH), "404", "no version '0'")
    _refused(lambda: client.get_model_metadata(f"{NO_ENCODER}-encoder", headers=AUTH), "404", "unknown model")
    assert client.is_model_ready(f"{NO_ENCODER}-score", headers=AUTH)
    assert not client.is_model_ready("nonesuch-score", headers=AUTH)


def test_a_conditional_model_takes_labels(client):
    decoder = client.get_model_metadata(f"{COND}-decoder", headers=AUTH)
    assert [i["name"] for i in decoder["inputs"]] == ["z", "labels"]
    assert decoder["inputs"][1] == {"name": "labels", "datatype": "INT64", "shape": [-1]}
    assert decoder["parameters"]["classes"] == 10
    score = client.get_model_metadata(f"{COND}-score", headers=AUTH)
    assert [o["name"] for o in score["outputs"]] == ["scores", "labels"]


# -- the same answers as the /batch routes ---------------------------------------------------------------------------
@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (True, False), (False, True), (False, False)])
def test_score_equals_batch_score(client, url, binary_in, binary_out):
    x = _images(64, seed=1)
    outputs = [triton.InferRequestedOutput("scores", binary_data=binary_out)]
    result = _infer(client, f"{MODEL}-score", [_input("images", x, "UINT8", binary_in)], outputs)
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape[0] == 64
    reference = np.load(io.BytesIO(_batch(url, "/batch/score", "images", x, MODEL).content))
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_name"] == f"{MODEL}-score"


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (False, True)])
def test_decode_equals_batch_decode_bit_for_bit(client, url, binary_in, binary_out):
    z = _latents(16, seed=2)
    outputs = [triton.InferRequestedOutput("images", binary_data=binary_out)]
    images = _infer(client, f"{MODEL}-decoder", [_input("z", z, "FP32", binary_in)], outputs).as_numpy("images")
    reference = np.load(io.BytesIO(_batch(url, "/batch/decode", "z", z, MODEL).content))
    assert images.dtype == np.uint8 and np.array_equal(images, reference)


def test_without_outputs_every_output_comes_as_binary(client, url):
    """tritonclient asks for every output in binary (``binary_data_output``) when none is named."""
    z = _latents(3)
    result = _infer(client, f"{MODEL}-decoder", [_input("z", z, "FP32", True)])
    assert result.get_output("images")["parameters"]["binary_data_size"] == 3 * 28 * 28
    r = httpx.post(f"{url}/v2/models/{MODEL}-decoder/infer", headers=AUTH, json=_json_request("z", z, "FP32"))
    assert r.headers["content-type"].startswith("application/json") and "data" in r.json()["outputs"][0]


def test_the_encoder_gives_the_posterior_mean(client, exports):
    from genlab.export.reader import open_export

    x = _images(5, seed=3)
    result = _infer(client, f"{MODEL}-encoder", [_input("images", x, "UINT8", True)])
    mu, logvar = open_export(exports["vaegan"], threads=1).encode(x)
    np.testing.assert_allclose(result.as_numpy("mu"), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logvar"), logvar, rtol=1e-5, atol=1e-6)


def test_a_conditional_models_labels_mean_what_they_mean_on_the_batch_routes(client, url):
    z, labels = _latents(6, seed=4), np.array([0, 1, 2, 7, 8, 9], np.int64)
    inputs = [_input("z", z, "FP32", True), _input("labels", labels, "INT64", False)]
    images = _infer(client, f"{COND}-decoder", inputs).as_numpy("images")
    reference = np.load(io.BytesIO(_batch(url, "/batch/decode", "z", z, COND, labels).content))
    assert np.array_equal(images, reference)
    asked = np.array([3, -1, -1, 5, 0, -1], np.int64)  # -1: infer the class
    result = _infer(
        client, f"{COND}-score", [_input("images", images, "UINT8", True), _input("labels", asked, "INT64", True)]
    )
    r = _batch(url, "/batch/score", "images", images, COND, asked)
    np.testing.assert_allclose(result.as_numpy("scores"), np.load(io.BytesIO(r.content)), rtol=1e-5, atol=1e-6)
    used = result.as_numpy("labels")
    assert used.tolist() == [int(k) for k in r.headers["X-Genlab-Labels"].split(",")]
    assert used[0] == 3 and used[3] == 5
    only = [triton.InferRequestedOutput("labels", binary_data=False)]
    result = _infer(client, f"{COND}-score", [_input("images", images, "UINT8", True)], only)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["labels"]


# -- refusals --------------------------------------------------------------------------------------------------------
def test_every_refusal_names_the_tensor_and_what_is_wrong(client):
    score, decoder, cond = f"{MODEL}-score", f"{MODEL}-decoder", f"{COND}-decoder"

    def infer(model, *inputs, outputs=None):
        return lambda: _infer(client, model, list(inputs), outputs)

    z = _latents(2)
    _refused(infer(decoder, _input("z", z.astype(np.float64), "FP64", True)), "400", "'z'", "datatype", "FP32")
    _refused(infer(decoder, _input("z", _latents(2)[:, :3].copy(), "FP32", True)), "400", "'z'", "shape")
    nan = z.copy()
    nan[1, 2] = np.nan
    _refused(infer(decoder, _input("z", nan, "FP32", True)), "400", "z", "NaN")
    _refused(infer(decoder, _input("z", z * 1e6, "FP32", False)), "400", "z", "1e4")
    _refused(infer(cond, _input("z", z, "FP32", True)), "400", "'labels' is missing")
    _refused(
        infer(cond, _input("z", z, "FP32", True), _input("labels", np.array([0, 10]), "INT64", True)),
        "400",
        "labels[1]",
        "out of range",
    )
    _refused(
        infer(cond, _input("z", z, "FP32", True), _input("labels", np.array([0, -1]), "INT64", True)),
        "400",
        "labels[1]",
        "out of range 0..9",
    )
    _refused(
        infer(cond, _input("z", z, "FP32", True), _input("labels", np.array([0, 1, 2]), "INT64", True)),
        "400",
        "labels",
        "shape",
    )
    _refused(
        infer(decoder, _input("z", z, "FP32", True), _input("labels", np.zeros(2, np.int64), "INT64", True)),
        "400",
        "unknown input 'labels'",
    )
    _refused(infer(score, _input("images", _images(257), "UINT8", True)), "413", "'images'", "limit")
    _refused(infer("nonesuch-score", _input("images", _images(1), "UINT8", True)), "404", "unknown model")
    _refused(
        infer(score, _input("images", _images(1), "UINT8", True), outputs=[triton.InferRequestedOutput("mu")]),
        "400",
        "unknown output 'mu'",
    )
    wrong = _input("images", _images(2), "UINT8", True)
    wrong.set_shape([2, 1, 28, 27])
    _refused(infer(score, wrong), "400", "'images'", "shape")


def _json_request(name: str, array: np.ndarray, datatype: str) -> dict:
    return {
        "inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}]
    }


def _binary_request(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ]
        }
    ).encode()
    return header + array.tobytes(), len(header)


@pytest.mark.parametrize(
    "headers, cut",
    [
        ({"Inference-Header-Content-Length": "abc"}, None),
        ({"Inference-Header-Content-Length": "-1"}, None),
        ({"Inference-Header-Content-Length": "1e3"}, None),
        ({"Inference-Header-Content-Length": "99999999"}, None),
        ({"Inference-Header-Content-Length": "9" * 40}, None),
        ({"Inference-Header-Content-Length": "0"}, None),
        ({"Inference-Header-Content-Length": "10"}, None),
        ({}, None),  # binary parts without the header
        (None, -1),  # the last byte of the binary part missing
        (None, -784),  # the last image missing
        (None, 5),  # the header cut short
        (None, "extra"),  # bytes no input accounts for
        (None, "header+1"),  # the header length one too many
    ],
)
def test_malformed_headers_and_truncated_binary_parts_are_400s(url, headers, cut):
    body, length = _binary_request("images", _images(4), "UINT8")
    sent_headers = {"Inference-Header-Content-Length": str(length)} if headers is None else headers
    if cut == "extra":
        body += b"\x00" * 7
    elif cut == "header+1":
        sent_headers = {"Inference-Header-Content-Length": str(length + 1)}
    elif isinstance(cut, int) and cut < 0:
        body = body[:cut]
    elif isinstance(cut, int):
        body, sent_headers = body[:cut], {"Inference-Header-Content-Length": str(cut)}
    r = httpx.post(f"{url}/v2/models/{MODEL}-score/infer", content=body, headers={**AUTH, **sent_headers})
    assert r.status_code == 400, (r.status_code, r.text)
    assert set(r.json()) == {"error"} and r.json()["error"]


def test_two_header_length_headers_are_refused(url):
    """A proxy in front may read the other one: the request is ambiguous, so it is refused, not read by the first."""
    body, length = _binary_request("images", _images(2), "UINT8")
    headers = [
        *AUTH.items(),
        ("Inference-Header-Content-Length", str(length)),
        ("Inference-Header-Content-Length", "0"),
    ]
    r = httpx.post(f"{url}/v2/models/{MODEL}-score/infer", content=body, headers=headers)
    assert r.status_code == 400 and "given 2 times" in r.json()["error"], r.text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"inputs": {}}',
        b'{"inputs": [7]}',
        b'{"inputs": [{"name": "images"}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [1, 2]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": "x"}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [[1], [2, 3]]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [true, 1, 28, 28], "data": [0]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [0, 1, 28, 28], "data": []}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "parameters": []}]}',
        b'{"inputs": [' + IMAGE + b', "parameters": {"binary_data_size": "8"}}]}',
        b'{"inputs": [' + IMAGE + b', "parameters": {"shared_memory_region": "r"}}]}',
        b'{"id": 5, "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [0]}]}',
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [0]}], "outputs": [1]}',
        b'{"inputs": [' + IMAGE + b', "data": [0]}], "parameters": {"binary_data_output": 1}}',
        b'{"inputs": [' * 5000,
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [' + b"[" * 3000 + b"]",
    ],
)
def test_malformed_json_requests_are_400s(url, body):
    r = httpx.post(f"{url}/v2/models/{MODEL}-score/infer", content=body, headers=AUTH)
    assert r.status_code == 400, (r.status_code, r.text)
    assert set(r.json()) == {"error"}


def test_pixels_out_of_range_in_json_are_named(url):
    request = _json_request("images", _images(1).astype(np.int64) + 300, "UINT8")
    r = httpx.post(f"{url}/v2/models/{MODEL}-score/infer", json=request, headers=AUTH)
    assert r.status_code == 400 and "'images'" in r.json()["error"] and "0..255" in r.json()["error"]


def test_the_size_limits_hold_before_parsing(url):
    huge = b'{"inputs": [{"name": "z", "data": [' + b"0," * 400_000 + b"0]}]}"
    r = httpx.post(f"{url}/v2/models/{MODEL}-decoder/infer", content=huge, headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    r = httpx.post(f"{url}/v2/models/{MODEL}-decoder/infer", content=b"0" * (33 << 20), headers=AUTH)
    assert r.status_code == 413  # the body limit (32 MiB by default), kept while the body arrives


def test_unknown_paths_and_methods_get_the_protocols_error_shape(url):
    for method, path, status in [
        ("GET", "/v2/nonesuch", 404),
        ("GET", "/v2/models", 404),
        ("GET", f"/v2/models/{MODEL}-score/infer", 405),
        ("POST", f"/v2/models/{MODEL}-score", 405),
        ("POST", "/v2/repository/index", 404),
        ("GET", f"/v2/models/{MODEL}-score/versions/0/ready", 404),
    ]:
        r = httpx.request(method, f"{url}{path}", headers=AUTH)
        assert r.status_code == status and set(r.json()) == {"error"}, (path, r.status_code, r.text)


def test_compressed_bodies_are_refused_readably(client):
    x = _images(1)
    call = lambda: client.infer(  # noqa: E731
        f"{MODEL}-score", [_input("images", x, "UINT8", True)], headers=dict(AUTH), request_compression_algorithm="gzip"
    )
    _refused(call, "400", "Content-Encoding")


# -- fuzzing the request parsing in-process -------------------------------------------------------------------------
def _fuzz_model():
    from genlab.service.oip import ProtocolModel, TensorSpec

    inputs = (TensorSpec("images", "UINT8", (-1, 1, 2, 2)), TensorSpec("labels", "INT64", (-1,), required=False))
    outputs = (TensorSpec("scores", "FP32", (-1, 3)),)
    return ProtocolModel("m-score", "score", None, inputs, outputs, "0")  # type: ignore[arg-type]


VALID, VALID_LENGTH = _binary_request("images", np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2), "UINT8")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, len(VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4),
    header_length=st.one_of(
        st.none(), st.integers(-5, len(VALID) + 5).map(str), st.text(max_size=8), st.just(str(VALID_LENGTH))
    ),
)
def test_any_mangled_request_is_parsed_or_refused_as_a_protocol_error(cut, flips, header_length):
    from genlab.service.oip import ProtocolError, input_tensors, parse_request, requested_outputs, split_body
    from genlab.service.settings import Settings

    body = bytearray(VALID[:cut])
    for at, value in flips:
        if at < len(body):
            body[at] = value
    pm = _fuzz_model()
    try:
        header, binary = split_body(bytes(body), header_length)
        request = parse_request(header, 10_000)
        requested_outputs(pm, request)
        tensors = input_tensors(pm, request["inputs"], binary, Settings(max_images=8))
    except ProtocolError as err:
        assert err.status in (400, 413) and str(err)
        return
    assert tensors["images"].dtype == np.uint8 and tensors["images"].shape[1:] == (1, 2, 2)
