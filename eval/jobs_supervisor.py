"""``genlab eval serve-jobs``: the jobs service in a child process that a SIGTERM stops within a bounded time.

A job runs in a thread of the server's worker that nothing can interrupt, and a server waits for
it before it exits: a SIGTERM during an hour of FID would take that hour. This supervisor forwards
SIGTERM / SIGINT to the server's process group, waits ``grace_s``, kills what is left, and then
has the job store recover the jobs that were running (:meth:`~genlab.eval.job_store.JobStore.recover`:
queued again to start over, or failed with the reason once out of attempts), saying which in
the log. One state directory has one service: a second one started on it is refused at once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from genlab.eval.job_runner import hold_lock

STOP_GRACE_S = 5.0
SERVICE_LOCK = "service.lock"


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
    from genlab.eval.jobs_service import JobsSettings

    settings = JobsSettings.from_env(env)
    lock = hold_lock(settings.state_dir / SERVICE_LOCK, "jobs service")
    with lock:
        server = subprocess.Popen(
            command, env={**env, "GENLAB_JOBS_STATE": str(settings.state_dir)}, start_new_session=True
        )
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
        for job in settings.store().recover():
            print(f"genlab: job {job['id']} is {job['state']}: {job['note']}", file=sys.stderr, flush=True)
        return 0 if stop_requested else server.returncode
