"""What a client that gets something wrong sees: typos refused with the closest valid name, one error shape for
every status (unknown routes and methods included), clear words for a wrong file, one warning line in the log;
and responses that hold only the fields that apply."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image

from tests.conftest import bentoml_test_client


@pytest.fixture(scope="module")
def client(exports):
    from genlab.service.service import build_service
    from genlab.service.settings import Settings

    service = build_service(Settings(models=(str(exports["vaegan"]),), max_images=16))
    with bentoml_test_client(service) as c:
        yield c


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


DIGIT = _png(np.zeros((28, 28), np.uint8))


def _refusal(r, status: int, field: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "field"} and body["field"] == field, body
    return body["error"]


@pytest.mark.parametrize(
    ("route", "payload", "field", "hint"),
    [
        ("/generate", {"num": 4}, "num", "did you mean 'n'?"),
        ("/generate", {"n": 2, "temprature": 0.5}, "temprature", "did you mean 'temperature'?"),
        ("/anomaly-score", {"array": [], "percentil": 3}, "percentil", "did you mean 'percentile'?"),
        ("/reconstruct", {"arrays": []}, "arrays", "did you mean 'array'?"),
    ],
)
def test_an_unknown_json_field_is_refused_with_the_closest_name(client, route, payload, field, hint):
    assert hint in _refusal(client.post(route, json=payload), 400, field)


@pytest.mark.parametrize("route", ["/reconstruct", "/anomaly-score"])
def test_an_unknown_form_part_is_refused_with_the_closest_name(client, route):
    message = _refusal(client.post(route, files=[("image", ("digit.png", DIGIT, "image/png"))]), 400, "image")
    assert "did you mean 'images'?" in message
    text = client.post(route, files=[("images", ("d.png", DIGIT, "image/png"))], data={"lable": "3"})
    assert "did you mean 'label'?" in _refusal(text, 400, "lable")


def test_models_answers_get_as_well_as_post(client):
    got, posted = client.get("/models"), client.post("/models")
    assert got.status_code == posted.status_code == 200 and got.json() == posted.json()


def test_unknown_routes_and_methods_get_the_api_error_shape(client):
    assert "/generate" in _refusal(client.get("/nothing-here"), 404, "path")
    assert "use POST" in _refusal(client.get("/generate"), 405, "method")
    assert "use" in _refusal(client.put("/models"), 405, "method")


def test_an_unknown_model_is_a_404_naming_the_model(client):
    assert "genlab-vaegan-mnist-5k" in _refusal(client.post("/generate", json={"model": "nope"}), 404, "model")


def test_an_image_sent_to_a_batch_route_is_told_what_the_route_takes(client):
    r = client.post("/batch/score", files={"images": ("digit.png", DIGIT, "application/octet-stream")})
    message = _refusal(r, 400, "images")
    assert "PNG image, not a .npy file" in message and "/anomaly-score" in message and "pickle" not in message


def test_one_image_is_the_image_itself_and_several_are_a_grid(client, exports):
    from genlab.export.reader import read_export

    one = Image.open(io.BytesIO(client.post("/generate", json={"n": 1, "seed": 3}).content))
    assert one.size == (28, 28)
    drawn = np.array(client.post("/generate", json={"n": 1, "seed": 3, "format": "array"}).json()["images"][0][0])
    assert (np.asarray(one) == drawn).all()  # the PNG is exactly the drawn pixels, so it reconstructs unresized
    assert read_export(exports["vaegan"]).image_shape == (1, 28, 28)
    grid = Image.open(io.BytesIO(client.post("/generate", json={"n": 4, "seed": 3}).content))
    assert grid.size != (28, 28)


def test_responses_hold_only_the_fields_that_apply(client):
    generated = client.post("/generate", json={"n": 2, "seed": 1, "format": "png_list"}).json()
    assert set(generated) == {"model", "seed", "shape", "images"}
    files = [("images", ("d.png", DIGIT, "image/png"))]
    reconstructed = client.post("/reconstruct", files=files).json()
    assert set(reconstructed) == {"model", "images", "mu", "recon_error"}
    assert Image.open(io.BytesIO(base64.b64decode(reconstructed["images"][0]))).size == (28, 28)  # same name, format
    scored = client.post("/anomaly-score", files=files).json()["results"][0]
    assert set(scored) == {"score", "normalized_score", "percentile", "is_anomaly", "components"}
    with_map = client.post("/anomaly-score", files=files, data={"maps": "true"}).json()["results"][0]
    assert Image.open(io.BytesIO(base64.b64decode(with_map["anomaly_map"]))).size == (28, 28)
    as_array = client.post("/anomaly-score", files=files, data={"maps": "true", "maps_format": "array"}).json()
    assert np.array(as_array["results"][0]["anomaly_map"]).shape == (1, 28, 28)


def test_a_client_error_is_one_warning_line(client, caplog):
    with caplog.at_level(logging.WARNING, logger="genlab.web"):
        client.post("/generate", json={"num": 4})
    (record,) = [r for r in caplog.records if r.name == "genlab.web"]
    assert record.levelname == "WARNING" and record.exc_info is None
    assert record.getMessage().startswith("refused POST /generate: num: unknown field 'num'; did you mean 'n'?")


@pytest.mark.parametrize(
    ("route", "payload", "field"),
    [
        ("/interpolate", {"seeds": ["1", "2"], "format": "array"}, "seeds"),
        ("/interpolate", {"seeds": [True, False], "format": "array"}, "seeds"),
        ("/interpolate", {"seeds": [1.0, 2.0], "format": "array"}, "seeds"),
        ("/interpolate", {"seeds": [1, 2], "steps": "4"}, "steps"),
        ("/generate", {"n": "2"}, "n"),
        ("/generate", {"n": 2, "seed": True}, "seed"),
        ("/generate", {"n": 2, "model": None}, "model"),
        ("/interpolate", {"seeds": [1, 2], "model": None}, "model"),
        ("/anomaly-score", {"array": [], "maps": "yes"}, "maps"),
    ],
)
def test_a_value_of_another_type_is_refused_not_converted(client, route, payload, field):
    _refusal(client.post(route, json=payload), 400, field)


@pytest.mark.parametrize("label", ["01", "\u0661", "+1", " 1", "1.0"])
def test_a_class_index_is_ascii_digits_without_leading_zeros(exports, label):
    from genlab.service.inputs import RequestError, class_index

    classes = [str(k) for k in range(10)]
    assert class_index("1", classes, "m", "label") == 1 and class_index(1, classes, "m", "label") == 1
    with pytest.raises(RequestError) as refused:
        class_index(label, classes, "m", "label")
    assert refused.value.status == 422 and refused.value.field == "label"


@pytest.mark.parametrize(
    "send",
    [
        {"json": {"array": np.zeros((1, 1, 28, 28), int).tolist(), "maps": True, "maps_size": "original"}},
        {"json": {"array": np.zeros((1, 1, 28, 28), int).tolist(), "maps": True, "maps_size": 1}},
        {"files": [("images", ("d.png", DIGIT, "image/png"))], "data": {"maps": "true", "maps_size": "upload"}},
    ],
    ids=["json-unknown", "json-number", "form-unknown"],
)
def test_an_unknown_maps_size_is_refused_naming_it(client, send):
    message = _refusal(client.post("/anomaly-score", **send), 400, "maps_size")
    assert "'model' or 'image'" in message


def test_float_maps_at_a_large_uploads_size_are_refused_and_png_ones_answered(client):
    """maps_format=array with maps_size=image holds at most MAX_ARRAY_MAP_VALUES floats per request (413 naming
    maps_size); the same upload's map as a PNG, or at the model's size, is answered."""
    from genlab.service.maps import MAX_ARRAY_MAP_VALUES

    side = int(MAX_ARRAY_MAP_VALUES**0.5) + 1  # one grey channel: side**2 map values
    files = [("images", ("large.png", _png(np.zeros((side, side), np.uint8)), "image/png"))]
    fields = {"maps": "true", "maps_size": "image"}
    message = _refusal(
        client.post("/anomaly-score", files=files, data={**fields, "maps_format": "array"}), 413, "maps_size"
    )
    assert f"{side * side:,} floats" in message and "maps_format=png" in message
    png = client.post("/anomaly-score", files=files, data=fields)
    assert png.status_code == 200, png.text
    assert png.json()["results"][0]["anomaly_map_size"] == [side, side]
    at_model = client.post("/anomaly-score", files=files, data={"maps": "true", "maps_format": "array"})
    assert at_model.status_code == 200 and at_model.json()["results"][0]["anomaly_map_size"] == [28, 28]
