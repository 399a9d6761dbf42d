"""The pipeline's direction as an import-linter contract (pyproject.toml), checked on every test run.

cli above service | eval above export above training above genlab: a module may import only from
the layers below its own; the console entry point (``genlab/__main__.py``) is the one exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_the_layers_contract_is_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_refuses_an_upward_import(tmp_path):
    """The same contract on a scratch tree where the core imports a stage: it must fail and name the import."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "genlab" / "__main__.py").write_text("import cli.main\n")
    (tmp_path / "cli" / "main.py").write_text("import training.loop\n")
    (tmp_path / "training" / "loop.py").write_text("import genlab.data\n")
    (tmp_path / "genlab" / "data.py").write_text("import export.reader\n")  # the upward import
    (tmp_path / "export" / "reader.py").write_text("")
    contract = config["contracts"][0]
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_packages =\n" + "".join(f"    {p}\n" for p in config["root_packages"])
        + f"\n[importlinter:contract:layers]\nname = {contract['name']}\ntype = layers\nlayers =\n"
        + "".join(f"    {layer}\n" for layer in contract["layers"])
        + "ignore_imports =\n" + "".join(f"    {i}\n" for i in contract["ignore_imports"])
    )
    result = _lint(tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "genlab.data -> export.reader" in result.stdout
    assert "genlab.__main__ -> cli.main" not in result.stdout  # the console entry point stays allowed
