"""Append-only JSONL metrics (one line per step and per epoch), trimmed on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from genlab.files import atomic_write_bytes


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        self._pending: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self._pending.append(record)

    def flush(self) -> None:
        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for record in self._pending:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._pending.clear()

    def read(self) -> list[dict[str, Any]]:
        """Every record; a last line cut short by a kill is skipped (the resume rewrites the file without it)."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records a crashed run wrote after its last checkpoint, so a resume never repeats a step."""
        records = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in records).encode())
