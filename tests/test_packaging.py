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
from packaging.requirements import Requirement

from tests.service_fixtures import running_server

REPO = Path(__file__).resolve().parents[1]

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


def _wanted(requires: list[str] | None, extras: set[str]) -> list[Requirement]:
    """The requirements that apply when these extras are asked for (environment markers evaluated)."""
    return [
        r
        for r in map(Requirement, requires or [])
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""})
    ]


def serve_requirements(site: Path) -> list[Requirement]:
    """What `pip install genlab[serve]` asks for, read from the built wheel's metadata."""
    genlab = metadata.PathDistribution(site / "genlab-0.1.0.dist-info")
    return _wanted(genlab.requires, {"serve"})


def _closure(requirements: list[Requirement]) -> set[str]:
    """Names of the installed distributions these requirements pull in, transitively."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        dist = metadata.distribution(req.name)
        key = (dist.metadata["Name"].lower().replace("_", "-"), frozenset(req.extras))
        if key not in seen:
            seen.add(key)
            todo += _wanted(dist.requires, set(req.extras))
    return {name for name, _ in seen}


def _serve_modules(site: Path) -> set[str]:
    """Top-level module names provided by the serve extra's distributions (genlab itself included)."""
    dists = _closure(serve_requirements(site))
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
        "GENLAB_TEST_ALLOWED_MODULES": json.dumps(sorted(_serve_modules(installed_genlab))),
    }


def test_an_install_puts_only_genlab_at_the_top_of_site_packages(installed_genlab):
    assert sorted(p.name for p in installed_genlab.iterdir()) == ["genlab", "genlab-0.1.0.dist-info"]
    for stage in ("training", "export", "service", "eval", "cli"):
        assert (installed_genlab / "genlab" / stage / "__init__.py").is_file()
    entry = (installed_genlab / "genlab-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "genlab = genlab.cli.main:main" in entry


def test_the_serve_extra_holds_no_torch(installed_genlab):
    dists = _closure(serve_requirements(installed_genlab))
    assert {"bentoml", "onnxruntime", "numpy"} <= dists
    assert not dists & {"torch", "torchvision", "torch-fidelity", "scikit-learn", "scipy", "matplotlib", "onnx"}


def test_the_bentofile_installs_what_the_serve_extra_names(installed_genlab):
    """The bento's image and `pip install genlab[serve]` stay one list: same packages, same version ranges (the
    image gets bentoml from BentoML itself; its GPU flavour, deploy/flavour.py, swaps in onnxruntime-gpu)."""
    import yaml

    bento = {
        Requirement(r).name: Requirement(r).specifier
        for r in yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    }
    serve = {r.name: r.specifier for r in serve_requirements(installed_genlab)}
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
        reply = httpx.post(f"{url}/generate", json={"n": 3, "seed": 1, "format": "array"}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["images"]).shape[:2] == (3, 1)
        for path in ("/", "/ui/page.js", "/ui/page.css"):  # the page's files are in the installed package
            assert httpx.get(url + path, timeout=10).status_code == 200, path
        assert httpx.get(f"{url}/v2/health/ready", timeout=10).json() == {"ready": True}
