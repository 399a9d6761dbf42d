"""The evaluation-jobs service: durable jobs with progress, cancel, a bounded queue and the API key.

In-process: the Starlette app over a job store in a temporary state directory, with the runner
thread started where jobs must run. For real: `genlab eval serve-jobs` is killed with SIGKILL mid-job
and restarted on the same state directory, then stopped with SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service_fixtures import REPO, free_port


@pytest.fixture(scope="module")
def models(one_class_vae, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("jobs")
    root = tmp / "models"
    shutil.copytree(one_class_vae, root / "vae-1")
    (root / "not-a-model").mkdir()
    (tmp / "secret").mkdir()
    shutil.copy(one_class_vae / "last.pt", tmp / "secret" / "last.pt")  # outside the root: never reachable
    return root


def _client(models: Path, state: Path, monkeypatch, api_key: str | None = None, max_queued: int = 16, run=True):
    from genlab.eval.job_runner import JobRunner
    from genlab.eval.job_store import JobStore
    from genlab.eval.jobs_app import jobs_app
    from genlab.eval.jobs_service import job_runner
    from starlette.testclient import TestClient

    monkeypatch.setenv("GENLAB_EVAL_MODELS", str(models))
    store = JobStore(state, max_queued=max_queued)
    runner = JobRunner(store, job_runner("data")) if run else None
    if runner is not None:
        runner.start()
    return TestClient(jobs_app(store, api_key)), runner


@pytest.fixture
def client(models, tmp_path, monkeypatch):
    c, runner = _client(models, tmp_path / "state", monkeypatch)
    yield c
    runner.stop()
    runner.join(timeout=60)


def _wait(client, job_id: str, timeout: float = 120.0, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def test_anomaly_and_fid_jobs_end_to_end(client, one_class_vae):
    from genlab.eval.anomaly import evaluate_anomaly
    from genlab.eval.fid import compute_fid

    assert client.get("/models").json()["models"] == {"vae-1": {"kind": "checkpoint"}}
    submitted = client.post("/jobs/anomaly", json={"model": "vae-1", "percentile": 95})
    assert submitted.status_code == 202 and submitted.json()["state"] == "queued", submitted.text
    fid = client.post("/jobs/fid", json={"model": "vae-1", "n": 30, "extractor": "lenet", "bootstrap": 3}).json()
    job = _wait(client, submitted.json()["id"])
    assert job["state"] == "completed" and job["progress"]["fraction"] == 1.0 and job["attempts"] == 1
    result = job["result"]
    assert result["settings"]["normal_class"] == 1 and result["counts"] == {"normal": 50, "anomalous": 450}
    direct = evaluate_anomaly(one_class_vae, percentile=95)
    for name, row in direct["components"].items():
        for key in ("auroc", "auprc", "threshold", "tpr", "fpr"):
            assert result["components"][name][key] == pytest.approx(row[key]), (name, key)
    assert result["provenance"]["model"] == direct["provenance"]["model"]
    done = _wait(client, fid["id"])
    assert done["state"] == "completed", done
    expected = compute_fid(str(one_class_vae), n=30, extractor="lenet", bootstrap=3, progress=False)
    assert done["result"]["values"] == pytest.approx(expected["values"], rel=1e-9)
    assert done["result"]["provenance"]["model"]["sha256"] == expected["provenance"]["model"]["sha256"]
    assert done["progress"]["total"] == 2 * 30 + 30 or done["progress"]["total"] == 2 * 30  # reference cached or not
    listed = client.get("/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [fid["id"], submitted.json()["id"]] and "result" not in listed[0]


@pytest.mark.parametrize(
    "route, body, field",
    [
        ("anomaly", {"model": "../secret"}, "model"),
        ("anomaly", {"model": "vae-1/../../secret"}, "model"),
        ("anomaly", {"model": "/etc"}, "model"),
        ("anomaly", {"model": "nope"}, "model"),
        ("anomaly", {"model": "not-a-model"}, "model"),
        ("anomaly", {"model": "vae-1", "ood": "folder:/etc"}, "ood"),
        ("anomaly", {"model": "vae-1", "percentile": 101}, "percentile"),
        ("anomaly", {"model": "vae-1", "split": "all"}, "split"),
        ("anomaly", {"model": "vae-1", "normal_clas": 3}, "normal_clas"),  # a typo is refused, not ignored
        ("fid", {"model": "vae-1", "n": 0}, "n"),
        ("fid", {"model": "vae-1", "n": 10**9}, "n"),
        ("fid", {"model": "vae-1", "metrics": ["fid", "is"]}, "metrics"),
        ("fid", {"model": "vae-1", "reference": "folder:/"}, "reference"),
        ("fid", {"model": "..", "n": 10}, "model"),
    ],
)
def test_bad_jobs_are_refused_at_submit(client, route, body, field):
    response = client.post(f"/jobs/{route}", json=body)
    assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert re.match(rf"{field}[.:]", response.json()["error"]), response.text  # names the field, or a place inside it


@pytest.mark.parametrize(
    "body, status",
    [
        (b'{"model": "vae-\xff"}', 400),  # not UTF-8
        (b"[" * 20_000 + b"]" * 20_000, 400),  # nested past the JSON parser's depth
        (b"{" + b" " * (70 << 10) + b"}", 413),
    ],
)
def test_malformed_submissions_are_answered_at_once(client, body, status):
    response = client.post("/jobs/fid", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and response.json()["field"] == "body", response.text


def test_a_job_that_fails_says_why_and_unknown_jobs_are_404(client):
    job = _wait(client, client.post("/jobs/anomaly", json={"model": "vae-1", "normal_class": 42}).json()["id"])
    assert job["state"] == "failed" and "normal class 42" in job["error"] and job["result"] is None
    per_class = {"model": "vae-1", "n": 20, "extractor": "lenet", "per_class": True}
    job = _wait(client, client.post("/jobs/fid", json=per_class).json()["id"])
    assert job["state"] == "failed" and "--per-class needs a conditional model" in job["error"]
    for response in (client.get("/jobs/nope"), client.post("/jobs/nope/cancel")):
        assert response.status_code == 404 and response.json()["field"] == "id"
    assert client.post("/jobs/train", json={}).status_code == 404


def test_a_full_queue_answers_429_and_a_queued_job_can_be_cancelled(models, tmp_path, monkeypatch):
    client, _ = _client(models, tmp_path / "state", monkeypatch, max_queued=2, run=False)  # nothing takes jobs
    first, second = (client.post("/jobs/anomaly", json={"model": "vae-1"}) for _ in range(2))
    assert first.status_code == second.status_code == 202
    full = client.post("/jobs/anomaly", json={"model": "vae-1"})
    assert full.status_code == 429 and full.json()["field"] == "body" and "queue is full" in full.json()["error"]
    cancelled = client.post(f"/jobs/{first.json()['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["note"] == "cancelled before it started"
    assert client.post("/jobs/anomaly", json={"model": "vae-1"}).status_code == 202  # room again


def test_every_route_but_the_probes_needs_the_key_when_one_is_set(models, tmp_path, monkeypatch):
    client, _ = _client(models, tmp_path / "state", monkeypatch, api_key="s3cret", run=False)
    for response in (
        client.get("/models"),
        client.get("/jobs"),
        client.post("/jobs/anomaly", json={"model": "vae-1"}),
        client.get("/models", headers={"authorization": "Bearer wrong"}),
    ):
        assert response.status_code == 401 and response.json()["field"] == "Authorization", response.text
        assert response.headers["www-authenticate"] == "Bearer"
    good = {"authorization": "Bearer s3cret"}
    assert client.get("/models", headers=good).status_code == 200
    assert client.post("/jobs/anomaly", json={"model": "vae-1"}, headers=good).status_code == 202


def test_recovery_requeues_an_interrupted_job_until_its_attempts_are_spent(tmp_path):
    from genlab.eval.job_store import JobStore

    store = JobStore(tmp_path, max_attempts=2)
    job = store.submit("fid", {"model": "m"})
    store.claim()
    assert store.recover()[0]["state"] == "queued"  # attempt 1 of 2 was interrupted: it starts over
    again = store.get(job["id"])
    assert again["state"] == "queued" and "attempt 1 of 2" in again["note"] and again["progress"]["done"] == 0
    store.claim()
    store.progress(job["id"], 5, 10, 2.5)
    assert store.get(job["id"])["progress"] == {
        "fraction": 0.5,
        "done": 5,
        "total": 10,
        "images_per_s": 2.5,
        "eta_s": 2.0,
    }
    assert store.recover()[0]["state"] == "failed"
    failed = store.get(job["id"])
    assert failed["state"] == "failed" and "stopped while attempt 2 of 2 ran" in failed["error"]
    assert store.recover() == []  # nothing left running


# -- a real service, killed -------------------------------------------------------------------------------------
def _start(models: Path, state: Path, port: int, log, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "genlab", "eval", "serve-jobs", "--models", str(models), "--port", str(port)]
    proc = subprocess.Popen([*command, "--state-dir", str(state)], cwd=REPO, env=env, stdout=log, stderr=log)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "jobs service exited"
        time.sleep(0.25)
    raise AssertionError("jobs service not ready in 60 s")


def _progress_while_running(url: str, job_id: str, headers: dict, polls: int = 3) -> list[int]:
    """The job's images done, at ``polls`` moments while it runs (each larger than the last)."""
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while len(seen) < polls and time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", headers=headers).json()
        assert job["state"] in ("queued", "running"), job
        if job["state"] == "running" and job["progress"]["done"] > (seen[-1] if seen else 0):
            seen.append(job["progress"]["done"])
            assert job["progress"]["images_per_s"] > 0 and job["progress"]["eta_s"] is not None
        time.sleep(0.3)
    return seen


def test_the_service_survives_kill_9_mid_job_and_stops_on_sigterm(models, tmp_path):
    """A completed job and a long running one; SIGKILL of the service and its workers; a restart on the same state
    directory keeps the completed result and runs the interrupted job again (attempt 2 of 2); a SIGTERM then stops
    it within 10 s and, its attempts spent, the job is failed with the reason. Nothing stays running."""
    from genlab.eval.jobs_supervisor import descendants

    state, port, key = tmp_path / "state", free_port(), "k"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_API_KEY": key}
    url, auth = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {key}"}
    log = open(tmp_path / "jobs.log", "w+")  # noqa: SIM115 (the service writes to it until the test stops it)
    proc = _start(models, state, port, log, env)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "genlab", "eval", "serve-jobs", "--state-dir", str(state), "--port", "1"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2 and "another genlab jobs service is using" in second.stderr, second.stderr
        quick = httpx.post(f"{url}/jobs/anomaly", json={"model": "vae-1"}, headers=auth).json()["id"]
        long = {"model": "vae-1", "n": 40000, "extractor": "lenet", "metrics": ["kid"], "bootstrap": 0}
        slow = httpx.post(f"{url}/jobs/fid", json=long, headers=auth).json()["id"]
        seen = _progress_while_running(url, slow, auth)
        assert len(seen) == 3 and seen == sorted(seen), seen
        assert httpx.get(f"{url}/jobs/{quick}", headers=auth).json()["state"] == "completed"
        for pid in [proc.pid, *descendants(proc.pid)]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(1)
        proc = _start(models, state, port, log, env)
        kept = httpx.get(f"{url}/jobs/{quick}", headers=auth).json()
        assert kept["state"] == "completed" and kept["result"]["counts"] == {"normal": 50, "anomalous": 450}
        assert len(_progress_while_running(url, slow, auth, polls=1)) == 1  # running again
        resumed = httpx.get(f"{url}/jobs/{slow}", headers=auth).json()
        assert resumed["attempts"] == 2 and "stopped while attempt 1 of 2 ran" in resumed["note"]
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - start < 10 and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    from genlab.eval.job_store import JobStore

    failed = JobStore(state).get(slow)
    assert failed["state"] == "failed" and "stopped while attempt 2 of 2 ran" in failed["error"], failed
    assert JobStore(state).get(quick)["state"] == "completed"
    log.seek(0)
    assert f"job {slow} is failed" in log.read()
