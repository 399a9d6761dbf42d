"""The documentation's examples run as written: every ```python block in README.md and docs/, and every curl line of
the serving API's examples (README.md, docs/http-api.md), against a real `genlab serve`.

They run in a folder laid out as the docs assume: ``runs/vaegan`` (a finished run), ``exports/vaegan`` and
``exports/vaegan-conditional`` (the shared tiny models, tests/shared_models.py), and a BentoML store holding
``genlab-vaegan-mnist-5k``. The only edit made to an example is the server's address (``localhost:3000`` becomes the
test server's), and curl gets ``--fail-with-body`` so that an HTTP error fails the example.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service_fixtures import REPO, running_server

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CURL_DOCS = {"README.md", "http-api.md"}  # the serving API's examples; the jobs service's are tested in test_eval_jobs
SERVER = re.compile(r"(?:https?://)?(?:localhost|127\.0\.0\.1):3000")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(lang: str) -> list[Block]:
    found = []
    for path in DOCS:
        source = path.read_text()
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", source, re.S | re.M):
            if match[1] == lang:
                found.append(Block(path.name, source.count("\n", 0, match.start()) + 1, lang, match[2]))
    return found


def curl_script(block: Block, url: str) -> str | None:
    """The block's curl lines (and the shell variables they use) as one script against ``url``; None if it has none."""
    text = block.text.replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("curl ") and ":3000" in line:
            lines.append("curl --fail-with-body " + SERVER.sub(url, line)[len("curl ") :])
        elif re.match(r"^[a-z_]+=\$\(", line):  # array=$(python -c ...)
            lines.append(line.replace("python ", f"{sys.executable} ", 1))
    return "set -euo pipefail\n" + "\n".join(lines) + "\n" if lines else None


API_KEY = "docs-example-key"


def served(block: Block) -> tuple[str, bool]:
    """What the block serves (its own `genlab serve --model M` line, else the quickstart's model), and whether with an
    API key (the block exports GENLAB_API_KEY)."""
    match = re.search(r"genlab serve --model (\S+)", block.text)
    return (match[1] if match else "exports/vaegan"), "export GENLAB_API_KEY=" in block.text


@pytest.fixture(scope="module")
def workdir(exports, tmp_path_factory) -> Path:
    """A folder laid out as the docs assume, with the files their curl lines upload."""
    root = tmp_path_factory.mktemp("docs")
    (root / "runs").mkdir()
    (root / "exports").mkdir()
    (root / "runs" / "vaegan").symlink_to(exports["vaegan"].parent / "run-vaegan")
    (root / "exports" / "vaegan").symlink_to(exports["vaegan"])
    (root / "exports" / "vaegan-conditional").symlink_to(exports["vaegan-cond"])
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    subprocess.run(
        [sys.executable, "-c", "from genlab.export.store import save_to_store; save_to_store('exports/vaegan', "
         "'genlab-vaegan-mnist-5k')"],
        cwd=root, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), np.uint8)).save(root / "other.jpg")
    np.save(root / "batch.npy", rng.integers(0, 256, (4, 1, 28, 28), np.uint8))
    np.save(root / "latents.npy", rng.standard_normal((4, 4), np.float32))  # the tiny models' latent size
    return root


@pytest.fixture(scope="module")
def servers(workdir, tmp_path_factory):
    """(model path as the docs write it, with an API key) -> URL of a `genlab serve` of it, started on first use."""
    import contextlib

    with contextlib.ExitStack() as stack:
        urls: dict[tuple[str, bool], str] = {}

        def url(model: str, keyed: bool = False) -> str:
            if (model, keyed) not in urls:
                log = tmp_path_factory.mktemp("serve") / "serve.log"
                env = {"GENLAB_API_KEY": API_KEY} if keyed else None
                urls[model, keyed] = stack.enter_context(running_server([workdir / model], log, env=env))
            return urls[model, keyed]

        yield url


def run_python(code: str, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env={**os.environ, "BENTOML_HOME": str(workdir / "bentoml"), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("block", blocks("python"), ids=str)
def test_python_example_runs(block, workdir, servers):
    code = block.text
    if SERVER.search(code):
        code = SERVER.sub(servers(*served(block)), code)
    result = run_python(code, workdir)
    assert result.returncode == 0, f"{block}:\n{block.text}\n{result.stderr[-3000:]}"
    assert "Warning" not in result.stderr, f"{block} warns:\n{result.stderr[-3000:]}"


CURL_BLOCKS = [b for b in blocks("bash") if b.doc in CURL_DOCS and curl_script(b, "") is not None]


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=str)
def test_curl_example_runs(block, workdir, servers):
    model, keyed = served(block)
    script = curl_script(block, servers(model, keyed))
    env = {**os.environ, "GENLAB_API_KEY": API_KEY} if keyed else None
    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block}:\n{script}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_the_quickstarts_one_digit_is_the_models_own_size(workdir, servers):
    """The README sends the PNG `/generate` answers for n=1 back to the routes that take images: it is the model's
    28x28 image, not a grid of one."""
    quickstart = next(b for b in CURL_BLOCKS if b.doc == "README.md" and "digit.png" in b.text)
    subprocess.run(["bash", "-c", curl_script(quickstart, servers("exports/vaegan"))], cwd=workdir, check=True)
    assert Image.open(workdir / "digit.png").size == (28, 28)


def test_every_documented_example_is_collected():
    """The block parser finds the examples the docs hold (a broken fence would hide them from these tests)."""
    assert {b.doc for b in blocks("python")} >= {"formats.md", "http-api.md"}
    assert {b.doc for b in CURL_BLOCKS} == CURL_DOCS
