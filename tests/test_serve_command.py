"""`genlab serve` refuses what it cannot serve in one line and exit code 2, before anything starts: a port in use (the
quickstart checks it before it trains), and a bare model name that several different versions in BentoML's model
store (shared by every checkout of a user) answer to."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.service_fixtures import REPO, genlab_cli

NAME = "genlab-vaegan-mnist-5k"


@pytest.fixture
def busy_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    return r.stderr


def test_a_port_in_use_is_one_line_before_anything_starts(busy_port, exports):
    assert "in use" in _one_line(genlab_cli("serve", "--model", str(exports["vaegan"]), "--port", str(busy_port)))
    assert "in use" in _one_line(genlab_cli("serve", "--port", str(busy_port), "--check-port"))
    assert "1..65535" in _one_line(genlab_cli("serve", "--port", "70000", "--check-port"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert genlab_cli("serve", "--port", str(free), "--check-port").returncode == 0


def test_the_quickstart_with_its_port_taken_fails_in_one_line_before_it_trains(busy_port, tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PORT": str(busy_port), "RUN_DIR": str(run_dir)},
    )
    errors = [line for line in r.stderr.splitlines() if not line.startswith("setup:")]
    assert r.returncode == 2 and len(errors) == 1 and "in use" in errors[0], r.stderr
    assert not run_dir.exists()  # nothing was trained


def _store(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def test_a_name_several_stored_versions_answer_to_is_refused(exports, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    save = "import sys; from genlab.export.store import save_to_store; print(save_to_store(sys.argv[1], sys.argv[2]))"
    first = _store(env, save, str(exports["vaegan"]), NAME)
    again = _store(env, save, str(exports["vaegan"]), NAME)
    assert first.returncode == again.returncode == 0 and first.stdout == again.stdout  # the same bytes: one version
    checkout = tmp_path / "other-checkout" / "export"  # what a quickstart in another checkout stores
    shutil.copytree(exports["gan"], checkout)
    other = _store(env, save, str(checkout), NAME)
    assert other.returncode == 0 and other.stdout != first.stdout, other.stderr

    refused = _one_line(genlab_cli("serve", env=env))
    assert "2 different versions" in refused and str(checkout) in refused
    assert f"{NAME}:latest" in refused and first.stdout.strip() in refused
    check = "import sys; from genlab.service.commands import verify_models; print(verify_models(sys.argv[1:]))"
    for chosen in (f"{NAME}:latest", first.stdout.strip(), str(exports["vaegan"])):
        assert _store(env, check, chosen).returncode == 0, chosen
