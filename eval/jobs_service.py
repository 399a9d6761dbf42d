"""The evaluation-jobs service: BentoML serves the HTTP side, genlab owns the jobs and their state.

``build_jobs_service(settings)`` returns a BentoML service that mounts :func:`genlab.eval.jobs_app.jobs_app`
over a durable :class:`~genlab.eval.job_store.JobStore` in ``settings.state_dir`` and, in its
worker process, starts the one :class:`~genlab.eval.job_runner.JobRunner` that runs the jobs in
turn (BentoML's ``@bentoml.task`` keeps no progress, cannot cancel, and loses a running task when
the server dies, so it is not used). The routes: :mod:`genlab.eval.jobs_app`. Serve with
``genlab eval serve-jobs`` or ``bentoml serve genlab.eval.jobs_service:EvalJobs`` (settings from
the environment, :meth:`JobsSettings.from_env`).

With an API key, :class:`~genlab.web.RequireKey` stands in front of everything the
service answers, BentoML's own routes (``/``, ``/docs.json``, ``/schema.json``) included; only the
health probes answer without it. BentoML's traffic metrics are off: they label each request with
its raw path, so distinct paths would grow them without bound; genlab's own (:mod:`genlab.metrics`,
at ``/metrics`` with the key) label by route template. The worker dies with its arbiter
(:func:`~genlab.eval.job_runner.die_with_parent`), so no worker outlives the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.eval.job_store import JobStore
from genlab.eval.jobs_app import JOB_KINDS, JOBS_ROUTES, jobs_app, model_path

from genlab.bearer import API_KEY_ENV, HEALTH_PATHS, headers_authorized
from genlab.metrics import METRICS_PATH, Metrics, MetricsMiddleware, server_metrics_dir
from genlab.web import RequireKey

STATE_ENV = "GENLAB_JOBS_STATE"
MAX_QUEUED_ENV = "GENLAB_JOBS_MAX_QUEUED"
MAX_ATTEMPTS_ENV = "GENLAB_JOBS_MAX_ATTEMPTS"
DATA_DIR_ENV = "GENLAB_DATA_DIR"
SUPERVISOR_ENV = "GENLAB_JOBS_SUPERVISOR"  # set by genlab eval serve-jobs: its pid, for the worker's ancestry check


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/genlab/jobs (default ~/.local/state/genlab/jobs)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "genlab" / "jobs"


@dataclass(frozen=True)
class JobsSettings:
    state_dir: Path
    max_queued: int = 16  # jobs that may wait; one more is a 429
    max_attempts: int = 2  # a job interrupted by the service's death starts over until this many attempts
    api_key: str | None = None
    data_dir: str = "data"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> JobsSettings:
        env = dict(os.environ if env is None else env)
        return cls(
            state_dir=Path(env.get(STATE_ENV) or default_state_dir()).expanduser().resolve(),
            max_queued=int(env.get(MAX_QUEUED_ENV, 16)),
            max_attempts=int(env.get(MAX_ATTEMPTS_ENV, 2)),
            api_key=env.get(API_KEY_ENV) or None,
            data_dir=env.get(DATA_DIR_ENV, "data"),
        )

    def store(self) -> JobStore:
        return JobStore(self.state_dir, self.max_queued, self.max_attempts)


def job_runner(data_dir: str) -> Callable[[str, dict[str, Any], Callable[[int, int], None]], dict[str, Any]]:
    """(kind, validated params, progress report) -> the result, as ``genlab eval fid|anomaly --json`` gives it."""

    def run(kind: str, params: dict[str, Any], report: Callable[[int, int], None]) -> dict[str, Any]:
        model = str(model_path(params["model"]))
        if kind == "fid":
            from genlab.eval.fid import compute_fid

            return compute_fid(
                model,
                ref=params["reference"],
                split=params["split"],
                n=params["n"],
                metrics=tuple(dict.fromkeys(params["metrics"])),
                of=params["of"],
                seed=params["seed"],
                extractor=params["extractor"],
                data_dir=data_dir,
                progress=False,
                per_class=params["per_class"],
                bootstrap=params["bootstrap"],
                on_progress=report,
            )
        from genlab.eval.anomaly import evaluate_anomaly

        keys = ("dataset", "normal_class", "ood", "split", "percentile")
        return evaluate_anomaly(model, data_dir=data_dir, on_progress=report, **{k: params[k] for k in keys})

    return run


def build_jobs_service(settings: JobsSettings) -> Any:
    """The BentoML service of the jobs routes over ``settings``' store; its worker runs the jobs."""
    import bentoml
    from genlab.eval.job_runner import JobRunner, die_with_parent

    store = settings.store()

    @bentoml.asgi_app(jobs_app(store), path="/")
    @bentoml.service(name="genlab-eval-jobs", workers=1, metrics={"enabled": False})
    class EvalJobs:
        """FID / KID and anomaly-detection jobs over the models found under the models root."""

        def __init__(self) -> None:  # in the worker's main thread, before any job runs
            supervisor = os.environ.get(SUPERVISOR_ENV)
            die_with_parent(os.getppid(), int(supervisor) if supervisor else None)  # the arbiter; its parent
            self.runner = JobRunner(store, job_runner(settings.data_dir))
            self.runner.start()

    templates = [*(f"/jobs/{kind}" for kind in JOB_KINDS), *JOBS_ROUTES, *HEALTH_PATHS, METRICS_PATH, "/", "/docs.json"]
    EvalJobs.add_asgi_middleware(  # outermost: every request is counted, refused ones included
        MetricsMiddleware,
        metrics=Metrics.for_server("genlab eval serve-jobs", templates),
        expose=lambda scope: headers_authorized(scope.get("headers", ()), settings.api_key or ""),
    )
    if settings.api_key:
        EvalJobs.add_asgi_middleware(RequireKey, api_key=settings.api_key, open_paths=HEALTH_PATHS)
    return EvalJobs


def __getattr__(name: str) -> Any:
    """``EvalJobs``: the service configured from the environment (what ``bentoml serve ...:EvalJobs`` loads)."""
    if name == "EvalJobs":
        server_metrics_dir()  # made by the first process of the server, before it starts its worker
        return build_jobs_service(JobsSettings.from_env())
    raise AttributeError(name)
