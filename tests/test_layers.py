"""The pipeline's direction as an import-linter contract (pyproject.toml), checked on every test run.

cli above service | eval above export above training above the core: a module may import only from
the layers below its own, and every module of the package sits in a layer; and within each package
the modules import one another without cycles. The contract is checked
on the package as it installs (stage folders inside ``genlab``), built by the ``installed_genlab`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
]


def _lint(site: Path, config: Path) -> subprocess.CompletedProcess:
    """lint-imports over the genlab found in ``site`` (first on the path, ahead of the checkout's editable install)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [*LINT, "--no-cache", str(config)], cwd=site, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_layers_contract_is_kept(installed_genlab):
    result = _lint(installed_genlab, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, source, named",
    [
        (
            "genlab/data.py",
            "import genlab.export.reader\n",
            "genlab.data -> genlab.export.reader",
        ),  # the core reaching up
        ("genlab/export/reader.py", "import genlab.service.work\n", "genlab.export.reader -> genlab.service.work"),
        ("genlab/service/work.py", "import genlab.eval.results\n", "genlab.service.work -> genlab.eval.results"),
    ],
)
def test_the_contract_refuses_an_upward_import(installed_genlab, tmp_path, module, source, named):
    """The same contract over a copy of the package with one import turned upward: it fails and names the import."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(installed_genlab / "genlab", site / "genlab")
    target = site / module
    target.write_text(target.read_text() + source)
    result = _lint(site, REPO / "pyproject.toml")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert named in result.stdout


def test_the_contract_refuses_an_import_cycle(installed_genlab, tmp_path):
    import shutil

    site = tmp_path / "site"
    shutil.copytree(installed_genlab / "genlab", site / "genlab")
    batches = site / "genlab" / "eval" / "batches.py"
    batches.write_text(batches.read_text() + "import genlab.eval.source_base\n")  # source_base imports batches
    result = _lint(site, REPO / "pyproject.toml")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "No cycles are allowed in genlab.eval" in result.stdout and ".source_base -> .batches" in result.stdout


def test_every_module_of_the_package_must_sit_in_a_layer(installed_genlab, tmp_path):
    """exhaustive: a new core module the contract does not list fails the check, so no module escapes the rules."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(installed_genlab / "genlab", site / "genlab")
    (site / "genlab" / "stray.py").write_text("")
    result = _lint(site, REPO / "pyproject.toml")
    assert result.returncode == 1 and "genlab.stray" in result.stdout, result.stdout[-3000:]


def test_no_function_in_the_stages_runs_past_60_lines():
    """Functions in training/, service/ and eval/ stay readable in one screen: at most 60 lines, def to last line."""
    import ast

    long = []
    for folder in ("training", "service", "eval"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
