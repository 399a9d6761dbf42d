"""The worker of the jobs service: one thread that takes queued jobs from the store and runs them in turn.

It holds ``STATE_DIR/runner.lock`` while it lives, so one store has one runner; on start it
:meth:`~genlab.eval.job_store.JobStore.recover`\\ s the jobs a dead runner left running. A job
reports its progress after every batch (written at most every ``REPORT_EVERY_S``), and a cancel
request stops it there. A :class:`~genlab.errors.GenlabError` fails the job with its one line;
anything else fails it with the exception's type and message (and its traceback in the log).
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from genlab.eval.job_store import JobStore

from genlab.errors import GenlabError

REPORT_EVERY_S = 0.5
POLL_S = 0.25
LOCK_FILE = "runner.lock"
log = logging.getLogger("genlab.eval.jobs")

RunJob = Callable[[str, dict[str, Any], Callable[[int, int], None]], dict[str, Any]]


class JobCancelled(Exception):
    """Raised from a progress report when the job's cancel was asked for."""


def hold_lock(path: Path, holder: str) -> IO[str]:
    """An exclusive lock on ``path`` for as long as the returned file stays open; GenlabError if held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a+")  # noqa: SIM115 (held for the holder's lifetime)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise GenlabError(
            f"another genlab {holder} is using {path.parent}; stop it, or give this one its own state directory"
        ) from None
    return lock


class JobRunner(threading.Thread):
    def __init__(self, store: JobStore, run_job: RunJob):
        super().__init__(name="genlab-jobs-runner", daemon=True)
        self.store, self.run_job = store, run_job
        self.stopping = threading.Event()
        self.lock = hold_lock(store.state_dir / LOCK_FILE, "jobs runner")
        for job in store.recover():
            log.warning("genlab jobs: job %s is %s: %s", job["id"], job["state"], job["note"])

    def run(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim()
            if job is None:
                self.stopping.wait(POLL_S)
                continue
            self.execute(job)

    def stop(self) -> None:
        self.stopping.set()

    def execute(self, job: dict[str, Any]) -> None:
        started, last = time.monotonic(), [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] < REPORT_EVERY_S and done < total:
                return
            last[0] = now
            if self.store.progress(job["id"], done, total, done / max(now - started, 1e-9)):
                raise JobCancelled

        try:
            result = self.run_job(job["kind"], job["params"], report)
        except JobCancelled:
            self.store.finish(job["id"], "cancelled", error="cancelled while it ran")
        except GenlabError as err:
            self.store.finish(job["id"], "failed", error=str(err))
        except Exception as err:  # a bug, not the request: fail the job with what happened, keep serving
            log.exception("genlab jobs: job %s failed", job["id"])
            self.store.finish(job["id"], "failed", error=f"{type(err).__name__}: {err}")
        else:
            self.store.finish(job["id"], "completed", result=result)
