"""The CPU image, built and run for real: `bash scripts/container_test.sh` (or `pytest -m container -n 0 -s
tests/test_container.py`) where docker or podman runs or can be installed; a few minutes, so outside the default run.

The image is built by scripts/containerize.sh around the shared tiny VAE-GAN export (registered under the bento's
model name in a store of this test's own), tagged genlab-test:cpu, then run as an operator runs it: every route's
answer is compared byte for byte with the same export served outside the container by `genlab serve`; the serving
switches go in with -e; the start-up log must hold no error line; a SIGTERM during a request lets that request finish
and the server exit within 10 s; a graph changed inside the container is refused at start-up. The figures (image and
layer sizes, seconds from `run` to /readyz, error lines) are printed: scripts/container_test.sh keeps them in
benchmarks/results/container_test.txt. GENLAB_TEST_MORE_IMAGES (comma-separated tags, e.g. genlab:gpu) adds images
whose start-up logs are checked the same way.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service_fixtures import REPO, free_port, running_server

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(2400)]

TAG = "genlab-test:cpu"
MODEL = "genlab-vaegan-mnist-5k"  # the model bentofile.yaml packs
KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 2_000_000
# what an operator reads as a failure in a start-up log (ONNX Runtime's own errors start with "[E:")
ERROR_LINE = re.compile(r"\[E:|\bERROR\b|\[error\]|Traceback|level=error|Exception", re.IGNORECASE)
FIGURES: dict[str, object] = {}


def _engine_available() -> bool:
    if shutil.which("podman"):
        return True
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0:
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None  # containerize.sh installs podman


@dataclass
class Image:
    tag: str
    engine: str
    env: dict[str, str]  # the engine's environment (CONTAINERS_CONF where podman needs it here)
    mb: int
    build_log: str

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [self.engine, *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{self.engine} {' '.join(args)}: {done.stderr[-2000:]}")
        return done


@dataclass
class Container:
    image: Image
    name: str
    url: str
    ready_s: float
    extra: list[str] = field(default_factory=list)

    def log(self) -> str:
        done = self.image.cli("logs", self.name, check=False)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def image(exports, tmp_path_factory) -> Image:
    if not _engine_available():
        pytest.skip("no container engine here (docker, podman, or root with apt-get to install podman)")
    home = tmp_path_factory.mktemp("container-bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "GENLAB_IMAGE": TAG}
    store = "import sys; from genlab.export.store import save_to_store; save_to_store(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", store, str(exports["vaegan"]), MODEL], env=env, check=True, timeout=120)
    started = time.monotonic()
    built = subprocess.run(
        ["bash", "scripts/containerize.sh", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    FIGURES["build_s"] = round(time.monotonic() - started, 1)
    size = re.search(rf"^{re.escape(TAG)}: (\d+) MB \((\w+)\)$", built.stdout, re.MULTILINE)
    run = re.search(r"^run: (?:CONTAINERS_CONF=(\S+) )?", built.stdout, re.MULTILINE)
    assert size and run, built.stdout
    engine_env = {**os.environ, **({"CONTAINERS_CONF": run.group(1)} if run.group(1) else {})}
    layers = [line.strip() for line in built.stderr.splitlines() if re.match(r"^\s+[\d.]+ MB  ", line)]
    FIGURES.update(image=TAG, engine=size.group(2), image_mb=int(size.group(1)), layers=layers)
    yield Image(TAG, size.group(2), engine_env, int(size.group(1)), built.stdout + built.stderr)
    subprocess.run([size.group(2), "rmi", "-f", TAG], env=engine_env, capture_output=True, timeout=120)


def start(image: Image, name: str, env: dict[str, str], extra: tuple[str, ...] = (), wait: bool = True) -> Container:
    """`run` the image detached on a free port (host networking, as this machine's engines need), then wait for
    /readyz; the time between the two is ``ready_s``."""
    port = free_port()
    image.cli("rm", "-f", name, check=False)
    flags = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    started = time.monotonic()
    image.cli("run", "-d", "--name", name, "--network", "host", *flags, *extra, image.tag, "--port", str(port))
    container = Container(image, name, f"http://127.0.0.1:{port}", 0.0)
    while wait:
        try:
            if httpx.get(f"{container.url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        state = image.cli("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"{name} exited:\n{container.log()[-4000:]}"
        assert time.monotonic() - started < 120, f"{name} not ready in 120 s:\n{container.log()[-4000:]}"
        time.sleep(0.05)
    container.ready_s = round(time.monotonic() - started, 2)
    return container


@pytest.fixture(scope="module")
def served(image) -> Container:
    """The image as an operator runs it: an API key, two workers and a body limit, all through -e."""
    container = start(
        image,
        "genlab-test-served",
        {"GENLAB_API_KEY": KEY, "GENLAB_WORKERS": "2", "GENLAB_MAX_BODY_BYTES": str(MAX_BODY)},
    )
    FIGURES.setdefault("ready_s", []).append(container.ready_s)
    yield container
    image.cli("rm", "-f", container.name, check=False)


@pytest.fixture(scope="module")
def outside(exports, tmp_path_factory) -> str:
    """The same export served outside the container, by `genlab serve` with the same API key."""
    with running_server(
        [exports["vaegan"]], tmp_path_factory.mktemp("outside") / "server.log", env={"GENLAB_API_KEY": KEY}
    ) as url:
        yield url


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _requests(url: str) -> list[tuple[str, dict]]:
    """One request of every kind each route takes: (route, httpx.post keyword arguments)."""
    digit = httpx.post(f"{url}/generate", json={"n": 1, "seed": 2}, headers=AUTH, timeout=60).content
    grid = httpx.post(f"{url}/generate", json={"n": 9, "seed": 4}, headers=AUTH, timeout=60).content
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    z = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    files = [("images", ("digit.png", digit, "image/png")), ("images", ("grid.png", grid, "image/png"))]
    return [
        ("/generate", {"json": {"n": 16, "seed": 1}}),
        ("/generate", {"json": {"n": 3, "seed": 7, "format": "array"}}),
        ("/generate", {"json": {"n": 3, "seed": 7, "format": "png_list", "temperature": 0.5}}),
        ("/generate", {"json": {"n": 4, "seed": 9, "format": "npy"}}),
        ("/generate", {"json": {"z": z[:2].tolist(), "format": "array"}}),
        ("/reconstruct", {"files": files}),
        ("/reconstruct", {"files": files, "data": {"format": "array"}}),
        ("/reconstruct", {"json": {"array": images[:2].tolist(), "format": "array"}}),
        ("/anomaly-score", {"files": files}),
        ("/anomaly-score", {"files": files, "data": {"maps": "true", "percentile": "95"}}),
        ("/anomaly-score", {"json": {"array": images.tolist(), "threshold": 2.5}}),
        ("/batch/decode", {"files": {"z": ("z.npy", _npy(z), "application/octet-stream")}}),
        ("/batch/score", {"files": {"images": ("x.npy", _npy(images), "application/octet-stream")}}),
        ("/models", {}),
    ]


def test_the_image_is_small_and_its_layers_are_reported(image):
    assert image.mb <= 700, image.build_log[-3000:]
    assert FIGURES["layers"], image.build_log[-3000:]
    print(f"\nimage {image.tag} ({image.engine}): {image.mb} MB, built in {FIGURES['build_s']} s; largest layers:")
    print("\n".join(f"  {line}" for line in FIGURES["layers"]))


def test_every_route_answers_byte_for_byte_as_outside(served, outside):
    compared = 0
    for route, kwargs in _requests(outside):
        there = httpx.post(f"{outside}{route}", headers=AUTH, timeout=60, **kwargs)
        here = httpx.post(f"{served.url}{route}", headers=AUTH, timeout=60, **kwargs)
        assert there.status_code == 200, (route, there.text[:500])
        assert here.status_code == 200, (route, here.text[:500])
        assert here.content == there.content, (route, kwargs.get("json"), here.content[:300], there.content[:300])
        for header in ("content-type", *(h for h in there.headers if h.startswith("x-genlab"))):
            assert here.headers.get(header) == there.headers.get(header), (route, header)
        compared += 1
    for probe in ("/livez", "/readyz", "/healthz"):
        assert httpx.get(f"{served.url}{probe}", timeout=10).status_code == 200, probe  # no key needed
    models = httpx.post(f"{served.url}/models", headers=AUTH, timeout=10).json()
    assert {p for m in models for p in m["providers"].values()} == {"CPUExecutionProvider"}
    for path in ("/", "/ui/page.js", "/ui/page.css"):  # the browser page, from the image, without a key
        here, there = httpx.get(f"{served.url}{path}", timeout=10), httpx.get(f"{outside}{path}", timeout=10)
        assert here.status_code == 200 and here.content == there.content, path
    assert httpx.get(f"{served.url}/v2/health/ready", timeout=10).status_code == 200  # the Open Inference Protocol
    score = f"/v2/models/{models[0]['name']}-score/infer"
    shape = [1, *models[0]["image_shape"]]
    request = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": shape, "data": [128] * int(np.prod(shape))}]}
    here = httpx.post(f"{served.url}{score}", json=request, headers=AUTH, timeout=30)
    there = httpx.post(f"{outside}{score}", json=request, headers=AUTH, timeout=30)
    assert here.status_code == 200 and here.json() == there.json(), here.text[:300]
    print(f"\n{compared} answers (every route, each response kind) byte-identical inside and outside the container")


def test_the_serving_switches_work_through_e(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(f"{served.url}/generate", json={"n": 1}, headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
    big = {"images": ("x.npy", b"\x00" * (MAX_BODY + 1000), "application/octet-stream")}
    assert httpx.post(f"{served.url}/batch/score", files=big, headers=AUTH, timeout=30).status_code == 413
    log = served.log()
    assert log.count("Service genlab initialized") == 2, log  # GENLAB_WORKERS=2
    uid = served.image.cli("exec", served.name, "id", "-u").stdout.strip()
    assert uid != "0", "the server runs as root"
    health = (
        served.image.cli("healthcheck", "run", served.name, check=False) if served.image.engine == "podman" else None
    )
    if health is not None:
        assert health.returncode == 0, health.stderr
    else:  # docker runs the HEALTHCHECK itself, every 15 s
        for _ in range(60):
            status = served.image.cli("inspect", "-f", "{{.State.Health.Status}}", served.name).stdout.strip()
            if status == "healthy":
                break
            time.sleep(1)
        assert status == "healthy"
    print(f"\nAPI key, body limit and two workers through -e; user id {uid}; health check passed")


def test_the_start_up_log_has_no_error_line(served):
    log = served.log()
    errors = [line for line in log.splitlines() if ERROR_LINE.search(line)]
    FIGURES["startup_error_lines"] = len(errors)
    assert not errors, "\n".join(errors)
    assert f"genlab: {MODEL} (vaegan) on CPUExecutionProvider" in log, log
    print(f"\nstart-up log of {served.image.tag}: {len(log.splitlines())} lines, {len(errors)} error lines")
    print("\n".join(f"  | {line}" for line in log.splitlines()))


@pytest.mark.parametrize("tag", [t for t in os.environ.get("GENLAB_TEST_MORE_IMAGES", "").split(",") if t])
def test_more_images_start_without_error_lines(image, tag):
    other = Image(tag, image.engine, image.env, 0, "")
    container = start(other, "genlab-test-more", {})
    try:
        log = container.log()
        errors = [line for line in log.splitlines() if ERROR_LINE.search(line)]
        models = httpx.post(f"{container.url}/models", timeout=10).json()
        providers = sorted({p for m in models for p in m["providers"].values()})
        size_mb = int(other.cli("image", "inspect", "--format", "{{.Size}}", tag).stdout) // 1_000_000
        print(
            f"\n{tag}: {size_mb} MB; /readyz {container.ready_s} s after run; {len(errors)} error lines; "
            f"providers {providers}"
        )
        print("\n".join(f"  | {line}" for line in log.splitlines()))
        assert not errors, "\n".join(errors)
    finally:
        other.cli("rm", "-f", container.name, check=False)


def test_a_graph_changed_in_the_image_is_refused_at_start_up(image, tmp_path):
    listing = image.cli(
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "sh",
        image.tag,
        "-c",
        f"ls -d /home/bentoml/bento/models/{MODEL}/*/",
    ).stdout.split()
    assert len(listing) == 1, listing
    tampered = tmp_path / "decoder.onnx"
    tampered.write_bytes(b"not the exported graph")
    tampered.chmod(0o644)
    container = start(image, "genlab-test-tampered", {}, ("-v", f"{tampered}:{listing[0]}decoder.onnx:ro"), wait=False)
    try:
        exited = image.cli("wait", container.name, timeout=120).stdout.strip()
        log = container.log()
        assert exited != "0" and "sha256 does not match the manifest" in log, log[-3000:]
    finally:
        image.cli("rm", "-f", container.name, check=False)
    print("\na graph changed inside the container: the server refuses to start and names the file")


def _half_sent_request(url: str, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    client.sendall(f"{head}\r\nConnection: close\r\n\r\n".encode() + body[:4])
    return client


def _reply(client: socket.socket) -> bytes:
    data = b""
    while chunk := client.recv(1 << 16):
        data += chunk
    return data


def test_sigterm_lets_the_request_in_flight_finish_and_exits_within_10_s(image, outside):
    container = start(image, "genlab-test-sigterm", {})
    FIGURES.setdefault("ready_s", []).append(container.ready_s)
    body = json.dumps({"n": 4, "seed": 5, "format": "npy"}).encode()
    expected = httpx.post(f"{outside}/generate", content=body, headers={**AUTH, "content-type": "application/json"})
    pid = int(image.cli("inspect", "-f", "{{.State.Pid}}", container.name).stdout)
    try:
        client = _half_sent_request(container.url, body)
        time.sleep(0.5)  # the server has the request's head and waits for its body
        image.cli("kill", "--signal", "TERM", container.name)
        signalled = time.monotonic()
        time.sleep(1.0)
        with pytest.raises((httpx.HTTPError, AssertionError)):  # a new request is not served any more
            late = httpx.get(f"{container.url}/livez", timeout=2)
            assert late.status_code == 200
        client.sendall(body[4:])
        reply = _reply(client)
        head, _, content = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply[:500]
        assert content == expected.content  # the request in flight is answered in full, the same bytes
        while Path(f"/proc/{pid}").exists() and time.monotonic() - signalled < 30:
            time.sleep(0.05)
        exit_s = round(time.monotonic() - signalled, 2)
        code = image.cli("wait", container.name, timeout=60).stdout.strip()
        FIGURES["sigterm_exit_s"] = exit_s
        print(f"\nSIGTERM during a request: it was answered (200, same bytes as outside); exit {code} {exit_s} s after")
        assert exit_s < 10 and code == "0", (exit_s, code, container.log()[-3000:])
    finally:
        image.cli("rm", "-f", container.name, check=False)


def test_figures(image):
    """The run's figures in one block (scripts/container_test.sh keeps them)."""
    load = os.getloadavg()
    ready = FIGURES.get("ready_s", [])
    median = round(statistics.median(ready), 2) if ready else None
    print(
        f"\nFIGURES engine={FIGURES.get('engine')} image={FIGURES.get('image')} size_mb={FIGURES.get('image_mb')} "
        f"build_s={FIGURES.get('build_s')} ready_s={ready} (median {median}) "
        f"startup_error_lines={FIGURES.get('startup_error_lines')} sigterm_exit_s={FIGURES.get('sigterm_exit_s')} "
        f"load_average={load[0]:.1f},{load[1]:.1f},{load[2]:.1f} cores={os.cpu_count()}"
    )
