"""What the image is made of, checked without a container engine: the two flavours' bentofiles (deploy/flavour.py),
the Dockerfile BentoML renders from deploy/Dockerfile.j2, the health check's address, and the execution providers
asked for where a CUDA device does or does not open. The image itself is built and run by tests/test_container.py
(`pytest -m container`)."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml
from genlab.export import reader

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = yaml.safe_load((REPO / "bentofile.yaml").read_text())


def _deploy_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", REPO / "deploy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flavour = _deploy_module("flavour")
healthcheck = _deploy_module("healthcheck")


def test_the_cpu_flavour_is_the_bentofile_and_the_gpu_one_swaps_only_onnxruntime():
    cpu = flavour.flavour_bentofile(BENTOFILE, "cpu", "localhost/base:1")
    gpu = flavour.flavour_bentofile(BENTOFILE, "gpu", "localhost/base:1")
    assert cpu["python"]["packages"] == BENTOFILE["python"]["packages"]
    assert any(p.startswith("onnxruntime>=") for p in cpu["python"]["packages"])
    swapped = [(a, b) for a, b in zip(cpu["python"]["packages"], gpu["python"]["packages"]) if a != b]
    assert swapped == [(swapped[0][0], swapped[0][0].replace("onnxruntime", "onnxruntime-gpu[cuda,cudnn]"))]
    for config, name in ((cpu, "cpu"), (gpu, "gpu")):
        assert config["docker"]["base_image"] == "localhost/base:1" and "distro" not in config["docker"]
        assert config["docker"]["dockerfile_template"] == BENTOFILE["docker"]["dockerfile_template"]
        assert config["labels"]["flavour"] == name
        assert {k: v for k, v in config.items() if k not in ("python", "docker", "labels")} == {
            k: v for k, v in BENTOFILE.items() if k not in ("python", "docker", "labels")
        }
    with pytest.raises(ValueError, match="unknown flavour"):
        flavour.flavour_bentofile(BENTOFILE, "tpu", "x")


def test_flavour_writes_a_bentofile_and_refuses_bad_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert flavour.main(["gpu", "localhost/base:1", str(tmp_path / "bentofile.yaml")]) == 0
    written = yaml.safe_load((tmp_path / "bentofile.yaml").read_text())
    assert written == flavour.flavour_bentofile(BENTOFILE, "gpu", "localhost/base:1")
    assert flavour.main(["arm", "x", "y"]) == 2
    assert capsys.readouterr().err.startswith("usage:")


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """The Dockerfile `bentoml containerize` builds, as BentoML renders it for the CPU flavour on a local base."""
    from bentoml._internal.bento.build_config import CondaOptions, DockerOptions
    from bentoml._internal.container.generate import generate_containerfile

    options = flavour.flavour_bentofile(BENTOFILE, "cpu", "localhost/genlab-base:bookworm")["docker"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # BentoML reads a dockerfile_template only from inside the working directory
        return generate_containerfile(
            DockerOptions(**options).with_defaults(), str(REPO), conda=CondaOptions(), bento_fs=REPO / "build"
        )


def test_the_dockerfile_builds_the_environment_in_a_stage_of_its_own_and_installs_no_toolchain(dockerfile):
    stages = dockerfile.split("\nFROM ")
    assert len(stages) == 3, dockerfile  # the header, the build stage, the image
    build, image = stages[1], stages[2]
    assert build.startswith("localhost/genlab-base:bookworm AS python-env")
    assert "--mount=type=secret,id=ca-bundle" in build and "install.sh" in build
    assert image.startswith("localhost/genlab-base:bookworm AS base-container")
    assert "COPY --from=python-env /app/.venv /app/.venv" in image
    for absent in ("apt-get", "build-essential", "git ", "pip install", "uv "):
        assert absent not in image, absent
    assert "apt-get" not in build
    assert "HEALTHCHECK" in image and "src/deploy/healthcheck.py" in image
    assert "STOPSIGNAL SIGTERM" in image
    assert image.rstrip().splitlines()[-2:] == [
        "USER bentoml",
        'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]',
    ]
    assert "deploy/healthcheck.py" in BENTOFILE["include"]  # what the HEALTHCHECK runs is in the bento


def test_plain_bentoml_containerize_builds_on_python_slim_without_a_toolchain(monkeypatch):
    """The repository's bentofile as it stands (no base image set): what `bentoml containerize` builds where Docker Hub
    answers."""
    from bentoml._internal.bento.build_config import CondaOptions, DockerOptions
    from bentoml._internal.container.generate import generate_containerfile

    monkeypatch.chdir(REPO)
    rendered = generate_containerfile(
        DockerOptions(**BENTOFILE["docker"]).with_defaults(), str(REPO), conda=CondaOptions(), bento_fs=REPO / "build"
    )
    assert [line for line in rendered.splitlines() if line.startswith("FROM ")] == [
        "FROM python:3.11-slim AS python-env",
        "FROM python:3.11-slim AS base-container",
    ]
    assert "apt-get" not in rendered and "build-essential" not in rendered


@pytest.mark.parametrize(
    ("arguments", "environ", "url"),
    [
        ([], {}, "http://127.0.0.1:3000/readyz"),
        (["bentoml", "serve", "--port", "8080", "/b"], {}, "http://127.0.0.1:8080/readyz"),
        (["bentoml", "serve", "--port=8081", "--host", "0.0.0.0"], {}, "http://127.0.0.1:8081/readyz"),
        (["bentoml", "serve", "--host", "10.1.2.3", "/b"], {"BENTOML_PORT": "9000"}, "http://10.1.2.3:9000/readyz"),
        (["bentoml", "serve", "--host", "::1"], {"PORT": "7000"}, "http://[::1]:7000/readyz"),
    ],
)
def test_the_health_check_asks_the_address_the_server_was_started_on(arguments, environ, url):
    assert healthcheck.readyz_url(arguments, environ) == url


class _FakeOrt(SimpleNamespace):
    def get_available_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def preload_dlls(self):
        self.preloaded = True


@pytest.fixture
def ort_with_cuda(monkeypatch) -> _FakeOrt:
    fake = _FakeOrt(preloaded=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.delenv(reader.PROVIDER_ENV, raising=False)
    return fake


def test_auto_asks_for_cuda_only_where_a_cuda_device_opens(ort_with_cuda, monkeypatch, caplog):
    monkeypatch.setattr(reader, "cuda_device_opens", lambda: False)
    with caplog.at_level("INFO", logger=reader.log.name):
        assert reader.choose_providers("auto") == ["CPUExecutionProvider"]
    assert "no CUDA device opens here" in caplog.text and not ort_with_cuda.preloaded
    assert reader.choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # forced: asked
    monkeypatch.setattr(reader, "cuda_device_opens", lambda: True)
    assert reader.choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_with_cuda.preloaded
    assert reader.choose_providers("cpu") == ["CPUExecutionProvider"]


class _FakeDriver:
    def __init__(self, init: int, devices: int):
        self.init, self.devices = init, devices

    def cuInit(self, flags):  # noqa: N802 (the driver API's name)
        return self.init

    def cuDeviceGetCount(self, count):  # noqa: N802
        count._obj.value = self.devices
        return 0


@pytest.mark.parametrize(
    ("driver", "opens"),
    [(None, False), (_FakeDriver(100, 0), False), (_FakeDriver(0, 0), False), (_FakeDriver(0, 2), True)],
    ids=["no-libcuda", "no-device", "zero-devices", "two-gpus"],
)
def test_a_cuda_device_opens_only_with_the_driver_and_a_device(monkeypatch, driver, opens):
    def load(name):
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(ctypes, "CDLL", load)
    reader.cuda_device_opens.cache_clear()
    try:
        assert reader.cuda_device_opens() is opens
    finally:
        reader.cuda_device_opens.cache_clear()
