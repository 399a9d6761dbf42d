"""Evaluation results kept next to the run they describe: RUN_DIR/eval/<name>.json.

Every evaluation job returns a JSON-able dict that names every setting that changes its
numbers (sample count, seed, extractor, reference, split...). Saving it beside the run lets
``genlab report`` gather results later without recomputing them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from genlab.files import atomic_write_bytes

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def result_path(run_dir: str | os.PathLike, name: str, suffix: str = ".json") -> Path:
    """RUN_DIR/eval/<name><suffix>, with ``name`` reduced to a safe file name (a result's figure: ``suffix`` .png)."""
    return Path(run_dir) / "eval" / f"{_SAFE.sub('_', name).strip('._') or 'result'}{suffix}"


def save_result(run_dir: str | os.PathLike, name: str, result: dict[str, Any]) -> Path:
    path = result_path(run_dir, name)
    atomic_write_bytes(path, (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def load_results(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every saved result of a run, oldest file name first; unreadable files are skipped."""
    results = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return results
