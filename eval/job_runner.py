"""The worker of the jobs service: one thread that takes queued jobs from the store and runs them in turn.

It holds ``STATE_DIR/runner.lock`` while it lives, so one store has one runner; on start, under
that lock, it :meth:`~genlab.eval.job_store.JobStore.recover`\\ s the jobs a dead runner left
running (a runner that was just killed may hold the lock for a moment: it waits ``LOCK_WAIT_S``
for it). Each attempt's end is written for that attempt (:meth:`~genlab.eval.job_store.JobStore.finish`). A job
reports its progress after every batch (written at most every ``REPORT_EVERY_S``), and a cancel
request stops it there. A :class:`~genlab.errors.GenlabError` fails the job with its one line;
anything else fails it with the exception's type and message (and its traceback in the log).

:func:`die_with_parent` ties the service's processes to their parents: the worker that runs the
runner dies with its arbiter, the arbiter with ``genlab eval serve-jobs``.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from genlab.eval.job_store import JobStore

from genlab.errors import GenlabError

REPORT_EVERY_S = 0.5
POLL_S = 0.25
LOCK_WAIT_S = 5.0
LOCK_FILE = "runner.lock"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# resolved at import, not in a freshly forked child (which should not enter the dynamic loader)
PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
log = logging.getLogger("genlab.eval.jobs")

RunJob = Callable[[str, dict[str, Any], Callable[[int, int], None]], dict[str, Any]]


class JobCancelled(Exception):
    """Raised from a progress report when the job's cancel was asked for."""


def hold_lock(path: Path, holder: str, wait_s: float = 0.0) -> IO[str]:
    """An exclusive lock on ``path`` for as long as the returned file stays open; GenlabError if it is still held
    by another process after ``wait_s`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a+")  # noqa: SIM115 (held for the holder's lifetime)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                raise GenlabError(
                    f"another genlab {holder} is using {path.parent}; stop it, or give this one its own state directory"
                ) from None
            time.sleep(0.1)


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), None when there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid"
    except (OSError, ValueError, IndexError):
        return None


def die_with_parent(parent: int, grandparent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies, and die now if ``parent`` is not its parent any
    more (it died before the request took effect) or, given ``grandparent``, is not that one's child.

    Linux only (elsewhere it does nothing). Call it from the process's main thread: the kernel keeps the request
    with the calling thread, and sends the signal when the parent's thread that started this process ends."""
    if PRCTL is None:
        return
    if PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent or (grandparent is not None and parent_of(parent) != grandparent):
        os.kill(os.getpid(), signal.SIGKILL)


class JobRunner(threading.Thread):
    def __init__(self, store: JobStore, run_job: RunJob):
        super().__init__(name="genlab-jobs-runner", daemon=True)
        self.store, self.run_job = store, run_job
        self.stopping = threading.Event()
        self.lock = hold_lock(store.state_dir / LOCK_FILE, "jobs runner", LOCK_WAIT_S)
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

        end: dict[str, Any]
        try:
            end = {"state": "completed", "result": self.run_job(job["kind"], job["params"], report)}
        except JobCancelled:
            end = {"state": "cancelled", "error": "cancelled while it ran"}
        except GenlabError as err:
            end = {"state": "failed", "error": str(err)}
        except Exception as err:  # a bug, not the request: fail the job with what happened, keep serving
            log.exception("genlab jobs: job %s failed", job["id"])
            end = {"state": "failed", "error": f"{type(err).__name__}: {err}"}
        if not self.store.finish(job["id"], job["attempts"], **end):
            kept = self.store.get(job["id"], with_result=False)["state"]
            log.warning(
                "genlab jobs: job %s attempt %d ended %s; the job stays %s",
                job["id"],
                job["attempts"],
                end["state"],
                kept,
            )
