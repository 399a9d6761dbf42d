"""The evaluation jobs' durable state: one SQLite file, ``STATE_DIR/jobs.sqlite3``.

A job is ``queued``, then ``running``, then ``completed`` (with its result), ``failed`` (with the
reason) or ``cancelled``. While it runs, its progress (images done of total, images per second)
is written here, and a cancel request is a flag the job reads at its next progress report.
Every change is one SQLite transaction (WAL journal, ``synchronous=FULL``), so a ``kill -9`` of
the service loses at most the progress since the last report: a completed result is on disk
before it is reported completed.

A job that was running when its service died cannot still be running when the store is opened
again by the next one: :meth:`JobStore.recover` queues it again (it starts over) while it has
attempts left, and marks it failed with the reason otherwise, so no job stays in progress. Only
the holder of the runner lock may recover (:mod:`genlab.eval.job_runner`): a job that a live
runner still runs is never queued again under it. An attempt's completed result always lands, even
on a row queued again meanwhile (:meth:`JobStore.finish`).
The queue is bounded: :meth:`JobStore.submit` refuses a job while ``max_queued`` wait.
:meth:`JobStore.list` pages newest first with a cursor (created time and id), stable under submissions.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError

STATES = ("queued", "running", "completed", "failed", "cancelled")
FINAL = ("completed", "failed", "cancelled")
STORE_FILE = "jobs.sqlite3"
MAX_PAGE = 500
CURSOR = re.compile(r"(?P<created>[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)_(?P<id>[0-9a-f]{32})")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    rate REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (created, id)
"""


class QueueFull(GenlabError):
    """The queue holds ``max_queued`` jobs already."""


class UnknownJob(GenlabError):
    pass


class JobStore:
    def __init__(self, state_dir: str | Path, max_queued: int = 16, max_attempts: int = 2):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STORE_FILE
        self.max_queued, self.max_attempts = int(max_queued), int(max_attempts)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                db.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue up instead of failing)."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- submitting and reading ---------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            (waiting,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
            if waiting >= self.max_queued:
                raise QueueFull(f"the queue is full ({waiting} jobs wait); submit again when one has started")
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, kind, params, state, created) VALUES (?, ?, ?, 'queued', ?)",
                (job_id, kind, json.dumps(params), time.time()),
            )
            return _record(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get(self, job_id: str, with_result: bool = True) -> dict[str, Any]:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r}")
        return _record(row, with_result)

    def list(self, limit: int = 100, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` jobs (without results), newest first, after the cursor ``after``; and the cursor of the
        next page (None on the last one). ValueError for a limit outside 1..MAX_PAGE or a malformed cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE}")
        query, args = "SELECT * FROM jobs", [limit + 1]
        if after is not None:
            created, job_id = parse_cursor(after)
            query += " WHERE created < ? OR (created = ? AND id < ?)"
            args = [created, created, job_id, *args]
        with self._transaction() as db:
            rows = db.execute(f"{query} ORDER BY created DESC, id DESC LIMIT ?", args).fetchall()
        page = rows[:limit]
        more = len(rows) > limit
        return [_record(row, with_result=False) for row in page], _cursor(page[-1]) if more else None

    # -- the runner's side --------------------------------------------------------------------------
    def claim(self) -> dict[str, Any] | None:
        """The oldest queued job, now running (attempt + 1); None when none waits."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, done = 0, total = 0, rate = NULL, "
                "attempts = attempts + 1 WHERE id = ?",
                (time.time(), row["id"]),
            )
            return _record(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def progress(self, job_id: str, done: int, total: int, rate: float | None) -> bool:
        """Record a running job's progress; True when a cancel has been asked for."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET done = ?, total = ?, rate = ? WHERE id = ? AND state = 'running'",
                (int(done), int(total), rate, job_id),
            )
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def finish(self, job_id: str, attempt: int, state: str, result: Any = None, error: str | None = None) -> bool:
        """Attempt ``attempt`` of a job ends: ``completed`` with its result, ``failed`` with the reason, or
        ``cancelled``; whether the row took it.

        A completed result lands while the job is running or queued, whichever attempt the row is at: a result is
        never thrown away because the row was queued again meanwhile. A failure or cancel lands only on the
        attempt that is running, so a stale attempt cannot end a newer one."""
        if state not in FINAL:
            raise ValueError(f"not a final state: {state}")
        if state == "completed":
            where, of_attempt = "state IN ('running', 'queued')", ()
        else:
            where, of_attempt = "state = 'running' AND attempts = ?", (int(attempt),)
        stored = None if result is None else json.dumps(result, default=str)
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, result = ?, error = ? WHERE id = ? AND {where}",
                (state, time.time(), stored, error, job_id, *of_attempt),
            ).rowcount
        return changed == 1

    def cancel(self, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one when it next reports progress; a finished one stays."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"no job {job_id!r}")
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, note = 'cancelled before it started' "
                    "WHERE id = ?",
                    (time.time(), job_id),
                )
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id, with_result=False)

    def recover(self) -> list[dict[str, Any]]:
        """Jobs left running by a service that died: queued again while attempts remain, else failed. Call it only
        where no runner works on this store (the runner's lock is held)."""
        changed = []
        with self._transaction() as db:
            for row in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                attempts = row["attempts"]
                why = f"the jobs service stopped while attempt {attempts} of {self.max_attempts} ran"
                if attempts < self.max_attempts and not row["cancel_requested"]:
                    db.execute(
                        "UPDATE jobs SET state = 'queued', done = 0, total = 0, rate = NULL, note = ? WHERE id = ?",
                        (f"{why}; queued again, it starts over", row["id"]),
                    )
                    changed.append({"id": row["id"], "state": "queued", "note": why})
                else:
                    state = "cancelled" if row["cancel_requested"] else "failed"
                    db.execute(
                        "UPDATE jobs SET state = ?, finished = ?, error = ? WHERE id = ?",
                        (state, time.time(), why, row["id"]),
                    )
                    changed.append({"id": row["id"], "state": state, "note": why})
        return changed


def parse_cursor(text: str) -> tuple[float, str]:
    """A page cursor (``<created>_<id>``, from :meth:`JobStore.list`) -> (created, id); ValueError otherwise."""
    match = CURSOR.fullmatch(text)
    if match is None or not math.isfinite(float(match["created"])):
        raise ValueError("not a cursor: pass the 'next' of the previous page")
    return float(match["created"]), match["id"]


def _cursor(row: sqlite3.Row) -> str:
    return f"{row['created']!r}_{row['id']}"


def _progress(row: sqlite3.Row) -> dict[str, Any]:
    done, total, rate = row["done"], row["total"], row["rate"]
    fraction = 1.0 if row["state"] == "completed" else (done / total if total else 0.0)
    eta = (total - done) / rate if rate and row["state"] == "running" and total else None
    return {
        "fraction": round(fraction, 4),
        "done": done,
        "total": total,
        "images_per_s": None if rate is None else round(rate, 2),
        "eta_s": None if eta is None else round(eta, 1),
    }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _record(row: sqlite3.Row, with_result: bool = True) -> dict[str, Any]:
    """A job as the API shows it."""
    record = {
        "id": row["id"],
        "kind": row["kind"],
        "state": row["state"],
        "params": json.loads(row["params"]),
        "created": _iso(row["created"]),
        "started": _iso(row["started"]),
        "finished": _iso(row["finished"]),
        "progress": _progress(row),
        "attempts": row["attempts"],
        "cancel_requested": bool(row["cancel_requested"]),
        "note": row["note"],
        "error": row["error"],
    }
    if with_result:
        record["result"] = None if row["result"] is None else json.loads(row["result"])
    return record
