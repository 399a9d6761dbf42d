"""The evaluation-jobs service in-process (ASGI app + test client): submit, poll, fetch; refusals."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.conftest import bentoml_test_client
from tests.eval_fixtures import one_class_vae  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def client(one_class_vae, tmp_path_factory):
    from _bentoml_impl.tasks.result import Sqlite3Store

    tmp = tmp_path_factory.mktemp("jobs")
    root = tmp / "models"
    shutil.copytree(one_class_vae, root / "vae-1")
    (root / "not-a-model").mkdir()
    (tmp / "secret").mkdir()
    shutil.copy(one_class_vae / "last.pt", tmp / "secret" / "last.pt")  # outside the root: never reachable
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_EVAL_MODELS", str(root))
        mp.setenv("BENTOML_RESULT_STORE", str(tmp / "tasks.db"))
        Sqlite3Store.init_db(str(tmp / "tasks.db"))
        from eval.jobs_service import EvalJobs

        with bentoml_test_client(EvalJobs) as c:
            yield c


def _wait(client, route: str, task_id: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/{route}/status", params={"task_id": task_id}).json()["status"]
        if status != "in_progress":
            return status
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still running after {timeout} s")


def test_anomaly_job_end_to_end(client):
    assert client.get("/models").json()["models"] == {"vae-1": {"kind": "checkpoint"}}
    submitted = client.post("/anomaly/submit", json={"model": "vae-1", "percentile": 95})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    assert _wait(client, "anomaly", task_id) == "completed"
    result = client.get("/anomaly/get", params={"task_id": task_id}).json()
    assert result["evaluation"] == "anomaly" and result["settings"]["normal_class"] == 1
    assert result["settings"]["percentile"] == 95 and result["counts"] == {"normal": 50, "anomalous": 450}
    assert 0.0 <= result["components"]["score"]["auroc"] <= 1.0


@pytest.mark.parametrize("body, field", [
    ({"model": "../secret"}, "model"),
    ({"model": "vae-1/../../secret"}, "model"),
    ({"model": "/etc"}, "model"),
    ({"model": "nope"}, "model"),
    ({"model": "not-a-model"}, "model"),
    ({"model": "vae-1", "ood": "folder:/etc"}, "ood"),
    ({"model": "vae-1", "percentile": 101}, "percentile"),
    ({"model": "vae-1", "split": "all"}, "split"),
])
def test_bad_anomaly_jobs_are_refused_at_submit(client, body, field):
    response = client.post("/anomaly/submit", json=body)
    assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert re.match(rf"{field}[.:]", response.json()["error"]), response.text  # names the field, or a place inside it


@pytest.mark.parametrize("body, field", [
    ({"model": "vae-1", "n": 0}, "n"),
    ({"model": "vae-1", "n": 10**9}, "n"),
    ({"model": "vae-1", "metrics": ["fid", "is"]}, "metrics"),
    ({"model": "vae-1", "reference": "folder:/"}, "reference"),
    ({"model": "..", "n": 10}, "model"),
])
def test_bad_fid_jobs_are_refused_at_submit(client, body, field):
    response = client.post("/fid/submit", json=body)
    assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert re.match(rf"{field}[.:]", response.json()["error"]), response.text  # names the field, or a place inside it


def test_a_job_that_fails_reports_why(client):
    task_id = client.post("/anomaly/submit", json={"model": "vae-1", "normal_class": 42}).json()["task_id"]
    assert _wait(client, "anomaly", task_id) == "failed"
    response = client.get("/anomaly/get", params={"task_id": task_id})
    assert response.status_code == 400 and "normal class 42" in response.text


def test_a_fid_job_without_a_reference_uses_the_split_it_was_given(client, monkeypatch):
    """The job used to drop `split` when no `reference` was named, so every such job scored the test split."""
    import eval.fid

    seen = {}

    def fake_compute_fid(model, **kwargs):
        seen.update(kwargs)
        return {"evaluation": "fid"}

    monkeypatch.setattr(eval.fid, "compute_fid", fake_compute_fid)
    task_id = client.post("/fid/submit", json={"model": "vae-1", "split": "val", "n": 10, "extractor": "lenet"}).json()["task_id"]
    assert _wait(client, "fid", task_id) == "completed"
    assert seen["ref"] is None and seen["split"] == "val" and seen["extractor"] == "lenet" and seen["n"] == 10
    assert seen["per_class"] is False


def test_a_per_class_fid_job_on_an_unconditional_model_fails_with_the_reason(client):
    body = {"model": "vae-1", "n": 20, "extractor": "lenet", "per_class": True}
    task_id = client.post("/fid/submit", json=body).json()["task_id"]
    assert _wait(client, "fid", task_id) == "failed"
    response = client.get("/fid/get", params={"task_id": task_id})
    assert response.status_code == 400 and "--per-class needs a conditional model" in response.text
