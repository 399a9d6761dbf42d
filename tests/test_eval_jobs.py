"""The evaluation-jobs service: durable jobs with progress, cancel, a bounded queue, paging and the API key.

In-process: the Starlette app over a job store in a temporary state directory, with the runner
thread started where jobs must run. For real: `genlab eval serve-jobs` is killed with SIGKILL mid-job
(all its processes, or the supervisor alone) and restarted on the same state directory, then
stopped with SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
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

    from genlab.bearer import HEALTH_PATHS
    from genlab.web import RequireKey

    monkeypatch.setenv("GENLAB_EVAL_MODELS", str(models))
    store = JobStore(state, max_queued=max_queued)
    runner = JobRunner(store, job_runner("data")) if run else None
    if runner is not None:
        runner.start()
    app = jobs_app(store)
    return TestClient(RequireKey(app, api_key, open_paths=HEALTH_PATHS) if api_key else app), runner


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
    listed = client.get("/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [fid["id"], submitted.json()["id"]] and listed["next"] is None
    assert "result" not in listed["jobs"][0]


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
    wrong = client.delete("/jobs")
    assert wrong.status_code == 405 and wrong.json()["field"] == "method", wrong.text


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


def test_jobs_are_listed_in_pages_newest_first_with_a_stable_cursor(models, tmp_path, monkeypatch):
    """More jobs than a page: every job exactly once, newest first, the running one included, while new jobs arrive
    between pages; jobs created in the same instant are ordered by id. A bad limit or cursor names its parameter."""
    from genlab.eval.job_store import JobStore

    client, _ = _client(models, tmp_path / "state", monkeypatch, max_queued=500, run=False)
    store = JobStore(tmp_path / "state", max_queued=500)
    submitted = [store.submit("fid", {"model": "vae-1", "n": i})["id"] for i in range(130)]
    assert store.claim()["id"] == submitted[0]  # the oldest runs: on the last page
    first = client.get("/jobs").json()
    assert len(first["jobs"]) == 100 and first["next"]
    store.submit("fid", {"model": "vae-1"})  # a newer job shifts nothing that is already paged
    rest = client.get("/jobs", params={"after": first["next"]}).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == submitted[::-1] and rest["next"] is None
    assert rest["jobs"][-1]["state"] == "running"

    with store._transaction() as db:  # one instant for all: the id orders them
        db.execute("UPDATE jobs SET created = 1700000000.5")
    seen, after = [], None
    while True:
        page = client.get("/jobs", params={"limit": 7, **({"after": after} if after else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        if (after := page["next"]) is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 131
    assert len(client.get("/jobs", params={"limit": 500}).json()["jobs"]) == 131

    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "nope"}, "after"),
        ({"after": "inf_" + "0" * 32}, "after"),
        ({"after": "1.5_../etc"}, "after"),
        ({"limt": 5}, "limt"),  # a typo is refused, not ignored
    ]:
        response = client.get("/jobs", params=params)
        assert response.status_code == 400 and response.json()["field"] == field, (params, response.text)


def test_a_completed_result_lands_even_after_its_job_was_queued_again(tmp_path):
    """An attempt that completes keeps its result whatever recovery did to the row meanwhile; a failure or cancel
    from an attempt that is not the running one changes nothing."""
    from genlab.eval.job_store import JobStore

    store = JobStore(tmp_path, max_attempts=3)
    job = store.submit("fid", {"model": "m"})["id"]
    attempt = store.claim()["attempts"]
    store.recover()  # requeued under the attempt, as a recovery without the runner lock would
    assert store.get(job)["state"] == "queued"
    assert store.finish(job, attempt, "completed", result={"values": {"fid": 1.5}})
    done = store.get(job)
    assert done["state"] == "completed" and done["result"] == {"values": {"fid": 1.5}} and done["attempts"] == 1
    assert not store.finish(job, attempt, "completed", result={"values": {"fid": 9.0}})  # once only
    assert store.get(job)["result"] == {"values": {"fid": 1.5}}

    other = store.submit("fid", {"model": "m"})["id"]
    stale = store.claim()["attempts"]
    store.recover()
    assert store.claim()["attempts"] == stale + 1
    assert not store.finish(other, stale, "failed", error="from the old attempt")
    assert store.get(other)["state"] == "running"
    assert store.finish(other, stale + 1, "failed", error="from the running attempt")
    assert store.get(other)["error"] == "from the running attempt"


def test_the_supervisor_recovers_only_under_the_runner_lock(tmp_path, monkeypatch, capsys):
    """While a runner holds the store, its running job is its own: the supervisor's exit leaves it alone."""
    from genlab.eval import jobs_supervisor
    from genlab.eval.job_runner import LOCK_FILE, hold_lock
    from genlab.eval.job_store import JobStore

    monkeypatch.setattr(jobs_supervisor, "STOP_GRACE_S", 0.3)
    store = JobStore(tmp_path)
    job = store.submit("fid", {"model": "m"})["id"]
    store.claim()
    with hold_lock(tmp_path / LOCK_FILE, "jobs runner"):
        jobs_supervisor.recover_jobs(store)
    assert store.get(job)["state"] == "running" and "jobs not recovered" in capsys.readouterr().err
    jobs_supervisor.recover_jobs(store)
    assert store.get(job)["state"] == "queued" and f"job {job} is queued" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("check", ["parent + 1_000_000, None", "parent, parent_of(parent) + 1_000_000", "parent, None"])
def test_a_process_whose_parent_is_not_the_expected_one_dies_at_once(check):
    """The race where the parent died before the death signal was asked for: the process kills itself."""
    code = (
        "import os\n"
        "from genlab.eval.job_runner import die_with_parent, parent_of\n"
        f"parent = os.getppid()\ndie_with_parent({check})\nprint('alive')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    if check == "parent, None":
        assert done.returncode == 0 and done.stdout == "alive\n", done.stderr
    else:
        assert done.returncode == -signal.SIGKILL and done.stdout == "", done.stderr


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


def _descendants(root: int) -> set[int]:
    """The pids below ``root`` in the process tree (from /proc)."""
    from genlab.eval.job_runner import parent_of

    children: dict[int | None, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        children.setdefault(parent_of(int(stat.parent.name)), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_service_survives_kill_9_mid_job_and_stops_on_sigterm(models, tmp_path):
    """A completed job and a long running one; SIGKILL of the service and its workers; a restart on the same state
    directory keeps the completed result and runs the interrupted job again (attempt 2 of 2); a SIGTERM then stops
    it within 10 s and, its attempts spent, the job is failed with the reason. Nothing stays running."""
    descendants = _descendants
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


def test_kill_9_of_the_supervisor_ends_its_server_and_a_restart_completes_the_job_once(models, tmp_path):
    """With a key, BentoML's own routes need it too. A SIGKILL of `genlab eval serve-jobs` alone, mid-job, takes its
    server with it within seconds (nothing listens, none of its processes runs); the same command then starts, and
    the job runs again and completes exactly once with its result, attempt 2 of 2."""
    from genlab.bearer import HEALTH_PATHS

    state, port, key = tmp_path / "state", free_port(), "k"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_API_KEY": key}
    url, auth = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {key}"}
    log = open(tmp_path / "jobs.log", "w+")  # noqa: SIM115 (the service writes to it until the test stops it)
    proc = _start(models, state, port, log, env)
    try:
        for path in ("/metrics", "/docs.json", "/", "/schema.json"):
            refused = httpx.get(f"{url}{path}")
            assert refused.status_code == 401 and refused.json()["field"] == "Authorization", (path, refused.text)
        assert all(httpx.get(f"{url}{path}").status_code == 200 for path in HEALTH_PATHS)
        for i in range(300):  # distinct unknown paths add no series to genlab's metrics (with the key)
            httpx.get(f"{url}/x-{i}")
        metrics = httpx.get(f"{url}/metrics", headers=auth)
        assert metrics.status_code == 200 and "x-1" not in metrics.text and len(metrics.content) < 50_000
        assert 'route="unmatched"' in metrics.text and "bentoml_" not in metrics.text
        job = {"model": "vae-1", "n": 5000, "extractor": "lenet", "metrics": ["kid"], "bootstrap": 0}
        slow = httpx.post(f"{url}/jobs/fid", json=job, headers=auth).json()["id"]
        assert len(_progress_while_running(url, slow, auth, polls=1)) == 1
        server = _descendants(proc.pid)  # the arbiter and its worker
        assert len(server) >= 2, server
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _listening(port) or any(map(_alive, server)):
            left = [pid for pid in server if _alive(pid)]
            assert time.monotonic() < deadline, f"the server outlived its supervisor: {left} alive"
            time.sleep(0.1)
        proc = _start(models, state, port, log, env)
        with httpx.Client(base_url=url, headers=auth) as client:
            done = _wait(client, slow, timeout=60)
            assert done["state"] == "completed" and done["attempts"] == 2, done
            assert "stopped while attempt 1 of 2 ran" in done["note"] and done["error"] is None
            assert done["result"]["n"] == 5000 and done["result"]["values"]["lenet_kd"] > 0
            time.sleep(1)
            assert client.get(f"/jobs/{slow}").json() == done  # once: nothing ran it again
            assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [slow]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
