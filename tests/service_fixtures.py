"""What the service tests share: the genlab command line and a real `genlab serve` to start.

The exports they serve are the shared tiny models' (the ``exports`` fixture, tests/shared_models.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.shared_models import CONDITIONAL_MODEL  # noqa: F401 (the service tests import it from here)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "width=4", "--set", "hidden=16", "--set", "latent_dim=4"]


def genlab_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genlab", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    models: list[Path], log_path: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), cwd: Path = REPO
) -> Iterator[str]:
    """`genlab serve` on a free port until the block ends; yields its URL. On the way out the whole log must be
    free of tracebacks: no request, good or bad, may make a server error."""
    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "genlab",
        "serve",
        *[a for m in models for a in ("--model", str(m))],
        "--port",
        str(port),
        *args,
    ]
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, "server exited:\n" + log_path.read_text()[-3000:]
                time.sleep(0.25)
            else:
                raise AssertionError("server not ready in 60 s")
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.seek(0)
        text = log.read()
    first = text.find("Traceback")
    assert first < 0, text[max(0, first - 500) : first + 4000]
