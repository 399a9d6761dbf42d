"""What every ``genlab`` subcommand shares: a one-line usage error and the text-or-JSON result print.

Torch-free and in the core package, so commands in any stage (``export/commands.py``,
``eval/commands.py``, ...) import it without reaching up to the command line itself (``cli``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def print_result(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """``result`` as indented JSON (``--json``) or as the one-line summary ``text(result)``."""
    print(json.dumps(result, indent=2, default=str) if as_json else text(result))
