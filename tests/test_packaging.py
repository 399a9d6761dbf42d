"""What `pip install genlab[...]` gives: one top-level package, and a serving install without torch.

The serving check runs the installed package (the ``installed_genlab`` fixture) in a Python whose imports are
limited to the distributions ``genlab[serve]`` pulls in, resolved from their installed metadata: a module from
any other distribution (torch, torchvision, scikit-learn, ...) fails to import there as if it were not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

from tests.service_fixtures import exports, running_server  # noqa: F401 (exports: a fixture)

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Run at interpreter start-up (sitecustomize): refuse every top-level import outside the allowed names.
LIMITER = """
import json, os, sys
ALLOWED = set(json.loads(os.environ["GENLAB_TEST_ALLOWED_MODULES"])) | set(sys.stdlib_module_names)
class _OnlyAllowed:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is None and top not in ALLOWED and not top.startswith("_"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by genlab[serve])", name=name)
sys.meta_path.insert(0, _OnlyAllowed())
"""


def _closure(requirements: list[Requirement]) -> set[str]:
    """Names of the installed distributions these requirements pull in, transitively (markers evaluated)."""
    seen: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        dist = metadata.distribution(req.name)
        name = dist.metadata["Name"].lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for extra_name in ("", *req.extras):
            todo += [(Requirement(r), extra_name) for r in dist.requires or []]
    return {k.partition("[")[0] for k in seen}


def _serve_modules() -> set[str]:
    """Top-level module names provided by the serve extra's distributions (genlab itself included)."""
    serve = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["serve"]]
    dists = _closure(serve)
    providers = metadata.packages_distributions()
    allowed = {
        module for module, names in providers.items() if any(n.lower().replace("_", "-") in dists for n in names)
    }
    return allowed | {"genlab", "sitecustomize"}


@pytest.fixture(scope="module")
def serve_only(installed_genlab, tmp_path_factory) -> dict[str, str]:
    """The environment of a serve-only install: the installed package first on the path, imports limited."""
    boot = tmp_path_factory.mktemp("serve-only-boot")
    (boot / "sitecustomize.py").write_text(LIMITER)
    return {
        **os.environ,
        "PYTHONPATH": f"{boot}{os.pathsep}{installed_genlab}",
        "GENLAB_TEST_ALLOWED_MODULES": json.dumps(sorted(_serve_modules())),
    }


def test_an_install_puts_only_genlab_at_the_top_of_site_packages(installed_genlab):
    assert sorted(p.name for p in installed_genlab.iterdir()) == ["genlab", "genlab-0.1.0.dist-info"]
    for stage in ("training", "export", "service", "eval", "cli"):
        assert (installed_genlab / "genlab" / stage / "__init__.py").is_file()
    entry = (installed_genlab / "genlab-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "genlab = genlab.cli.main:main" in entry


def test_the_serve_extra_holds_no_torch():
    serve = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["serve"]]
    dists = _closure(serve)
    assert {"bentoml", "onnxruntime", "numpy"} <= dists
    assert not dists & {"torch", "torchvision", "torch-fidelity", "scikit-learn", "scipy", "matplotlib", "onnx"}


def test_the_bentofile_installs_what_the_serve_extra_names():
    """The bento's image and `pip install genlab[serve]` stay one list: same packages, same version ranges (the
    image swaps onnxruntime for its GPU build, and gets bentoml from BentoML itself)."""
    import yaml

    bento = {
        Requirement(r).name: Requirement(r).specifier
        for r in yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    }
    serve = {
        Requirement(r).name: Requirement(r).specifier
        for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["serve"]
    }
    serve["onnxruntime-gpu"] = serve.pop("onnxruntime")
    serve.pop("bentoml")
    assert bento == serve


def test_torch_cannot_be_imported_in_the_serve_only_environment(serve_only, tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", "import torch"], cwd=tmp_path, env=serve_only, capture_output=True, text=True
    )
    assert run.returncode == 1 and "not installed by genlab[serve]" in run.stderr, run.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-c", "import genlab.service.service, genlab; print(genlab.__file__)"],
        cwd=tmp_path,
        env={**serve_only, "GENLAB_MODELS": "nothing-needed-at-import"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip()).is_relative_to(serve_only["PYTHONPATH"].split(os.pathsep)[1])


def test_info_and_serve_run_with_only_the_serve_extra(serve_only, exports, tmp_path):
    info = subprocess.run(
        [sys.executable, "-m", "genlab", "info", str(exports["vaegan"])],
        cwd=tmp_path,
        env=serve_only,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr[-3000:]
    assert "genlab-vaegan" in info.stdout
    trained = subprocess.run(
        [sys.executable, "-m", "genlab", "train", "vae", "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=serve_only,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trained.returncode == 2 and "pip install 'genlab[train]'" in trained.stderr, trained.stderr[-2000:]
    assert "Traceback" not in trained.stderr
    with running_server([exports["vaegan"]], tmp_path / "server.log", env=serve_only, cwd=tmp_path) as url:
        reply = httpx.post(f"{url}/generate", json={"n": 3, "seed": 1}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["images"]).shape[0] == 3
