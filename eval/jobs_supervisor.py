"""``genlab eval serve-jobs``: the jobs service in a child process that a SIGTERM stops within a bounded time, and
that cannot outlive this process.

A job runs in a thread of the server's worker that nothing can interrupt, and a server waits for
it before it exits: a SIGTERM during an hour of FID would take that hour. This supervisor forwards
SIGTERM / SIGINT to the server, waits ``grace_s``, kills what is left, and then, holding the runner
lock, has the job store recover the jobs that were running
(:meth:`~genlab.eval.job_store.JobStore.recover`: queued again to start over, or failed with the
reason once out of attempts), saying which in the log. Where it cannot take the runner lock
(another runner on the store), it recovers nothing: the next runner does, under that lock. One
state directory has one service: a second one started on it is refused at once.

The server is a chain of three processes: this supervisor, BentoML's arbiter (``bentoml serve``)
and its worker. Each asks the kernel to SIGKILL it when its parent dies
(:func:`~genlab.eval.job_runner.die_with_parent`, Linux ``PR_SET_PDEATHSIG``): the arbiter from
the ``preexec_fn`` it starts with, the worker from ``EvalJobs.__init__``. So a ``kill -9`` of the
supervisor takes the whole server with it, and no orphan keeps the port, the runner lock or a
running job. The supervisor stays a process of its own because it must outlive the server to
bound a stop and to recover after the worker is gone; running the arbiter in it would hand its
signals to BentoML's process manager. The arbiter runs in a session of its own so that a
terminal's Ctrl-C reaches the supervisor alone, which forwards it once and keeps the grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from genlab.eval.job_runner import LOCK_FILE, die_with_parent, hold_lock
from genlab.eval.job_store import JobStore

from genlab.errors import GenlabError

STOP_GRACE_S = 5.0
SERVICE_LOCK = "service.lock"


def recover_jobs(store: JobStore) -> None:
    """Recover the jobs left running, holding the runner lock, and say which; nothing while a runner holds it (that
    runner's jobs are running)."""
    try:
        lock = hold_lock(store.state_dir / LOCK_FILE, "jobs runner", wait_s=STOP_GRACE_S)  # a killed worker's exit
    except GenlabError as err:
        print(f"genlab: jobs not recovered: {err}", file=sys.stderr, flush=True)
        return
    with lock:
        for job in store.recover():
            print(f"genlab: job {job['id']} is {job['state']}: {job['note']}", file=sys.stderr, flush=True)


def serve(command: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run ``command`` (``bentoml serve ...``) until it exits or this process is told to stop; returns its exit code
    (0 after a requested stop)."""
    from genlab.eval.jobs_service import STATE_ENV, SUPERVISOR_ENV, JobsSettings

    settings = JobsSettings.from_env(env)
    lock = hold_lock(settings.state_dir / SERVICE_LOCK, "jobs service")
    supervisor = os.getpid()
    with lock:
        server = subprocess.Popen(
            command,
            env={**env, STATE_ENV: str(settings.state_dir), SUPERVISOR_ENV: str(supervisor)},
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(supervisor),  # in the forked child, before exec
        )
        stop_requested = []

        def stop(signum: int, _frame: object) -> None:
            stop_requested.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while server.poll() is None and not stop_requested:
                time.sleep(0.1)
            if stop_requested:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=grace_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.kill()  # what is left: the arbiter, whose worker (maybe inside a job) the kernel kills with it
            server.wait()
        recover_jobs(settings.store())
        return 0 if stop_requested else server.returncode
