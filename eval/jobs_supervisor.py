"""``genlab eval serve-jobs``: the jobs service in a child process that a SIGTERM stops within a bounded time.

BentoML runs a job inside the request that submitted it, in a thread that nothing can interrupt,
and a server waits for it before it exits: a SIGTERM during an hour of FID would take that hour.
This supervisor forwards SIGTERM / SIGINT to the server's process group, waits ``grace_s``,
kills what is left, and then marks the jobs that were still running as ``canceled`` in the
result store (and says which in the log). One store has one service: a second one started on
the same store is refused at once, instead of failing later on a database the other deletes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from genlab.errors import GenlabError

STOP_GRACE_S = 5.0


def result_store(env: dict[str, str]) -> Path:
    """Where BentoML keeps the task results: ``$BENTOML_RESULT_STORE``, else ``$BENTOML_HOME/task_result.db``."""
    if env.get("BENTOML_RESULT_STORE"):
        return Path(env["BENTOML_RESULT_STORE"]).expanduser().resolve()
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().resolve() / "task_result.db"


@contextlib.contextmanager
def exclusive(store: Path) -> Iterator[IO[str]]:
    """Hold the store's lock file while the block runs; refuse if another service holds it."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(store.name + ".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenlabError(
                f"another genlab jobs service is using {store}; stop it, or give this one its own BENTOML_RESULT_STORE"
            ) from None
        yield lock


def cancel_running_jobs(store: Path) -> list[tuple[str, str]]:
    """Mark every job still in progress in ``store`` as canceled; returns their (task id, name)."""
    if not store.is_file():
        return []
    with contextlib.closing(sqlite3.connect(store, timeout=10)) as db, db:
        running = db.execute("SELECT task_id, name FROM result WHERE status = 'in_progress'").fetchall()
        db.execute(
            "UPDATE result SET status = 'canceled', completed_at = ? WHERE status = 'in_progress'",
            (datetime.datetime.now(tz=datetime.timezone.utc),),
        )
    return running


def descendants(root: int) -> set[int]:
    """The pids below ``root`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state ppid ...
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def serve(command: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run ``command`` (``bentoml serve ...``) until it exits or this process is told to stop; returns its exit code
    (0 after a requested stop)."""
    store = result_store(env)
    with exclusive(store):
        server = subprocess.Popen(command, env={**env, "BENTOML_RESULT_STORE": str(store)}, start_new_session=True)
        stop_requested = []

        def stop(signum: int, _frame: object) -> None:
            stop_requested.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        family: set[int] = set()
        try:
            for tick in itertools.count():
                if server.poll() is not None or stop_requested:
                    break
                if tick % 10 == 0:  # every second: BentoML's workers run in sessions of their own
                    family |= descendants(server.pid)
                time.sleep(0.1)
            family |= descendants(server.pid)
            if stop_requested:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=grace_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for pid in (server.pid, *family):  # whatever is left: the arbiter, a worker still inside a job
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            server.wait()
        for task_id, name in cancel_running_jobs(store):
            print(
                f"genlab: stopped job {task_id} ({name}): the jobs service shut down while it ran",
                file=sys.stderr,
                flush=True,
            )
        return 0 if stop_requested else server.returncode
