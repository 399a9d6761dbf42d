"""The evaluation-jobs service in-process (ASGI app + test client): submit, poll, fetch; refusals."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import bentoml_test_client


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
        from genlab.eval.jobs_service import EvalJobs

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


def test_anomaly_job_end_to_end(client, one_class_vae):
    assert client.get("/models").json()["models"] == {"vae-1": {"kind": "checkpoint"}}
    submitted = client.post("/anomaly/submit", json={"model": "vae-1", "percentile": 95})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    assert _wait(client, "anomaly", task_id) == "completed"
    result = client.get("/anomaly/get", params={"task_id": task_id}).json()
    assert result["evaluation"] == "anomaly" and result["settings"]["normal_class"] == 1
    assert result["settings"]["percentile"] == 95 and result["counts"] == {"normal": 50, "anomalous": 450}
    # the job runs the same evaluation as `genlab eval anomaly` does on that run
    from genlab.eval.anomaly import evaluate_anomaly

    direct = evaluate_anomaly(one_class_vae, percentile=95)
    assert set(result["components"]) == set(direct["components"])
    for name, row in direct["components"].items():
        for key in ("auroc", "auprc", "threshold", "tpr", "fpr"):
            assert result["components"][name][key] == pytest.approx(row[key]), (name, key)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "../secret"}, "model"),
        ({"model": "vae-1/../../secret"}, "model"),
        ({"model": "/etc"}, "model"),
        ({"model": "nope"}, "model"),
        ({"model": "not-a-model"}, "model"),
        ({"model": "vae-1", "ood": "folder:/etc"}, "ood"),
        ({"model": "vae-1", "percentile": 101}, "percentile"),
        ({"model": "vae-1", "split": "all"}, "split"),
    ],
)
def test_bad_anomaly_jobs_are_refused_at_submit(client, body, field):
    response = client.post("/anomaly/submit", json=body)
    assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert re.match(rf"{field}[.:]", response.json()["error"]), response.text  # names the field, or a place inside it


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "vae-1", "n": 0}, "n"),
        ({"model": "vae-1", "n": 10**9}, "n"),
        ({"model": "vae-1", "metrics": ["fid", "is"]}, "metrics"),
        ({"model": "vae-1", "reference": "folder:/"}, "reference"),
        ({"model": "..", "n": 10}, "model"),
    ],
)
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
    """A job that names a `split` and no `reference` scores that split of the model's dataset."""
    import genlab.eval.fid

    seen = {}

    def fake_compute_fid(model, **kwargs):
        seen.update(kwargs)
        return {"evaluation": "fid"}

    monkeypatch.setattr(genlab.eval.fid, "compute_fid", fake_compute_fid)
    task_id = client.post("/fid/submit", json={"model": "vae-1", "split": "val", "n": 10, "extractor": "lenet"}).json()[
        "task_id"
    ]
    assert _wait(client, "fid", task_id) == "completed"
    assert seen["ref"] is None and seen["split"] == "val" and seen["extractor"] == "lenet" and seen["n"] == 10
    assert seen["per_class"] is False


def test_a_per_class_fid_job_on_an_unconditional_model_fails_with_the_reason(client):
    body = {"model": "vae-1", "n": 20, "extractor": "lenet", "per_class": True}
    task_id = client.post("/fid/submit", json=body).json()["task_id"]
    assert _wait(client, "fid", task_id) == "failed"
    response = client.get("/fid/get", params={"task_id": task_id})
    assert response.status_code == 400 and "--per-class needs a conditional model" in response.text


@pytest.mark.parametrize("route", ["/anomaly/submit", "/fid/submit"])
@pytest.mark.parametrize(
    "body, status",
    [
        (b'{"model": "vae-\xff"}', 400),  # not UTF-8
        (b"[" * 20_000 + b"]" * 20_000, 400),  # nested past the JSON parser's depth
        (b"{" + b" " * (70 << 10) + b"}", 413),
    ],
)
def test_malformed_submissions_are_answered_at_once(client, route, body, status):
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and response.json()["field"] == "body", response.text


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_serve_jobs_binds_loopback_and_a_sigterm_stops_a_running_job(one_class_vae, tmp_path):
    """A long FID job is running when SIGTERM arrives: the service is gone within 10 s, the job recorded as canceled,
    and the store is free for the next service (a second one on the same store meanwhile is refused in one line)."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    import httpx

    from tests.service_fixtures import REPO, free_port

    root = tmp_path / "models"
    shutil.copytree(one_class_vae, root / "vae-1")
    port = free_port()
    env = {**os.environ, "BENTOML_RESULT_STORE": str(tmp_path / "tasks.db"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "genlab", "eval", "serve-jobs", "--models", str(root), "--port", str(port)]
    log = open(tmp_path / "jobs.log", "w+")  # noqa: SIM115 (the service writes to it until the test stops it)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)  # 127.0.0.1 only
        second = subprocess.run(
            [*command[:-1], str(free_port())], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2 and "another genlab jobs service is using" in second.stderr, second.stderr
        job = httpx.post(f"{url}/fid/submit", json={"model": "vae-1", "n": 5000, "extractor": "inception"}, timeout=10)
        task_id = job.json()["task_id"]
        time.sleep(2)
        assert httpx.get(f"{url}/fid/status", params={"task_id": task_id}).json()["status"] == "in_progress"
        from genlab.eval.jobs_supervisor import descendants

        family = descendants(proc.pid)
        assert len(family) >= 2  # the arbiter and its worker
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - start < 10 and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    assert f"stopped job {task_id}" in log.read()
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        assert db.execute("SELECT status FROM result WHERE task_id = ?", (task_id,)).fetchone() == ("canceled",)
    assert not _listening_addresses(port)
    alive = [
        pid
        for pid in family
        if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ]
    assert not alive, alive  # the worker that ran the job is gone too
