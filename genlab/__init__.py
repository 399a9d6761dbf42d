"""genlab: train, export, serve and evaluate VAE, GAN and VAE-GAN image models.

The core (data, models, checkpoint format) lives in this folder; the stages live in the folders
beside it and are imported as ``genlab.training``, ``genlab.export``, ``genlab.service``,
``genlab.eval`` and ``genlab.cli``. An install puts them inside this package (setuptools'
``package-dir``, pyproject.toml); in a source tree, a checkout or a bento's ``src/``, the small
finder below maps the same names to the folders beside this one.

Importing ``genlab`` itself is cheap and torch-free; torch is imported by the submodules that
need it.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

__version__ = "0.1.0"

STAGES = ("training", "export", "service", "eval", "cli")


class _SourceTreeStages:
    """Finds ``genlab.<stage>`` in the folder beside this package's; submodules follow its ``__path__``."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        parent, _, stage = fullname.partition(".")
        if parent != __name__ or stage not in STAGES:
            return None
        folder = self.root / stage
        if not (folder / "__init__.py").is_file():
            return None  # a bento carries only the stages it serves
        return spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SourceTreeStages) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


def _source_tree_root() -> Path | None:
    here = Path(__file__).resolve().parent
    if (here / "service").is_dir() or not all(
        (here.parent / s / "__init__.py").is_file() for s in ("export", "service")
    ):
        return None  # installed: the stages are inside this folder (or this source tree carries none)
    return here.parent


if (_root := _source_tree_root()) is not None and _SourceTreeStages(_root) not in sys.meta_path:
    # first, so that the stages beside this genlab win over an editable install's mapping to another tree
    sys.meta_path.insert(0, _SourceTreeStages(_root))
