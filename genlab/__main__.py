"""``python -m genlab`` (and ``torchrun ... -m genlab train ...``): the console entry point.

This is the one import from the core package up to the command line, allowed by name in the
import-linter contract (pyproject.toml).
"""

from genlab.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
