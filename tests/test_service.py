"""The HTTP service: in-process through BentoML's ASGI app, then a real `genlab serve` end to end.

The fixture goes the way a user does: `genlab train` -> `genlab export` (CLI subprocesses) for a
VAE-GAN, a GAN and a class-conditional VAE-GAN, tiny networks, one epoch on the embedded MNIST digits.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from genlab.errors import GenlabError
from tests.conftest import bentoml_test_client
from tests.service_fixtures import CONDITIONAL_MODEL as COND
from tests.service_fixtures import REPO, running_server
from tests.service_fixtures import genlab_cli as _genlab

MAX_IMAGES = 64
MAX_UPLOAD = 64 * 1024


@pytest.fixture(scope="module")
def client(exports):
    """The service built with these models and small limits, behind a starlette TestClient."""
    from genlab.service.service import build_service
    from genlab.service.settings import Settings

    models = tuple(str(exports[key]) for key in ("vaegan", "gan", "gan-no-encoder", "vaegan-cond"))
    service = build_service(Settings(models=models, max_images=MAX_IMAGES, max_upload_bytes=MAX_UPLOAD))
    with bentoml_test_client(service) as c:
        yield c


def _png(array_hw_or_hwc: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array_hw_or_hwc).save(buffer, format=fmt)
    return buffer.getvalue()


def _digits(client, n: int, seed: int = 0) -> list:
    r = client.post("/generate", json={"n": n, "seed": seed, "format": "array"})
    assert r.status_code == 200, r.text
    return r.json()["images"]


def _map(images: np.ndarray, recons: np.ndarray) -> np.ndarray:
    """An anomaly map in NumPy (genlab.measures.ANOMALY_MAP_MEANING): |image - reconstruction| / 255, float32."""
    return (np.abs(images.astype(np.int16) - recons.astype(np.int16)) / np.float32(255)).astype(np.float32)


def _field_error(r, status: int, field: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    if isinstance(body, dict) and "field" in body:
        assert body["field"].startswith(field), body
        return body["error"]
    # pydantic validation errors from BentoML name the field in `loc`
    assert any(field in map(str, d["loc"]) for d in body["detail"]), body
    return body["error"]


# -- generate -----------------------------------------------------------------------------------------
def test_generate_png_grid_is_reproducible_by_seed(client):
    a = client.post("/generate", json={"n": 9, "seed": 7})
    b = client.post("/generate", json={"n": 9, "seed": 7})
    c = client.post("/generate", json={"n": 9, "seed": 8})
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.headers["x-genlab-seed"] == "7" and a.headers["x-genlab-model"] == "genlab-vaegan-mnist-5k"
    assert a.content == b.content != c.content
    grid = Image.open(io.BytesIO(a.content))
    assert grid.size == (2 + 3 * 30, 2 + 3 * 30)  # 3x3 tiles of 28 px with 2 px padding


def test_generate_formats_agree(client):
    arr = np.array(client.post("/generate", json={"n": 3, "seed": 1, "format": "array"}).json()["images"], np.uint8)
    assert arr.shape == (3, 1, 28, 28)
    npy = np.load(io.BytesIO(client.post("/generate", json={"n": 3, "seed": 1, "format": "npy"}).content))
    pngs = client.post("/generate", json={"n": 3, "seed": 1, "format": "png_list"}).json()["images"]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p))))[None] for p in pngs])
    np.testing.assert_array_equal(arr, npy)
    np.testing.assert_array_equal(arr, decoded)


def test_generate_from_explicit_latents_matches_the_seeded_draw(client, exports):
    from genlab.export.reader import read_export, sample_latents

    prior = read_export(exports["vaegan"]).prior
    assert prior is not None  # a VAE-GAN's seeded draws come from the mixture fitted to its training codes
    z = sample_latents(2, 4, seed=5, prior=prior)
    by_seed = client.post("/generate", json={"n": 2, "seed": 5, "format": "array"}).json()["images"]
    by_z = client.post("/generate", json={"z": z.tolist(), "format": "array"}).json()
    assert by_z["seed"] is None and by_z["images"] == by_seed
    hot = client.post("/generate", json={"n": 2, "seed": 5, "temperature": 2.0, "format": "array"}).json()["images"]
    z_hot = sample_latents(2, 4, seed=5, temperature=2.0, prior=prior)
    assert client.post("/generate", json={"z": z_hot.tolist(), "format": "array"}).json()["images"] == hot


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"n": 0}, 400, "n"),
        ({"n": MAX_IMAGES + 1}, 413, "n"),
        ({"temperature": 0}, 400, "temperature"),
        ({"format": "gif"}, 400, "format"),
        ({"z": [[0.0, 1.0]]}, 422, "z"),
        ({"z": [[0.0] * 4] * (MAX_IMAGES + 1)}, 413, "z"),
        ({"model": "../../etc/passwd"}, 404, "model"),
        ({"n": "three"}, 400, "n"),
    ],
)
def test_generate_refuses_bad_input_naming_the_field(client, payload, status, field):
    _field_error(client.post("/generate", json=payload), status, field)


def test_generate_refuses_nan_and_inf_latents(client):
    for bad in (b'{"z": [[NaN, 0, 0, 0]]}', b'{"z": [[Infinity, 0, 0, 0]]}'):
        r = client.post("/generate", content=bad, headers={"content-type": "application/json"})
        assert "NaN or infinity" in _field_error(r, 422, "z")


# -- interpolate ----------------------------------------------------------------------------------------
def _array(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content), allow_pickle=False)


def test_interpolate_between_seeds_starts_and_ends_at_their_samples(client, exports):
    from genlab.export.reader import read_export

    from genlab.latents import interpolate, sample_latents

    model = read_export(exports["vaegan"])
    for method in ("slerp", "linear"):
        r = client.post("/interpolate", json={"seeds": [3, 8], "steps": 5, "method": method, "format": "npy"})
        path = _array(r)
        assert path.shape == (5, 1, 28, 28) and path.dtype == np.uint8
        assert r.headers["x-genlab-seeds"] == "3,8" and r.headers["x-genlab-method"] == method
        for end, seed in ((path[0], 3), (path[-1], 8)):  # the ends are what /generate n=1 draws for each seed
            sample = _array(client.post("/generate", json={"n": 1, "seed": seed, "format": "npy"}))
            assert np.array_equal(end, sample[0])
        # every step is the decoded latent of the path between the two seeds' latents
        z = interpolate(
            *(sample_latents(1, model.latent_dim, s, 1.0, model.latent_prior)[0] for s in (3, 8)), 5, method
        )
        assert np.array_equal(path, _array(client.post("/generate", json={"z": z.tolist(), "format": "npy"})))
    body = client.post("/interpolate", json={"seeds": [3, 8], "steps": 3, "format": "png_list"}).json()
    assert body["t"] == [0.0, 0.5, 1.0] and body["method"] == "slerp" and body["seeds"] == [3, 8]
    assert len(body["images"]) == 3 and body["shape"] == [3, 1, 28, 28]
    for steps, size in ((4, (2 + 4 * 30, 32)), (20, (2 + 16 * 30, 2 + 2 * 30))):  # in order, rows of up to 16
        grid = Image.open(io.BytesIO(client.post("/interpolate", json={"seeds": [3, 8], "steps": steps}).content))
        assert grid.format == "PNG" and grid.size == size


def test_interpolate_between_two_images_runs_between_their_reconstructions(client):
    digits = np.array(_digits(client, 2, seed=5), np.uint8)
    recon = np.array(client.post("/reconstruct", json={"array": digits.tolist(), "format": "array"}).json()["images"])
    files = [("images", (f"{i}.png", _png(d[0]), "image/png")) for i, d in enumerate(digits)]
    for request in (
        {"json": {"array": digits.tolist(), "steps": 6, "format": "npy"}},
        {"files": files, "data": {"steps": "6", "format": "npy"}},
    ):
        path = _array(client.post("/interpolate", **request))
        assert path.shape == (6, 1, 28, 28)
        assert np.array_equal(path[[0, -1]], recon.astype(np.uint8))


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({}, 400, "seeds"),
        ({"seeds": [1, 2], "array": [[[[0] * 28] * 28]] * 2}, 400, "seeds"),
        ({"seeds": [1]}, 400, "seeds"),
        ({"seeds": [1, 2, 3]}, 400, "seeds"),
        ({"seeds": [1, 2], "steps": 1}, 400, "steps"),
        ({"seeds": [1, 2], "steps": MAX_IMAGES + 1}, 413, "steps"),
        ({"seeds": [1, 2], "method": "cubic"}, 400, "method"),
        ({"seeds": [1, 2], "label": 3}, 422, "label"),
        ({"array": [[[[0] * 28] * 28]] * 3}, 422, "array"),
        ({"array": [[[[0] * 28] * 28]] * 2, "model": "genlab-gan-no-encoder"}, 422, "model"),
        ({"seeds": [1, 2], "steps": 4, "nsteps": 3}, 400, "nsteps"),
    ],
)
def test_interpolate_refuses_bad_input_naming_the_field(client, payload, status, field):
    _field_error(client.post("/interpolate", json=payload), status, field)


def test_interpolate_on_a_conditional_model_decodes_every_step_under_one_class(client):
    _field_error(client.post("/interpolate", json={"model": COND, "seeds": [1, 2]}), 422, "label")
    _field_error(client.post("/interpolate", json={"model": COND, "seeds": [1, 2], "label": [1, 2]}), 422, "label")
    r = client.post("/interpolate", json={"model": COND, "seeds": [1, 2], "steps": 4, "label": 7, "format": "npy"})
    path = _array(r)
    assert r.headers["x-genlab-labels"] == "7,7,7,7"
    first = client.post("/generate", json={"model": COND, "n": 1, "seed": 1, "label": 7, "format": "npy"})
    assert np.array_equal(path[0], _array(first)[0])


# -- reconstruct ----------------------------------------------------------------------------------------
def test_reconstruct_uploads_and_arrays_agree(client):
    digits = np.array(_digits(client, 2), np.uint8)
    files = [("images", (f"{i}.png", _png(d[0]), "image/png")) for i, d in enumerate(digits)]
    up = client.post("/reconstruct", files=files)
    arr = client.post("/reconstruct", json={"array": digits.tolist(), "format": "array"})
    assert up.status_code == arr.status_code == 200, (up.text, arr.text)
    up, arr = up.json(), arr.json()
    assert len(up["images"]) == 2 and len(up["mu"]) == 2 and len(up["mu"][0]) == 4
    np.testing.assert_allclose(up["mu"], arr["mu"], atol=1e-6)
    recon = np.array(arr["images"], np.float64)
    expected = (((digits - recon) / 255.0) ** 2).reshape(2, -1).mean(1)
    np.testing.assert_allclose(arr["recon_error"], expected, rtol=1e-12)
    # one definition: the score graph's recon_error component is the same number, up to its float32 output
    scored = client.post("/anomaly-score", json={"array": digits.tolist()}).json()["results"]
    np.testing.assert_allclose([r["components"]["recon_error"]["value"] for r in scored], expected, rtol=1e-6)


def test_reconstruct_converts_other_sizes_and_modes(client):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for blob, kind in ((_png(rgb), "image/png"), (_png(rgb, "JPEG"), "image/jpeg")):
        r = client.post("/reconstruct", files=[("images", ("x", blob, kind))])
        assert r.status_code == 200, r.text
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert image.size == (28, 28) and image.mode == "L"


def test_reconstruct_needs_an_encoder(client):
    assert (
        client.post("/reconstruct", json={"array": _digits(client, 1), "model": "genlab-gan-mnist-5k"}).status_code
        == 200
    )
    r = client.post("/reconstruct", json={"array": _digits(client, 1), "model": "genlab-gan-no-encoder"})
    assert "no encoder" in _field_error(r, 422, "model")


@pytest.mark.parametrize("case", ["not_image", "truncated", "too_big", "too_many", "empty"])
def test_uploads_are_checked(client, case):
    png = _png(np.zeros((28, 28), np.uint8))
    big = _png(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    assert len(big) > MAX_UPLOAD
    files = {
        "not_image": [("images", ("a.png", b"hello, not an image", "image/png"))],
        "truncated": [("images", ("a.png", png[: len(png) // 2], "image/png"))],
        "too_big": [("images", ("a.png", big, "image/png"))],
        "too_many": [("images", (f"{i}.png", png, "image/png")) for i in range(MAX_IMAGES + 1)],
        "empty": [("images", ("a.png", b"", "image/png"))],
    }[case]
    status = {"too_big": 413, "too_many": 413}.get(case, 400)
    for route in ("/reconstruct", "/anomaly-score"):
        _field_error(client.post(route, files=files), status, "images")


@pytest.mark.parametrize(
    "array, status",
    [
        ([[[[0] * 28] * 28]] * 2 + [[[[0] * 27] * 28]], 400),  # ragged
        ([[[[0] * 28] * 28] * 3], 422),  # 3 channels for a grey model
        ([[[[0.5] * 28] * 28]], 422),  # not uint8 values
        ([[[[300] * 28] * 28]], 422),
        ([[[[0] * 28] * 28]] * (MAX_IMAGES + 1), 413),
        ([], 422),
    ],
)
def test_arrays_are_checked(client, array, status):
    _field_error(client.post("/anomaly-score", json={"array": array}), status, "array")


def test_no_images_at_all(client):
    _field_error(client.post("/anomaly-score", json={}), 400, "images")


# -- anomaly-score ---------------------------------------------------------------------------------------
def test_anomaly_scores_match_the_export_and_the_calibration(client, exports):
    from genlab.export.reader import open_export

    from genlab.thresholds import percentile_of, quantile

    digits = np.array(_digits(client, 5, seed=3), np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    batch = np.concatenate([digits, noise])
    r = client.post("/anomaly-score", json={"array": batch.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    exported = open_export(exports["vaegan"])
    cal = exported.calibration
    expected = exported.scores(batch)
    assert body["threshold"] == pytest.approx(quantile(cal, "score", 99.0))
    assert body["threshold_percentile"] == 99.0 and body["threshold_source"] == "calibration"
    assert len(body["results"]) == 8
    for i, row in enumerate(body["results"]):
        assert row["score"] == pytest.approx(float(expected["score"][i]), rel=1e-6)
        assert set(row["components"]) == set(exported.score_names)
        assert row["percentile"] == pytest.approx(float(percentile_of(cal, "score", expected["score"][i : i + 1])[0]))
        assert row["is_anomaly"] == (row["score"] > body["threshold"])


def test_anomaly_threshold_by_percentile_or_raw_value(client, exports):
    from genlab.export.reader import read_export

    from genlab.thresholds import quantile

    cal = read_export(exports["vaegan"]).calibration
    batch = _digits(client, 4, seed=9)
    low = client.post("/anomaly-score", json={"array": batch, "percentile": 0}).json()
    assert low["threshold_percentile"] == 0 and low["threshold"] == pytest.approx(quantile(cal, "score", 0.0))
    assert [r["is_anomaly"] for r in low["results"]] == [r["score"] > low["threshold"] for r in low["results"]]
    raw = client.post("/anomaly-score", json={"array": batch, "threshold": -1e9}).json()
    assert raw["threshold_source"] == "request" and raw["threshold_percentile"] is None
    assert all(r["is_anomaly"] for r in raw["results"])
    _field_error(
        client.post("/anomaly-score", json={"array": batch, "threshold": 1.0, "percentile": 50}), 400, "threshold"
    )
    _field_error(client.post("/anomaly-score", json={"array": batch, "percentile": 101}), 400, "percentile")


def test_anomaly_score_for_a_gan_scores_through_its_encoder(client):
    r = client.post("/anomaly-score", json={"array": _digits(client, 2), "model": "genlab-gan-mnist-5k"})
    assert r.status_code == 200, r.text
    assert set(r.json()["results"][0]["components"]) == {
        "score",
        "discriminator",
        "izi_f",
        "recon_error",
        "relative_recon_error",
        "stroke_error",
        "latent_distance",
        "features_distance",
        "low_contrast",
    }
    assert "G(E(image))" in r.json()["meaning"]


def test_models_endpoint_lists_models_and_providers(client):
    rows = client.post("/models").json()
    assert [r["name"] for r in rows] == ["genlab-vaegan-mnist-5k", "genlab-gan-mnist-5k", "genlab-gan-no-encoder", COND]
    assert rows[0]["default"] and not rows[1]["default"] and rows[1]["has_encoder"] and not rows[2]["has_encoder"]
    assert set(rows[0]["providers"]) == {"decoder", "encoder", "score"}
    assert set(rows[0]["providers"].values()) == {"CPUExecutionProvider"}
    assert rows[0]["manifest"]["image"]["pixel_format"] == "uint8"
    assert "mixture" in rows[0]["manifest"]["latent"]["prior"] and "fitted_prior" not in rows[0]["manifest"]["latent"]


def test_every_load_verifies_the_bytes_it_runs(exports, tmp_path):
    """`genlab serve` checks every export before the server starts, and every worker checks again each graph it loads
    (the bytes it hands to ONNX Runtime): a graph changed after the first check is refused, never served."""
    import shutil

    import genlab.service.runtime
    from genlab.export.reader import ExportError
    from genlab.service.commands import verify_models
    from genlab.service.settings import Settings

    copy = tmp_path / "export"
    shutil.copytree(exports["vaegan"], copy)
    assert verify_models([str(copy), str(exports["gan"])]) == ["genlab-vaegan-mnist-5k", "genlab-gan-mnist-5k"]
    assert genlab.service.runtime.load_model(copy, Settings()).graphs
    decoder = copy / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-1] + bytes([decoder.read_bytes()[-1] ^ 1]))  # one bit, after the check
    with pytest.raises(ExportError, match="decoder.onnx: sha256 does not match"):
        genlab.service.runtime.load_model(copy, Settings())  # what a respawned worker does
    with pytest.raises(GenlabError, match="two models are named"):
        verify_models([str(exports["gan"]), str(exports["gan"])])


def test_service_imports_no_torch():
    code = (
        "import sys, genlab.service.service as service, genlab.service.commands; service.Genlab; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "GENLAB_MODELS": "nothing-needed-at-import"},
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_importing_the_service_changes_nothing_and_genlab_is_built_once_from_the_environment(tmp_path):
    """`bentoml serve genlab.service.service:Genlab` reads the settings from the environment when it first asks for
    `Genlab`; the import alone writes no variable."""
    code = (
        "import os\n"
        "before = dict(os.environ)\n"
        "import genlab.service.service as service\n"
        "assert dict(os.environ) == before, 'the import changed the environment'\n"
        "genlab = service.Genlab\n"
        "assert genlab is service.Genlab and genlab is service.environment_service()\n"
        "print(genlab.config['workers'], *[m.tag for m in genlab.models])\n"
        "print(os.environ['BENTOML_DO_NOT_TRACK'], os.environ['OTEL_SDK_DISABLED'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_DO_NOT_TRACK"}
    env |= {
        "GENLAB_MODELS": f"{tmp_path},genlab-gan-mnist-5k",
        "GENLAB_MAX_IMAGES": "7",
        "GENLAB_WORKERS": "3",
        "OTEL_SDK_DISABLED": "false",  # kept: the environment's own value wins over the serving default
    }
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["3 genlab-gan-mnist-5k", "True false"]  # a directory needs no model reference


def test_services_built_with_other_settings_live_side_by_side(tmp_path):
    from genlab.service.service import build_service, tracing_settings
    from genlab.service.settings import DEFAULT_MODEL, Settings

    small = build_service(
        Settings(
            models=(str(tmp_path), "genlab-gan-mnist-5k"),
            max_images=7,
            max_body_bytes=1 << 20,
            workers=3,
            request_timeout_s=2.5,
            access_log=True,
            api_key="key",
        )
    )
    default = build_service(Settings())

    assert small.config == {
        "workers": 3,
        "traffic": {"timeout": 2.5},
        "logging": {"access": {"enabled": True}},
        "metrics": {"enabled": False},  # genlab keeps its own (genlab.metrics)
        "tracing": tracing_settings(),  # every path excluded while the OpenTelemetry SDK is disabled
    }
    assert default.config["workers"] == 1 and not default.config["logging"]["access"]["enabled"]
    assert [str(m.tag) for m in small.models] == ["genlab-gan-mnist-5k"]
    assert [str(m.tag) for m in default.models] == [DEFAULT_MODEL]
    assert small.inner is not default.inner
    (metrics, _), (key, key_options), (limit, limit_options) = small.middlewares
    assert metrics.__name__ == "MetricsMiddleware"  # outermost: refused requests are counted too
    assert key.__name__ == "RequireKey" and key_options["api_key"] == "key"
    assert limit.__name__ == "BodyLimit" and limit_options["max_bytes"] == 1 << 20
    assert default.middlewares[1][1]["api_key"] == ""
    (app, path, _), *_ = small.mount_apps
    assert path == "/" and app.title == "genlab" and app is not default.mount_apps[0][0]


# -- a real server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    with running_server([exports["vaegan"], exports["gan"]], tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def test_real_server_end_to_end(server):
    """train -> export (fixture) -> `genlab serve` -> every endpoint over plain HTTP."""
    import httpx

    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server + probe, timeout=10).status_code == 200
    grid = httpx.post(f"{server}/generate", json={"n": 4, "seed": 1}, timeout=30)
    assert grid.status_code == 200 and grid.content.startswith(b"\x89PNG")
    digits = httpx.post(f"{server}/generate", json={"n": 3, "seed": 1, "format": "array"}, timeout=30).json()["images"]
    files = [("images", ("d.png", _png(np.array(d, np.uint8)[0]), "image/png")) for d in digits]
    rec = httpx.post(f"{server}/reconstruct", files=files, timeout=30)
    assert rec.status_code == 200 and len(rec.json()["recon_error"]) == 3
    score = httpx.post(f"{server}/anomaly-score", files=files, data={"percentile": "95"}, timeout=30)
    assert score.status_code == 200 and score.json()["threshold_percentile"] == 95
    bad = httpx.post(f"{server}/anomaly-score", json={"array": [[1, 2]]}, timeout=30)
    assert bad.status_code == 422 and "array" in bad.json()["field"]
    models = httpx.get(f"{server}/models", timeout=30).json()
    assert [m["name"] for m in models] == ["genlab-vaegan-mnist-5k", "genlab-gan-mnist-5k"]


def test_real_server_32_concurrent_clients_no_errors(server):
    import httpx

    digit = httpx.post(f"{server}/generate", json={"n": 1, "seed": 2, "format": "array"}, timeout=30).json()["images"]

    def one(i: int) -> tuple[int, int]:
        with httpx.Client(timeout=60) as c:
            route, payload = [
                ("/anomaly-score", {"array": digit}),
                ("/reconstruct", {"array": digit}),
                ("/generate", {"n": 2, "seed": i, "format": "array"}),
            ][i % 3]
            codes = [c.post(server + route, json=payload).status_code for _ in range(3)]
        return i, max(codes)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert all(code == 200 for _, code in results), results


def test_serve_refuses_a_missing_model_in_one_line(tmp_path):
    r = _genlab("serve", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bentoml_build_packs_the_model_and_no_torch(exports, tmp_path):
    """`bentoml build` offline: the bento's requirements, Dockerfile and model reference."""
    env = {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    # the shared export into this test's model store, as `genlab export --bento` stores the export it writes (that
    # command's own test: tests/test_export.py)
    store = "import sys; from genlab.export.store import save_to_store; save_to_store(sys.argv[1], sys.argv[2])"
    saved = subprocess.run(
        [sys.executable, "-c", store, str(exports["vaegan"]), "genlab-vaegan-mnist-5k"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    bento = next(p for p in (tmp_path / "bentoml" / "bentos" / "genlab").iterdir() if p.is_dir())
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime>=" in requirements and "torch" not in requirements.replace("onnxruntime", "")
    assert "onnxruntime-gpu" not in requirements  # the CPU flavour (the GPU one: deploy/flavour.py), never both
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "env/python/install.sh" in dockerfile and "apt-get" not in dockerfile  # deploy/Dockerfile.j2
    info = (bento / "bento.yaml").read_text()
    assert "genlab-vaegan-mnist-5k:" in info and "entry_service: genlab" in info
    assert not any(p.suffix == ".pt" for p in (bento / "src").rglob("*")) and not (bento / "src" / "training").exists()
    from genlab.service.page import PAGE_DIR

    for name in (p.name for p in PAGE_DIR.iterdir()):  # the browser page's files, which no import loads
        assert (bento / "src" / "service" / "page" / name).is_file(), name
    # the packed sources are enough to import the service: every project module it loads comes from the bento
    code = (
        "import sys, genlab.service.service as service; service.Genlab; from pathlib import Path; "
        "ours = [m for n, m in sys.modules.items() if n.split('.')[0] == 'genlab']; "
        "outside = [m.__name__ for m in ours if not Path(m.__file__).resolve().is_relative_to(Path.cwd().resolve())]; "
        "assert not outside, outside; assert 'torch' not in sys.modules"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code],
        cwd=bento / "src",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env, "GENLAB_MODELS": "nothing-needed-at-import"},
    )
    assert imported.returncode == 0, imported.stderr[-3000:]


def test_anomaly_score_normalised_score_and_maps(client, exports):
    from genlab.export.reader import open_export

    digits = np.array(_digits(client, 3, seed=5), np.uint8)
    r = client.post("/anomaly-score", json={"array": digits.tolist(), "maps": True, "maps_format": "array"})
    assert r.status_code == 200, r.text
    body = r.json()
    exported = open_export(exports["vaegan"])
    mu, _ = exported.encode(digits)
    expected_maps = _map(digits, exported.decode(mu))
    for i, row in enumerate(body["results"]):
        assert 0.0 <= row["normalized_score"] <= 1.0
        assert row["is_anomaly"] == (row["normalized_score"] > 0.5) == (row["score"] > body["threshold"])
        np.testing.assert_allclose(np.array(row["anomaly_map"]), expected_maps[i], atol=1e-5)
    at_threshold = client.post(
        "/anomaly-score", json={"array": digits[:1].tolist(), "threshold": body["results"][0]["score"]}
    )
    assert at_threshold.json()["results"][0]["normalized_score"] == pytest.approx(0.5)
    png = client.post("/anomaly-score", json={"array": digits.tolist(), "maps": True}).json()["results"][0]
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png["anomaly_map"])))
    assert image.size == (28, 28)


def test_anomaly_maps_need_an_encoder(client):
    digit = np.zeros((1, 1, 28, 28), np.uint8).tolist()
    _field_error(
        client.post("/anomaly-score", json={"array": digit, "maps": True, "model": "genlab-gan-no-encoder"}),
        422,
        "maps",
    )
    # a GAN has f-AnoGAN's encoder, so it reconstructs and gives maps
    r = client.post("/anomaly-score", json={"array": digit, "maps": True, "model": "genlab-gan-mnist-5k"})
    assert r.status_code == 200 and r.json()["results"][0]["anomaly_map"]


def _upsampled(square: np.ndarray, side: int) -> np.ndarray:
    """A float map [s, s] -> [side, side], bilinear on the floats (PIL mode "F"): the reference for maps_size=image."""
    return np.asarray(Image.fromarray(square.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))


@pytest.mark.parametrize(("width", "height"), [(40, 30), (30, 41)])
def test_maps_at_the_uploads_size_lay_the_models_map_over_its_centre_square(client, width, height):
    """maps_size=image: a width x height upload's map is width x height; the centre square the model saw holds the
    model-size map upsampled to the square's side, and the margins it did not see are zero."""
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8)
    files = [("images", ("part.png", _png(pixels), "image/png"))]

    def score(**fields: str) -> dict:
        r = client.post("/anomaly-score", files=files, data={"maps": "true", **fields})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    at_model = score(maps_format="array")
    assert at_model == score(maps_format="array", maps_size="model")  # the default
    assert at_model["anomaly_map_size"] == [28, 28]
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    expected = np.zeros((1, height, width), np.float32)
    expected[0, top : top + side, left : left + side] = _upsampled(np.array(at_model["anomaly_map"])[0], side)

    as_png = score(maps_size="image")
    assert as_png["anomaly_map_size"] == [height, width]
    assert {k: v for k, v in as_png.items() if not k.startswith("anomaly_map")} == {
        k: v for k, v in at_model.items() if not k.startswith("anomaly_map")
    }  # the same scores
    image = Image.open(io.BytesIO(base64.b64decode(as_png["anomaly_map"])))
    assert (image.size, image.mode) == ((width, height), "L")
    png = np.asarray(image).astype(np.int16)
    np.testing.assert_allclose(png, np.rint(expected[0] * 255), atol=1)
    inside = np.zeros((height, width), bool)
    inside[top : top + side, left : left + side] = True
    assert not png[~inside].any() and png[inside].any()

    as_array = score(maps_size="image", maps_format="array")
    assert as_array["anomaly_map_size"] == [height, width]
    np.testing.assert_allclose(np.array(as_array["anomaly_map"]), expected, atol=1e-4)


def test_a_map_at_the_uploads_size_compares_each_pixel_of_the_upload_with_its_reconstruction(client):
    """A 40x28 upload's centre square is the model's 28 px: map pixel (row, col) at the upload's size is
    |upload[row, col] - reconstruction[row, col - 6]| / 255 inside the square, and zero in the margins."""
    upload = np.random.default_rng(1).integers(0, 256, (28, 40), np.uint8)
    files = [("images", ("part.png", _png(upload), "image/png"))]
    recon = np.array(client.post("/reconstruct", files=files, data={"format": "array"}).json()["images"][0], np.uint8)
    r = client.post("/anomaly-score", files=files, data={"maps": "true", "maps_size": "image", "maps_format": "array"})
    assert r.status_code == 200, r.text
    anomaly_map = np.array(r.json()["results"][0]["anomaly_map"])
    expected = np.zeros((1, 28, 40), np.float32)
    expected[:, :, 6:34] = _map(upload[None, :, 6:34], recon)
    np.testing.assert_allclose(anomaly_map, expected, atol=1e-5)


def test_an_arrays_map_at_the_images_size_is_the_models(client):
    """An array is sent at the model's size: maps_size=image answers exactly what maps_size=model does."""
    array = _digits(client, 2, seed=7)
    for maps_format in ("png", "array"):
        request = {"array": array, "maps": True, "maps_format": maps_format}
        at_model = client.post("/anomaly-score", json=request).json()
        at_image = client.post("/anomaly-score", json={**request, "maps_size": "image"}).json()
        assert at_image == at_model
        assert all(row["anomaly_map_size"] == [28, 28] for row in at_image["results"])


def test_scores_and_maps_come_from_one_onnx_runtime_call_per_request(client, monkeypatch):
    """/anomaly-score runs the score graph once, with maps or without (the map is one of its outputs, asked for only
    with maps): no encoder or decoder call, whatever the model, format or way the images come."""
    import onnxruntime as ort

    digits = np.array(_digits(client, 2, seed=3), np.uint8)
    files = [("images", (f"{i}.png", _png(d[0]), "image/png")) for i, d in enumerate(digits)]
    asked: list[list[str]] = []  # the outputs each ONNX Runtime call asked for
    run = ort.InferenceSession.run

    def counted(session, output_names, *args, **kwargs):
        asked.append(list(output_names))
        return run(session, output_names, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    array = digits.tolist()
    for maps in (True, False):
        requests = [
            {"json": {"array": array, "maps": maps}},
            {"json": {"array": array, "maps": maps, "maps_format": "array", "model": "genlab-gan-mnist-5k"}},
            {"json": {"array": array, "maps": maps, "model": COND}},  # the class inferred
            {"files": files, "data": {"maps": str(maps).lower(), "label": "3", "model": COND}},
        ]
        for request in requests:
            asked.clear()
            r = client.post("/anomaly-score", **request)
            assert r.status_code == 200, r.text
            assert len(asked) == 1 and "score" in asked[0], (maps, request.get("json", request.get("data")), asked)
            assert ("anomaly_map" in asked[0]) == maps
            assert all(("anomaly_map" in result) == maps for result in r.json()["results"])


# -- conditional models: the class label ----------------------------------------------------------------
@pytest.fixture(scope="module")
def conditional(exports):
    """The conditional VAE-GAN's export, opened here to compute what the service should answer."""
    from genlab.export.reader import open_export

    return open_export(exports["vaegan-cond"], providers="cpu")


def _conditional_draw(client, **payload) -> dict:
    r = client.post("/generate", json={"model": COND, "format": "array", **payload})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    "value, classes, index",
    [
        (7, [str(k) for k in range(10)], 7),
        ("7", [str(k) for k in range(10)], 7),
        ("dog", ["cat", "dog"], 1),
        ("1", ["cat", "dog"], 1),  # not a name, a decimal integer: an index
        ("1", ["1", "0"], 0),  # a name wins over reading the string as an index
    ],
)
def test_a_class_is_a_name_or_an_index(value, classes, index):
    from genlab.service.inputs import class_index

    assert class_index(value, classes, "m", "label") == index


@pytest.mark.parametrize(
    "value, message",
    [
        ("x", "unknown class 'x'; m's classes: cat, dog"),
        (2, "class index 2 is out of range 0..1"),
        ("-1", "unknown class '-1'"),
        (-1, "class index -1 is out of range"),
        (True, "not bool"),
        ("9" * 5000, "class index 99999999999999999999... is out of range"),
    ],
)
def test_an_unknown_class_is_refused_with_the_classes_listed(value, message):
    from genlab.service.inputs import RequestError, class_index

    with pytest.raises(RequestError, match=message) as err:
        class_index(value, ["cat", "dog"], "m", "label[3]")
    assert err.value.field == "label[3]" and err.value.status == 422


def test_generate_under_a_label_by_name_index_or_list(client, conditional):
    from genlab.export.reader import sample_latents

    by_name = _conditional_draw(client, n=4, seed=3, label="7")
    by_index = _conditional_draw(client, n=4, seed=3, label=7)
    assert by_name == by_index and by_name["labels"] == [7] * 4 and by_name["label_names"] == ["7"] * 4
    sevens = np.full(4, 7)  # the service's images are the export's: latents from class 7's prior, decoded as 7s
    z = sample_latents(4, conditional.latent_dim, 3, prior=conditional.prior, labels=sevens)
    assert by_name["images"] == conditional.decode(z, sevens).tolist()
    mixed = _conditional_draw(client, n=3, seed=3, label=[7, "3", 0])
    assert mixed["labels"] == [7, 3, 0] and mixed["label_names"] == ["7", "3", "0"]
    z = np.random.default_rng(0).standard_normal((2, conditional.latent_dim)).tolist()
    explicit = _conditional_draw(client, z=z, label=[1, "2"])
    assert explicit["seed"] is None and explicit["labels"] == [1, 2]
    assert explicit["images"] == conditional.decode(np.array(z, np.float32), np.array([1, 2])).tolist()


def test_generate_without_a_label_draws_balanced_seeded_labels_and_returns_them(client):
    from genlab.latents import balanced_labels

    a, b, c = (_conditional_draw(client, n=20, seed=seed) for seed in (11, 11, 12))
    assert a == b and a["images"] != c["images"]
    assert a["labels"] == balanced_labels(20, 10, 11).tolist() and a["label_names"] == [str(k) for k in a["labels"]]
    assert np.bincount(a["labels"], minlength=10).tolist() == [2] * 10  # every class equally often
    assert set(np.bincount(_conditional_draw(client, n=15, seed=1)["labels"], minlength=10)) == {1, 2}
    for fmt in ("png", "npy"):  # no JSON body: the labels come in a header
        r = client.post("/generate", json={"model": COND, "n": 20, "seed": 11, "format": fmt})
        assert r.status_code == 200 and r.headers["x-genlab-labels"] == ",".join(map(str, a["labels"]))
    npy = np.load(
        io.BytesIO(client.post("/generate", json={"model": COND, "n": 20, "seed": 11, "format": "npy"}).content)
    )
    assert npy.tolist() == a["images"]
    # explicit latents without labels: the labels are drawn from the seed, which is then returned
    z = np.zeros((3, 4)).tolist()
    drawn = _conditional_draw(client, z=z, seed=5)
    assert drawn["seed"] == 5 and drawn["labels"] == balanced_labels(3, 10, 5).tolist()
    unconditional = client.post("/generate", json={"n": 2, "seed": 1, "format": "array"}).json()
    assert "labels" not in unconditional and "label_names" not in unconditional  # fields that do not apply
    assert "x-genlab-labels" not in client.post("/generate", json={"n": 2, "seed": 1}).headers


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"label": "x"}, 422, "label"),
        ({"label": 10}, 422, "label"),
        ({"label": -1}, 422, "label"),
        ({"n": 3, "label": [1, 2]}, 422, "label"),
        ({"n": 2, "label": [1, "x"]}, 422, "label[1]"),
        ({"z": [[0.0] * 4] * 2, "label": [1]}, 422, "label"),
        ({"label": True}, 400, "label"),
        ({"label": 7.5}, 400, "label"),
        ({"label": {"class": 7}}, 400, "label"),
    ],
)
def test_generate_refuses_unknown_labels_naming_the_field(client, payload, status, field):
    error = _field_error(client.post("/generate", json={"model": COND, **payload}), status, field)
    if payload.get("label") == "x":
        assert "unknown class 'x'" in error and "classes: 0, 1, 2" in error


@pytest.mark.parametrize(
    "route, model",
    [
        ("/generate", None),
        ("/generate", "genlab-gan-mnist-5k"),
        ("/reconstruct", None),
        ("/anomaly-score", "genlab-gan-mnist-5k"),
    ],
)
def test_a_model_that_is_not_conditional_refuses_labels(client, route, model):
    payload: dict = {"label": 7} if route == "/generate" else {"label": 7, "array": _digits(client, 1)}
    if model is not None:  # left out: the default model
        payload["model"] = model
    assert "not a conditional model" in _field_error(client.post(route, json=payload), 422, "label")


def test_reconstruct_under_the_requested_or_the_inferred_class(client, conditional):
    digits = np.array(_conditional_draw(client, n=3, seed=1, label=[1, 4, 7])["images"], np.uint8)
    best = conditional.scores(digits)["label"]
    inferred = client.post("/reconstruct", json={"array": digits.tolist(), "model": COND, "format": "array"}).json()
    assert inferred["labels"] == best.tolist() and inferred["label_source"] == "inferred"
    assert inferred["label_names"] == [str(k) for k in best]
    mu, _ = conditional.encode(digits, best)
    np.testing.assert_allclose(inferred["mu"], mu, atol=1e-6)
    assert inferred["images"] == conditional.decode(mu, best).tolist()

    given = client.post("/reconstruct", json={"array": digits.tolist(), "model": COND, "label": [1, 4, 7]}).json()
    assert given["labels"] == [1, 4, 7] and given["label_source"] == "request"
    np.testing.assert_allclose(given["mu"], conditional.encode(digits, np.array([1, 4, 7]))[0], atol=1e-6)
    files = [("images", (f"{i}.png", _png(d[0]), "image/png")) for i, d in enumerate(digits)]
    for form, expected in (("4", [4, 4, 4]), ("[1, 4, 7]", [1, 4, 7])):  # multipart: a form field, one or a JSON list
        uploaded = client.post("/reconstruct", files=files, data={"label": form, "model": COND})
        assert uploaded.status_code == 200 and uploaded.json()["labels"] == expected, uploaded.text
    _field_error(client.post("/reconstruct", files=files, data={"label": "[1, 4]", "model": COND}), 422, "label")
    unconditional = client.post("/reconstruct", json={"array": digits.tolist()}).json()
    assert {"labels", "label_names", "label_source"}.isdisjoint(unconditional)


def test_anomaly_score_under_the_requested_or_the_inferred_class(client, conditional):
    digits = np.array(_conditional_draw(client, n=3, seed=2, label=[0, 5, 9])["images"], np.uint8)
    expected = conditional.scores(digits)
    inferred = client.post("/anomaly-score", json={"array": digits.tolist(), "model": COND}).json()["results"]
    assert [r["label"] for r in inferred] == expected["label"].tolist()
    assert {r["label_source"] for r in inferred} == {"inferred"} and [r["label_name"] for r in inferred] == [
        str(k) for k in expected["label"]
    ]
    np.testing.assert_allclose([r["score"] for r in inferred], expected["score"], rtol=1e-6)
    assert "label" not in inferred[0]["components"]  # the class is not a score component

    files = [("images", (f"{i}.png", _png(d[0]), "image/png")) for i, d in enumerate(digits)]
    r = client.post(
        "/anomaly-score", files=files, data={"label": "5", "model": COND, "maps": "true", "maps_format": "array"}
    )
    assert r.status_code == 200, r.text
    given = r.json()["results"]
    fives = np.full(3, 5)
    assert [g["label"] for g in given] == [5, 5, 5] and {g["label_source"] for g in given} == {"request"}
    np.testing.assert_allclose([g["score"] for g in given], conditional.scores(digits, fives)["score"], rtol=1e-6)
    maps = _map(digits, conditional.decode(conditional.encode(digits, fives)[0], fives))
    np.testing.assert_allclose(np.array([g["anomaly_map"] for g in given]), maps, atol=1e-5)
    plain = client.post("/anomaly-score", json={"array": digits.tolist()}).json()["results"][0]
    assert {"label", "label_name", "label_source", "anomaly_map"}.isdisjoint(plain)


def test_models_lists_the_classes_of_conditional_models(client):
    rows = {r["name"]: r for r in client.post("/models").json()}
    assert rows[COND]["conditional"] and rows[COND]["classes"] == [str(k) for k in range(10)]
    assert rows[COND]["manifest"]["classes"]["conditional"] and "fitted_prior" not in rows[COND]["manifest"]["latent"]
    assert not rows["genlab-vaegan-mnist-5k"]["conditional"] and rows["genlab-vaegan-mnist-5k"]["classes"] == []


def _npy_file(field: str, array: np.ndarray) -> tuple:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return field, (f"{field}.npy", buffer.getvalue(), "application/octet-stream")


def test_batch_routes_take_labels_for_conditional_models(client, conditional):
    from genlab.export.reader import sample_latents

    labels = np.array([3, 3, 8], np.int64)
    z = sample_latents(3, conditional.latent_dim, 0, prior=conditional.prior, labels=labels)
    missing = client.post("/batch/decode", files=[_npy_file("z", z)], data={"model": COND})
    assert "conditional model" in _field_error(missing, 422, "labels")
    decoded = client.post("/batch/decode", files=[_npy_file("z", z), _npy_file("labels", labels)], data={"model": COND})
    assert decoded.status_code == 200, decoded.text
    images = np.load(io.BytesIO(decoded.content))
    np.testing.assert_array_equal(images, conditional.decode(z, labels))

    best = conditional.scores(images)
    inferred = client.post("/batch/score", files=[_npy_file("images", images)], data={"model": COND})
    assert inferred.headers["x-genlab-labels"] == ",".join(map(str, best["label"]))
    table = np.load(io.BytesIO(inferred.content))
    assert table.shape == (3, len(conditional.score_names))  # the class is a header, not a column
    np.testing.assert_allclose(table[:, 0], best["score"], rtol=1e-6)
    partly = np.array([3, -1, 0], np.int64)  # -1: infer that one
    given = client.post(
        "/batch/score", files=[_npy_file("images", images), _npy_file("labels", partly)], data={"model": COND}
    )
    expected = conditional.scores(images, partly)
    assert given.headers["x-genlab-labels"] == ",".join(map(str, expected["label"])) and expected["label"][0] == 3
    np.testing.assert_allclose(np.load(io.BytesIO(given.content))[:, 0], expected["score"], rtol=1e-6)


@pytest.mark.parametrize(
    "route, labels, field",
    [
        ("/batch/decode", np.array([1, 2], np.int64), "labels"),  # 2 labels for 3 latents
        ("/batch/decode", np.array([1.0, 2.0, 3.0]), "labels"),  # not integers
        ("/batch/decode", np.array([1, 2, 10]), "labels[2]"),
        ("/batch/decode", np.array([-1, 2, 3]), "labels[0]"),  # -1 (unknown) only where the class can be inferred
        ("/batch/score", np.array([-2, 2, 3]), "labels[0]"),
        ("/batch/score", np.zeros((3, 1), np.int64), "labels"),
    ],
)
def test_bad_batch_labels_are_refused_naming_the_field(client, route, labels, field):
    data = (
        _npy_file("z", np.zeros((3, 4), np.float32))
        if route == "/batch/decode"
        else _npy_file("images", np.zeros((3, 1, 28, 28), np.uint8))
    )
    _field_error(client.post(route, files=[data, _npy_file("labels", labels)], data={"model": COND}), 422, field)


def test_batch_routes_of_other_models_refuse_labels(client):
    labels = _npy_file("labels", np.zeros(2, np.int64))
    for route, data in (
        ("/batch/decode", _npy_file("z", np.zeros((2, 4), np.float32))),
        ("/batch/score", _npy_file("images", np.zeros((2, 1, 28, 28), np.uint8))),
    ):
        assert "not a conditional model" in _field_error(client.post(route, files=[data, labels]), 422, "labels")
    plain = client.post("/batch/score", files=[_npy_file("images", np.zeros((2, 1, 28, 28), np.uint8))])
    assert plain.status_code == 200 and "x-genlab-labels" not in plain.headers


def test_real_server_draws_sixteen_sevens(exports, tmp_path):
    """The issue's goal, as a newcomer would: serve the conditional export alone, POST {"n": 16, "label": 7}."""
    import httpx

    with running_server([exports["vaegan-cond"]], tmp_path / "serve.log") as url:
        grid = httpx.post(f"{url}/generate", json={"n": 16, "label": 7}, timeout=30)
        assert grid.status_code == 200 and grid.content.startswith(b"\x89PNG")
        assert grid.headers["x-genlab-labels"] == ",".join(["7"] * 16)
        listed = httpx.post(f"{url}/generate", json={"n": 16, "label": "7", "format": "png_list"}, timeout=30).json()
        assert listed["labels"] == [7] * 16 and listed["label_names"] == ["7"] * 16
        bad = httpx.post(f"{url}/generate", json={"n": 16, "label": "seven"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["field"] == "label"


def test_tracing_excludes_every_path_only_while_the_sdk_is_disabled(monkeypatch):
    from genlab.service.service import tracing_settings

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing_settings() == {"excluded_urls": [".*"]}
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    assert tracing_settings() == {}
