"""What the service tests share: two small exports (session scope) and a real `genlab serve` to start."""

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

import pytest

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


CONDITIONAL_MODEL = "genlab-vaegan-cond"  # the conditional VAE-GAN's export name (the others keep their default names)


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A VAE-GAN, a GAN and a class-conditional VAE-GAN (``vaegan-cond``, named genlab-vaegan-cond), one epoch each
    on mnist-5k at toy width, exported (no BentoML store)."""
    root = tmp_path_factory.mktemp("served")
    out = {}
    for key, family, train_flags, export_flags in (
        ("vaegan", "vaegan", (), ()),
        ("gan", "gan", (), ()),
        ("vaegan-cond", "vaegan", ("--conditional",), ("--bento", CONDITIONAL_MODEL)),
    ):
        run = genlab_cli("train", family, *train_flags, "--epochs", "1", "--out", str(root / f"run-{key}"), *TINY)
        assert run.returncode == 0, run.stderr[-2000:]
        exp = genlab_cli(
            "export", str(root / f"run-{key}"), "--out", str(root / f"export-{key}"), "--no-bento", *export_flags
        )
        assert exp.returncode == 0, exp.stderr[-2000:]
        out[key] = root / f"export-{key}"
    out["gan-no-encoder"] = without_encoder(out["gan"], root / "export-gan-no-encoder")
    return out


def without_encoder(export_dir: Path, dest: Path) -> Path:
    """A copy of an export with no encoder graph, named genlab-gan-no-encoder: an export of a model that cannot
    reconstruct (as GAN exports were before GANs had f-AnoGAN's encoder)."""
    import json
    import shutil

    shutil.copytree(export_dir, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / manifest["graphs"].pop("encoder")["file"]).unlink()
    manifest["files"].pop("encoder.onnx")
    manifest["name"] = "genlab-gan-no-encoder"
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


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
