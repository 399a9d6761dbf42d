"""Load test of ``genlab serve`` against two baselines on the same export, with the same client, in one run.

Servers (each started from the repository root, in its own session, on 127.0.0.1, with GENLAB_API_KEY unset):
  * ``genlab serve --model EXPORT`` with its default settings, and with ``--workers 2`` (part 1); with
    ``--batching on|off`` (part 2); with ``--access-log`` (part 3);
  * the leanest BentoML service doing the same calls, ``benchmarks/baselines/minimal_bentoml.py`` (async
    APIs calling ONNX Runtime inline, plain types, access log and metrics off), with 1 and 2 workers;
  * a plain Starlette app doing the same calls, ``benchmarks/baselines/plain_starlette.py``, served by
    uvicorn (uvloop + httptools where installed), access log off: the floor of Python HTTP serving here.
Both baselines run ONNX Runtime with one intra-op thread and no spin-waiting.

Workloads (JSON POSTs): ``/generate`` {"n": 1, "seed": 7, "format": "npy"} at 1 and 32 clients;
``/generate`` n=64 (npy) at 1 client; ``/anomaly-score`` {"array": one uint8 image [1, C, H, W]} at 1 and
32 clients. The client is one separate process (spawned) running asyncio (uvloop where installed) +
aiohttp with N coroutines in a closed loop (each sends its next request when its previous one is
answered) on kept-alive connections; every level has a warm-up (``--warmup``, default 1 s) that is not
counted, then ``--duration`` seconds (default 4) measured. Errors are non-200 answers and transport
errors; any error is a failure. Before measuring, each server's answers are checked once (status,
shape and dtype of the .npy, JSON) and its n=64 images compared with the in-process ones.

Parts (``--parts``, default 1,2,3):
  1. Side by side: every server above, all up at once, each workload on each server in turn for ``--rounds``
     rounds (order rotated each round), req/s per workload the median of its rounds;
     plus the in-process rate of the same n=64 decode + ``np.save`` (ONNX Runtime, one thread). Then the
     targets: genlab >= 1.0x the minimal BentoML service on every workload, at equal worker counts (1 vs 1,
     2 vs 2) and best of each (the better of its worker settings against the better of the baseline's);
     genlab (one worker) >= 0.7x Starlette for /generate n=1 and /anomaly-score at 1 and 32 clients; genlab
     /generate n=64 at 1 client >= 0.6x in-process; ``sample_latents`` with the export's fitted prior, prepared
     once, <= 2x the N(0, I) draw at n=1 and n=64 (timed in-process); no errors anywhere.
  2. Request merging: ``genlab serve`` (merging on, the default) and ``--batching off``, both up, rounds
     alternating (``--rounds``, default 3) on single-image /anomaly-score and /generate n=1 at 1 and 32
     clients: median req/s and the ratio on/off (targets: >= 1.0 for /anomaly-score at 32 clients, where
     it gains; >= 0.9 elsewhere, what it may cost; the round-to-round spread is shown).
  3. Trim settings, one at a time against the default: ``--access-log`` and ``--workers 2``, /generate
     n=1 and /anomaly-score at 32 clients: req/s and the ratio to the default.
  4. Soak (``--soak SECONDS``; alone unless ``--parts`` is given too): one default ``genlab serve``,
     64 clients cycling /generate n=1 (npy), /anomaly-score and /reconstruct (one image, format=array):
     requests, req/s, p50/p99 latency, errors by kind (target 0), and the server's resident memory (VmRSS
     summed over its process group and every descendant: BentoML starts its workers in sessions of their
     own) sampled every 5 s; growth from the end of a warm-up (10% of the run, at least 20 s) to the end
     (target < 5%). BentoML 1.4.39 keeps every request's timeout timer, and with it the request's context,
     alive for ``traffic.timeout`` seconds (genlab sets 10, GENLAB_REQUEST_TIMEOUT_S; BentoML's default is
     60), so RSS climbs for that long under steady load and then levels off: a soak must run well past it.
  5. Before / after (``--before GIT_REF``; alone unless ``--parts`` is given too): ``genlab serve`` run from a
     git worktree of GIT_REF (same interpreter and packages) and from this tree, default settings, both up at
     once, ``--rounds`` rounds alternating between them on /generate n=1 and /anomaly-score at 32 clients:
     median req/s and the ratio now / before (target >= 0.9x: a change costs no throughput).

Without ``--model``, the model users serve is made on a short budget: the quickstart's VAE-GAN (default size:
width 32, latent 32, 28x28x1, mnist-5k) trained for one whole epoch, so that the run finishes with its fitted latent
prior (a Gaussian mixture) and calibration, and exported into a temporary directory (the weights do not matter for
speed; the prior and calibration are work the requests do). Every server samples the export's prior, prepared once
at load. The model used (prior, calibration, epochs) is printed with the tables. Machine info (CPUs, load average
before and after, versions, uvloop/httptools), the command line and the date are printed with the tables
(markdown, on stdout; with ``--json`` the JSON result goes to stdout and the tables to stderr).

Run (from anywhere; ~5 minutes with the defaults on 2 cores):
    .venv/bin/python benchmarks/serve_load.py [--model EXPORT_DIR] [--duration 4] [--warmup 1] [--rounds 3]
        [--parts 1,2,3] [--soak SECONDS] [--before GIT_REF] [--port 3100] [--keep-logs DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import importlib.util
import io
import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GEN_SEED, GEN_BIG, GEN_BIG_SEED = 7, 64, 0
RAW_THRESHOLD = 1.0  # sent to genlab only for a model without calibration: the work done is the same
MANY = 32
# workload -> (route, payload, clients)
WORKLOADS: dict[str, tuple[str, str, int]] = {
    "gen1@1": ("generate", "gen1", 1),
    "gen1@32": ("generate", "gen1", MANY),
    "gen64@1": ("generate", "gen64", 1),
    "score@1": ("anomaly-score", "score", 1),
    "score@32": ("anomaly-score", "score", MANY),
}
TITLES = {
    "gen1@1": "/generate n=1, 1 client",
    "gen1@32": f"/generate n=1, {MANY} clients",
    "gen64@1": f"/generate n={GEN_BIG}, 1 client",
    "score@1": "/anomaly-score 1 image, 1 client",
    "score@32": f"/anomaly-score 1 image, {MANY} clients",
}
SOAK_CLIENTS, RSS_EVERY_S = 64, 5.0


# -- the client process ---------------------------------------------------------------------------------------
def _drive(
    base: str, requests: list[tuple[str, bytes]], clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Runs in the client process: ``clients`` coroutines POST JSON bodies to ``base + route`` in a closed loop,
    each cycling through ``requests`` (from its own offset), for ``warmup`` seconds not counted, then
    ``duration`` seconds counted."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_drive_async(base, requests, clients, duration, warmup))
    return uvloop.run(_drive_async(base, requests, clients, duration, warmup))


async def _drive_async(
    base: str, requests: list[tuple[str, bytes]], clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    import aiohttp

    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = False

    async def worker(session: aiohttp.ClientSession, offset: int, until: float) -> None:
        i = offset
        while time.perf_counter() < until:
            route, body = requests[i % len(requests)]
            i += 1
            t0, kind = time.perf_counter(), None
            try:
                async with session.post(base + route, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        kind = f"HTTP {r.status}"
            except Exception as err:  # noqa: BLE001 (a load test counts every failure)
                kind = type(err).__name__
            if not measuring:
                continue
            if kind is None:
                latencies.append(time.perf_counter() - t0)
            else:
                key = f"{route} {kind}"
                errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        if warmup > 0:
            end = time.perf_counter() + warmup
            await asyncio.gather(*(worker(session, k, end) for k in range(clients)))
        measuring = True
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, k, t0 + duration) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall}


# -- servers --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One server configuration: ``kind`` is genlab, bentoml (the minimal baseline) or starlette."""

    label: str
    kind: str
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    tree: Path | None = None  # genlab from this source tree (a checkout of another revision) instead of REPO


def genlab(*flags: str) -> Spec:
    return Spec(" ".join(("genlab serve", *flags)), "genlab", flags)


def minimal_bentoml(workers: int) -> Spec:
    return Spec(
        f"minimal BentoML, {workers} worker{'s' if workers > 1 else ''}",
        "bentoml",
        env=(("BASELINE_WORKERS", str(workers)),),
    )


STARLETTE = Spec("plain Starlette (uvicorn)", "starlette")


def _command(spec: Spec, export: Path, port: int) -> list[str]:
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if spec.kind == "genlab":
        exe = REPO / ".venv" / "bin" / "genlab"
        base = [str(exe)] if exe.exists() and spec.tree is None else [sys.executable, "-m", "genlab"]
        return [*base, "serve", "--model", str(export), *where, *spec.flags]
    if spec.kind == "bentoml":
        return [sys.executable, "-m", "bentoml", "serve", "benchmarks.baselines.minimal_bentoml:Minimal", *where]
    return [sys.executable, "-m", "uvicorn", "benchmarks.baselines.plain_starlette:app", *where, "--no-access-log"]


class ServerError(RuntimeError):
    """A server that did not start; ``reason`` is one line, the message has its log's tail."""

    def __init__(self, reason: str, log: str):
        super().__init__(f"{reason}\n{log}")
        self.reason = reason


class Server:
    """One server process in its own session (stopped with killpg), ready when GET /readyz answers 200."""

    started = 0  # servers started so far: numbers the log files

    def __init__(self, spec: Spec, export: Path, port: int, tmp: Path):
        self.spec, self.port = spec, port
        self.url = f"http://127.0.0.1:{port}"
        Server.started += 1
        self.log_path = (
            tmp / f"serve-{Server.started:02d}-{re.sub(r'[^a-z0-9]+', '-', spec.label.lower()).strip('-')}.log"
        )
        self.log = open(self.log_path, "w+")  # noqa: SIM115 - the server writes to it until stop() closes it
        # its own BENTOML_HOME: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts
        home = tmp / f"bentoml-home-{port}"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "GENLAB_API_KEY"}
        env |= {
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "True",
            "BASELINE_EXPORT": str(export),
            **dict(spec.env),
        }
        self.command = _command(spec, export, port)
        self.proc = subprocess.Popen(
            self.command,
            cwd=spec.tree or REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = self.tail()
                bad = re.search(r"unrecognized arguments: (.*)|invalid choice: (.*)", log)
                reason = (
                    f"flag not accepted: {(bad.group(1) or bad.group(2)).strip()}"
                    if bad
                    else f"exited with status {self.proc.returncode}"
                )
                raise ServerError(reason, log)
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ServerError(f"not ready in {timeout:.0f} s", self.tail())

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def pids(self) -> list[int]:
        return _group_and_descendants(self.proc.pid)

    def rss_kib(self) -> int:
        """Resident memory of the process group and every descendant (BentoML workers run in sessions of their own)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                m = re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
                total += int(m.group(1)) if m else 0
        return total

    def stop(self) -> None:
        pids = self.pids()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in pids:  # workers in other sessions that outlived their arbiter (ours: started by this server)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def _group_and_descendants(root: int) -> list[int]:
    """pids whose process group is ``root`` or that descend from ``root`` (from /proc/*/stat)."""
    parent, group = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            pid = int(stat.parent.name)
            parent[pid], group[pid] = int(fields[1]), int(fields[2])
    out = {pid for pid, g in group.items() if g == root}
    if root in parent:
        out.add(root)
    grew = True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in out and pid not in out}
        out |= new
        grew = bool(new)
    return sorted(out)


# -- helpers --------------------------------------------------------------------------------------------------
def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _post(url: str, payload: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _make_model(tmp: Path) -> Path:
    """The model users serve, on a short budget: the quickstart's VAE-GAN (default size, mnist-5k) trained for one whole
    epoch, so that the run finishes and its export has the fitted latent prior and the calibration (the weights do not
    matter for speed; the prior and the calibration are work every request does)."""
    exe = REPO / ".venv" / "bin" / "genlab"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "genlab"]
    _say("training the quickstart's vaegan for one epoch (a finished run) and exporting it ...")
    for args in (
        ["train", "vaegan", "--dataset", "mnist-5k", "--epochs", "1", "--out", str(tmp / "run")],
        ["export", str(tmp / "run"), "--out", str(tmp / "export"), "--no-bento"],
    ):
        r = subprocess.run(base + args, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"genlab {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return tmp / "export"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
        return None

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            name: version(name) for name in ("bentoml", "onnxruntime", "uvicorn", "starlette", "aiohttp", "numpy")
        },
        "importable": {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")},
    }


# -- the benchmark --------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every part shares: the export, the payloads, the client process, the settings and the failures seen."""

    export: Path
    tmp: Path
    pool: concurrent.futures.Executor
    port: int
    duration: float
    warmup: float
    payloads: dict[str, dict] = field(default_factory=dict)
    reference: np.ndarray | None = None  # the n=64 images, decoded in-process
    failures: dict[str, str] = field(default_factory=dict)  # server label -> why it did not start
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    keep_logs: Path | None = None

    @contextlib.contextmanager
    def serving(self, *specs: Spec) -> Iterator[dict[str, Server]]:
        """Start the servers (in order), yield label -> Server for those that came up, stop them all."""
        up: dict[str, Server] = {}
        try:
            for spec in specs:
                server = Server(spec, self.export, _free_port(self.port), self.tmp)
                try:
                    _say(f"  starting {spec.label} on port {server.port} ...")
                    server.wait_ready()
                    self.check(server)
                    up[spec.label] = server
                except ServerError as err:
                    self.failures[spec.label] = err.reason
                    _say(f"  {spec.label}: {err}")
                    self._finish(server)
            yield up
        finally:
            for server in up.values():
                self._finish(server)

    def _finish(self, server: Server) -> None:
        server.stop()
        hits = [
            line
            for line in server.log_path.read_text(errors="replace").splitlines()
            if re.search(r"Traceback|Error|Exception|retrying| 50[0-9] |timed? ?out", line, re.IGNORECASE)
        ]
        if hits:
            self.log_problems.setdefault(server.spec.label, []).extend(hits[-20:])
        if self.keep_logs:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            (self.keep_logs / server.log_path.name).write_text(server.log_path.read_text(errors="replace"))

    def body(self, spec: Spec, payload: str) -> dict:
        body = dict(self.payloads[payload])
        if spec.kind == "genlab" and payload == "score" and self.payloads.get("raw_threshold"):
            body["threshold"] = RAW_THRESHOLD
        return body

    def check(self, server: Server) -> None:
        """One request of each kind, answers checked; the n=64 images compared with the in-process ones."""
        try:
            self._check(server)
        except (OSError, ValueError) as err:  # no answer, or not .npy / JSON
            raise ServerError(f"first requests failed: {type(err).__name__}: {err}", server.tail()) from None

    def _check(self, server: Server) -> None:
        shape = self.reference.shape[1:]
        for payload, n in (("gen1", 1), ("gen64", GEN_BIG)):
            status, data = _post(f"{server.url}/generate", self.body(server.spec, payload))
            if status != 200:
                raise ServerError(f"/generate answered {status}: {data[:300]!r}", server.tail())
            images = np.load(io.BytesIO(data), allow_pickle=False)
            if images.dtype != np.uint8 or images.shape != (n, *shape):
                raise ServerError(f"/generate n={n} gave {images.dtype} {images.shape}", server.tail())
            if n == GEN_BIG and not np.array_equal(images, self.reference):
                diff = int(np.abs(images.astype(int) - self.reference.astype(int)).max())
                _say(f"  note: {server.spec.label} /generate n={n} differs from in-process decode (max diff {diff})")
        status, data = _post(f"{server.url}/anomaly-score", self.body(server.spec, "score"))
        if status != 200:
            raise ServerError(f"/anomaly-score answered {status}: {data[:300]!r}", server.tail())
        json.loads(data)

    def drive(
        self, server: Server, payloads: list[tuple[str, str]], clients: int, duration: float, warmup: float
    ) -> concurrent.futures.Future:
        """The client process against one server; ``payloads`` = [(route, payload name)], cycled."""
        requests = [(f"/{route}", json.dumps(self.body(server.spec, name)).encode()) for route, name in payloads]
        return self.pool.submit(_drive, server.url, requests, clients, duration, warmup)

    def measure(self, server: Server, workload: str) -> dict[str, Any]:
        route, payload, clients = WORKLOADS[workload]
        load = _load()
        res = self.drive(server, [(route, payload)], clients, self.duration, self.warmup).result()
        lat, wall = res["latencies"], res["wall"]
        row = {
            "requests": len(lat),
            "errors": sum(res["errors"].values()),
            "error_kinds": res["errors"],
            "req_per_s": round(len(lat) / wall, 1),
            "p50_ms": _ms(lat, 50),
            "p99_ms": _ms(lat, 99),
            "loadavg": load[0],
        }
        err = f"  errors {row['error_kinds']}" if row["errors"] else ""
        _say(
            f"    {TITLES[workload]:34s} {row['req_per_s']:8.1f} req/s  "
            f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms{err}"
        )
        return row


def inprocess_rate(export: Path, duration: float, warmup: float) -> dict[str, Any]:
    """n=64 decode + np.save of the same latents as /generate n=64 seed 0, in this process, one ONNX Runtime thread."""
    from genlab.export.reader import open_export, sample_latents

    model = open_export(export, providers="cpu", threads=1)
    z = sample_latents(GEN_BIG, model.latent_dim, GEN_BIG_SEED, prior=model.latent_prior)

    def call() -> None:
        np.save(io.BytesIO(), model.decode(z), allow_pickle=False)

    for span in (warmup, duration):  # the last span is the one counted
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < span:
            call()
            calls += 1
    wall = time.perf_counter() - t0
    return {"calls": calls, "calls_per_s": round(calls / wall, 1), "ms_per_call": round(wall / calls * 1000, 2)}


def prior_draw_times(export: Path, calls: int = 2000) -> dict[str, dict[str, float]]:
    """Microseconds per seeded ``sample_latents`` call at n=1 and n=64 (best of 5 x ``calls``): N(0, I), the export's
    prior prepared once (what the servers do), and the prior's dict converted on every call."""
    import timeit

    from genlab.export.reader import read_export, sample_latents

    model = read_export(export)
    draws = {
        "N(0, I)": None,
        "fitted prior, prepared once": model.latent_prior,
        "fitted prior, converted per call": model.prior,
    }

    def per_call_us(n: int, prior: Any) -> float:
        seconds = min(timeit.repeat(lambda: sample_latents(n, model.latent_dim, 7, 1.0, prior), number=calls, repeat=5))
        return round(seconds / calls * 1e6, 1)

    return {f"n={n}": {name: per_call_us(n, p) for name, p in draws.items()} for n in (1, GEN_BIG)}


def prior_targets(times: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    targets = []
    for n, row in times.items():
        ratio = _ratio(row["fitted prior, prepared once"], row["N(0, I)"])
        targets.append(
            {
                "target": f"sample_latents with the fitted prior / N(0, I), {n}",
                "ratio": ratio,
                "required": "<= 2.0",
                "verdict": "PASS" if ratio is not None and ratio <= 2.0 else "FAIL",
                "detail": f"{row['fitted prior, prepared once']} us vs {row['N(0, I)']} us "
                f"(converted per call: {row['fitted prior, converted per call']} us)",
            }
        )
    return targets


# -- part 1 ---------------------------------------------------------------------------------------------------
SIDE_BY_SIDE = (genlab(), genlab("--workers", "2"), minimal_bentoml(1), minimal_bentoml(2), STARLETTE)


def part_side_by_side(bench: Bench, rounds: int) -> dict[str, Any]:
    """Every server up at once (an idle one takes no CPU), each workload measured on each server in turn, ``rounds``
    times with the order rotated: a cell is the median of its rounds, so a slow spell of a shared machine falls on
    every server rather than on whichever was measured during it."""
    runs: dict[str, dict[str, list[dict]]] = {}
    with bench.serving(*SIDE_BY_SIDE) as up:
        labels = list(up)  # the servers that came up, in SIDE_BY_SIDE's order
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)] if labels else []
            for w in WORKLOADS:
                for label in order:
                    _say(f"  round {r + 1}/{rounds}, {label}:")
                    runs.setdefault(label, {}).setdefault(w, []).append(bench.measure(up[label], w))
    rows = {label: {w: _summarise(cells) for w, cells in by_workload.items()} for label, by_workload in runs.items()}
    _say("  in-process ONNX Runtime, n=64 decode + np.save, one thread ...")
    inproc = inprocess_rate(bench.export, bench.duration, bench.warmup)
    _say(f"    {inproc['calls_per_s']} calls/s")
    draws = prior_draw_times(bench.export)
    _say(f"  seeded latent draws, us per call: {draws}")
    targets = side_by_side_targets(rows, inproc) + prior_targets(draws)
    return {"rows": rows, "rounds": rounds, "inprocess_gen64": inproc, "prior_draws_us": draws, "targets": targets}


def _best(rows: dict[str, dict], kind: str, workload: str) -> tuple[str | None, dict | None]:
    """The server of ``kind`` with the most req/s on ``workload``."""
    cells = [
        (label, cells[workload])
        for label, cells in rows.items()
        if next(s for s in SIDE_BY_SIDE if s.label == label).kind == kind
    ]
    return max(cells, key=lambda c: c[1]["req_per_s"], default=(None, None))


def _target(
    name: str, ours: tuple[str | None, dict | None], theirs: tuple[str | None, float | None], required: float
) -> dict[str, Any]:
    label, cell = ours
    ratio = _ratio(cell and cell["req_per_s"], theirs[1])
    verdict = "n/a" if ratio is None else "PASS" if ratio >= required and not cell["errors"] else "FAIL"
    detail = f"{cell['req_per_s']} ({label}) vs {theirs[1]} ({theirs[0]})" if ratio is not None else "not measured"
    if cell and cell["errors"]:
        detail += f"; {cell['errors']} errors"
    return {"target": name, "ratio": ratio, "required": f">= {required}", "verdict": verdict, "detail": detail}


EQUAL_WORKERS = ((genlab(), minimal_bentoml(1)), (genlab("--workers", "2"), minimal_bentoml(2)))


def _spec_cell(rows: dict[str, dict], spec: Spec, workload: str) -> tuple[str, dict | None]:
    return spec.label, rows.get(spec.label, {}).get(workload)


def side_by_side_targets(rows: dict[str, dict], inproc: dict) -> list[dict[str, Any]]:
    targets = []
    for w in WORKLOADS:
        other = _best(rows, "bentoml", w)
        targets.append(
            _target(
                f"genlab / minimal BentoML, best worker setting of each, {TITLES[w]}",
                _best(rows, "genlab", w),
                (other[0], other[1] and other[1]["req_per_s"]),
                1.0,
            )
        )
        for ours, theirs in EQUAL_WORKERS:
            label, cell = _spec_cell(rows, theirs, w)
            workers = theirs.label.split(", ")[-1]
            targets.append(
                _target(
                    f"genlab / minimal BentoML, {workers} each, {TITLES[w]}",
                    _spec_cell(rows, ours, w),
                    (label, cell and cell["req_per_s"]),
                    1.0,
                )
            )
    for w in ("gen1@1", "gen1@32", "score@1", "score@32"):
        floor = rows.get(STARLETTE.label, {}).get(w)
        targets.append(
            _target(
                f"genlab / Starlette, {TITLES[w]}",
                _spec_cell(rows, genlab(), w),
                (STARLETTE.label, floor and floor["req_per_s"]),
                0.7,
            )
        )
    targets.append(
        _target(
            f"genlab / in-process ONNX Runtime, {TITLES['gen64@1']}",
            _best(rows, "genlab", "gen64@1"),
            ("decode + np.save, 1 thread", inproc["calls_per_s"]),
            0.6,
        )
    )
    return targets


def errors_target(result: dict[str, Any]) -> dict[str, Any]:
    """Every measured cell of parts 1-3 without a single error, and every server started."""
    errors: dict[str, dict] = {}
    for part in ("side_by_side", "trim"):
        for label, cells in result.get(part, {}).get("rows", {}).items():
            errors |= {f"{label}, {TITLES[w]}": c["error_kinds"] for w, c in cells.items() if c["errors"]}
    for key, by_workload in result.get("batching", {}).get("summary", {}).items():
        errors |= {f"--batching {key}, {TITLES[w]}": c["error_kinds"] for w, c in by_workload.items() if c["errors"]}
    count = sum(sum(kinds.values()) for kinds in errors.values())
    missing = result.get("not_started", {})
    return {
        "target": "no errors, every server started (parts 1-3)",
        "ratio": count,
        "required": "0",
        "verdict": "FAIL" if errors or missing else "PASS",
        "detail": (json.dumps(errors) if errors else "none")
        + (f"; not started: {', '.join(missing)}" if missing else ""),
    }


# -- part 2 ---------------------------------------------------------------------------------------------------
BATCHING_WORKLOADS = ("score@32", "score@1", "gen1@32", "gen1@1")


def part_batching(bench: Bench, rounds: int) -> dict[str, Any]:
    """Request merging on (the default) and off, both up at once, rounds alternating on every workload of
    ``BATCHING_WORKLOADS``: what merging gains with concurrent clients and what it costs a single one."""
    specs = {"on": genlab(), "off": genlab("--batching", "off")}
    runs: dict[str, dict[str, list[dict]]] = {}
    with bench.serving(*specs.values()) as up:
        for r in range(rounds):
            for w in BATCHING_WORKLOADS:
                for key, spec in specs.items():
                    if spec.label in up:
                        _say(f"  round {r + 1}/{rounds}, {spec.label}:")
                        runs.setdefault(key, {}).setdefault(w, []).append(bench.measure(up[spec.label], w))
    summary = {key: {w: _summarise(cells) for w, cells in by_workload.items()} for key, by_workload in runs.items()}
    targets = []
    for w in BATCHING_WORKLOADS:
        on, off = summary.get("on", {}).get(w), summary.get("off", {}).get(w)
        required = 1.0 if w == "score@32" else 0.9  # gains where requests overlap, costs little where none do
        target = _target(
            f"merging on (default) / off, {TITLES[w]}",
            (specs["on"].label, on),
            (specs["off"].label, off and off["req_per_s"]),
            required,
        )
        spread = max((c["spread_pct"] for c in (on, off) if c and c["spread_pct"] is not None), default=None)
        target["detail"] += f"; round-to-round spread up to {spread}%" if spread is not None else ""
        targets.append(target)
    return {
        "workloads": list(BATCHING_WORKLOADS),
        "rounds": rounds,
        "settings": {k: s.label for k, s in specs.items()},
        "summary": summary,
        "targets": targets,
    }


def _summarise(rows: list[dict]) -> dict[str, Any]:
    rates = [r["req_per_s"] for r in rows]
    med = statistics.median(rates)
    return {
        "req_per_s": round(med, 1),
        "rounds": rates,
        "spread_pct": round((max(rates) - min(rates)) / med * 100, 1) if med else None,
        "p50_ms": statistics.median(r["p50_ms"] or 0 for r in rows),
        "p99_ms": statistics.median(r["p99_ms"] or 0 for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "error_kinds": _merge_counts([r["error_kinds"] for r in rows]),
    }


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


# -- part 3 ---------------------------------------------------------------------------------------------------
def part_trim(bench: Bench) -> dict[str, Any]:
    rows: dict[str, dict[str, dict]] = {}
    for spec in (genlab(), genlab("--access-log"), genlab("--workers", "2")):
        with bench.serving(spec) as up:
            if spec.label in up:
                rows[spec.label] = {w: bench.measure(up[spec.label], w) for w in ("gen1@32", "score@32")}
    default = rows.get(genlab().label, {})
    ratios = {
        label: {w: _ratio(cell["req_per_s"], default.get(w, {}).get("req_per_s")) for w, cell in cells.items()}
        for label, cells in rows.items()
    }
    return {"rows": rows, "ratio_to_default": ratios}


# -- part 4 ---------------------------------------------------------------------------------------------------
def part_soak(bench: Bench, seconds: float) -> dict[str, Any]:
    mix = {
        ("generate", "gen1"): "/generate n=1 npy",
        ("anomaly-score", "score"): "/anomaly-score 1 image",
        ("reconstruct", "recon"): "/reconstruct 1 image",
    }
    warm_s = max(20.0, 0.1 * seconds)
    with bench.serving(genlab()) as up:
        server = up.get(genlab().label)
        if server is None:
            reason = bench.failures.get(genlab().label)
            return {
                "seconds": seconds,
                "failed": reason,
                "targets": [
                    {
                        "target": "soak: server started",
                        "ratio": None,
                        "required": "-",
                        "verdict": "FAIL",
                        "detail": reason,
                    }
                ],
            }
        load0, t0 = _load(), time.monotonic()
        future = bench.drive(server, list(mix), SOAK_CLIENTS, seconds, 0.0)
        samples = [(0.0, server.rss_kib())]
        while not future.done():
            concurrent.futures.wait([future], timeout=RSS_EVERY_S - (time.monotonic() - t0) % RSS_EVERY_S)
            samples.append((round(time.monotonic() - t0, 1), server.rss_kib()))
        res = future.result()
    lat, wall = res["latencies"], res["wall"]
    warm = next((kib for t, kib in samples if t >= warm_s), samples[-1][1])
    end = samples[-1][1]
    growth = round((end - warm) / warm * 100, 2) if warm else None
    errors = sum(res["errors"].values())
    out = {
        "seconds": seconds,
        "clients": SOAK_CLIENTS,
        "mix": list(mix.values()),
        "requests": len(lat),
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": _ms(lat, 50),
        "p99_ms": _ms(lat, 99),
        "errors": errors,
        "error_kinds": res["errors"],
        "rss_mib": {
            "after_warmup": round(warm / 1024, 1),
            "end": round(end / 1024, 1),
            "warmup_s": warm_s,
            "growth_pct": growth,
        },
        "rss_samples_mib": [(t, round(kib / 1024, 1)) for t, kib in samples],
        "loadavg_before": load0,
        "loadavg_after": _load(),
    }
    out["targets"] = [
        {
            "target": "soak: no errors",
            "ratio": errors,
            "required": "0",
            "verdict": "PASS" if errors == 0 else "FAIL",
            "detail": json.dumps(res["errors"]) if errors else f"{len(lat)} requests",
        },
        {
            "target": f"soak: RSS growth after {warm_s:.0f} s warm-up, %",
            "ratio": growth,
            "required": "< 5",
            "verdict": "n/a" if growth is None else "PASS" if growth < 5 else "FAIL",
            "detail": f"{out['rss_mib']['after_warmup']} -> {out['rss_mib']['end']} MiB",
        },
    ]
    return out


# -- part 5 ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def checkout(ref: str, tmp: Path) -> Iterator[Path]:
    """A detached git worktree of ``ref`` (removed afterwards): genlab as it was at that revision."""
    tree = tmp / f"tree-{re.sub(r'[^A-Za-z0-9]+', '-', ref)}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(tree), ref], cwd=REPO, check=True, capture_output=True
    )
    _link_stage_packages(tree)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


def _link_stage_packages(tree: Path) -> None:
    """Make ``tree``'s stage folders (pyproject's package-dir: ``export/`` is ``genlab.export``, ...) importable from
    that tree as they install, with links inside its ``genlab/``: otherwise ``genlab.export`` and the other stages
    would resolve to this checkout's editable install while ``genlab`` itself is the tree's."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's tomli, the same parser
        import tomli as tomllib

    pyproject = tomllib.loads((tree / "pyproject.toml").read_text())
    package_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    for package, folder in package_dir.items():
        parent, _, leaf = package.rpartition(".")
        link = tree / Path(*parent.split(".")) / leaf if parent else None
        if link is not None and not link.exists():
            link.symlink_to(Path(os.path.relpath(tree / folder, link.parent)), target_is_directory=True)


def part_before_after(bench: Bench, ref: str, rounds: int) -> dict[str, Any]:
    """``genlab serve`` at ``ref`` and as it is now, default settings, rounds alternating on /generate n=1 and
    /anomaly-score 1 image at 32 clients; target: now >= 0.9x before on both."""
    workloads = ("gen1@32", "score@32")
    with checkout(ref, bench.tmp) as tree:
        specs = {
            "before": Spec(f"genlab serve at {ref}", "genlab", tree=tree),
            "now": Spec("genlab serve (this tree)", "genlab"),
        }
        runs: dict[str, dict[str, list[dict]]] = {}
        with bench.serving(*specs.values()) as up:
            for r in range(rounds):
                for key, spec in specs.items():
                    if spec.label in up:
                        _say(f"  round {r + 1}/{rounds}, {spec.label}:")
                        for w in workloads:
                            runs.setdefault(key, {}).setdefault(w, []).append(bench.measure(up[spec.label], w))
    summary = {key: {w: _summarise(rows) for w, rows in cells.items()} for key, cells in runs.items()}
    targets = [
        _target(
            f"now / before ({ref}), {TITLES[w]}",
            ("now", summary.get("now", {}).get(w)),
            ("before", summary.get("before", {}).get(w, {}).get("req_per_s")),
            0.9,
        )
        for w in workloads
    ]
    return {
        "ref": ref,
        "rounds": rounds,
        "settings": {k: s.label for k, s in specs.items()},
        "summary": summary,
        "targets": targets,
    }


def _render_before_after(part: dict) -> list[str]:
    rows = [
        [
            f"`{part['settings'][key]}`",
            *(f"{cells[w]['req_per_s']} {cells[w]['rounds']}" for w in ("gen1@32", "score@32")),
        ]
        for key, cells in part["summary"].items()
    ]
    return [
        "",
        f"## 5. Before / after ({part['rounds']} alternating rounds; req/s median and each round)",
        "",
        *_table(["server", TITLES["gen1@32"], TITLES["score@32"]], rows),
    ]


# -- output ---------------------------------------------------------------------------------------------------
def _cell(cell: dict | None) -> str:
    if cell is None:
        return "n/a"
    return f"{cell['req_per_s']:.1f}" + (f" ({cell['errors']} err)" if cell["errors"] else "")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
    ]


def render(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# genlab serve vs baselines ({m['date']})",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Machine: {m['host']}, {m['cpus']} CPUs; load average (1/5/15 min) before {m['loadavg_start']}, after "
        f"{m['loadavg_end']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + "; importable: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["importable"].items())
        + ".",
        "",
        f"Model: {m['model']['name']} ({m['model']['family']}, {m['model']['image_shape']}, "
        f"latent {m['model']['latent_dim']}; prior: {m['model']['prior']}; "
        f"calibrated: {'yes' if m['model']['calibrated'] else 'no'}; training: {m['model']['training']}) "
        f"from {m['model']['path']}. "
        + (f"{m['warmup']} s warm-up + {m['duration']} s measured per cell. " if m["parts"] else "")
        + f"One client process (asyncio{' + uvloop' if m['importable']['uvloop'] else ''} + aiohttp, closed loop); "
        f"total {m['seconds']} s, of which {m['model_seconds']} s making the model.",
    ]
    if "side_by_side" in result:
        lines += _render_side(result["side_by_side"])
    targets = [
        t
        for part in ("side_by_side", "batching", "soak", "before_after")
        for t in result.get(part, {}).get("targets", [])
    ]
    if any(part in result for part in ("side_by_side", "batching", "trim")):
        targets.append(errors_target(result))
    if targets:
        lines += [
            "",
            "## Targets",
            "",
            *_table(
                ["target", "measured", "required", "verdict", "detail"],
                [[t["target"], t["ratio"], t["required"], f"**{t['verdict']}**", t["detail"]] for t in targets],
            ),
        ]
    if "batching" in result:
        lines += _render_batching(result["batching"])
    if "trim" in result:
        lines += _render_trim(result["trim"])
    if "soak" in result:
        lines += _render_soak(result["soak"])
    if "before_after" in result:
        lines += _render_before_after(result["before_after"])
    if result.get("not_started"):
        lines += [
            "",
            "Servers that did not start or failed their first requests: "
            + "; ".join(f"`{k}`: {v}" for k, v in result["not_started"].items()),
        ]
    return "\n".join(lines)


def _render_side(part: dict) -> list[str]:
    rows = [
        [f"`{spec.label}`", *(_cell(part["rows"].get(spec.label, {}).get(w)) for w in WORKLOADS)]
        for spec in SIDE_BY_SIDE
    ]
    inproc = part["inprocess_gen64"]
    rows.append(
        [
            "in-process ONNX Runtime (1 thread), decode + np.save",
            *("" for _ in range(2)),
            f"{inproc['calls_per_s']:.1f}",
            "",
            "",
        ]
    )
    draws = part["prior_draws_us"]
    kinds = list(next(iter(draws.values())))
    return [
        "",
        f"## 1. Side by side (req/s, median of {part.get('rounds', 1)} rounds; errors in brackets)",
        "",
        *_table(["server", *TITLES.values()], rows),
        "",
        "Seeded latent draws in-process (`genlab.latents.sample_latents`, us per call, best of 5):",
        "",
        *_table(["draw", *draws], [[kind, *(draws[n][kind] for n in draws)] for kind in kinds]),
    ]


def _render_batching(part: dict) -> list[str]:
    rows = [
        [
            f"`{part['settings'][key]}`",
            *(
                f"{_cell(by_workload.get(w))} {by_workload[w]['rounds'] if w in by_workload else ''}"
                for w in part["workloads"]
            ),
        ]
        for key, by_workload in part["summary"].items()
    ]
    return [
        "",
        f"## 2. Request merging on (the default) vs off ({part['rounds']} alternating rounds; req/s: median [rounds])",
        "",
        *_table(["server", *(TITLES[w] for w in part["workloads"])], rows),
    ]


def _render_trim(part: dict) -> list[str]:
    ratios = part["ratio_to_default"]
    rows = [
        [f"`{label}`", *(f"{_cell(cells[w])} ({ratios[label][w] or '-'}x)" for w in ("gen1@32", "score@32"))]
        for label, cells in part["rows"].items()
    ]
    return [
        "",
        "## 3. Trim settings, one at a time (req/s, ratio to the default)",
        "",
        *_table(["server", TITLES["gen1@32"], TITLES["score@32"]], rows),
    ]


def _render_soak(part: dict) -> list[str]:
    if "failed" in part:
        return ["", f"## 4. Soak: the server did not start ({part['failed']})"]
    rss = part["rss_mib"]
    return [
        "",
        f"## 4. Soak: `genlab serve`, {part['clients']} clients cycling {', '.join(part['mix'])} "
        f"for {part['seconds']} s",
        "",
        *_table(
            [
                "requests",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                f"RSS after {rss['warmup_s']:.0f} s",
                "RSS at end",
                "growth",
            ],
            [
                [
                    part["requests"],
                    part["req_per_s"],
                    part["p50_ms"],
                    part["p99_ms"],
                    f"{part['errors']} {part['error_kinds'] or ''}".strip(),
                    f"{rss['after_warmup']} MiB",
                    f"{rss['end']} MiB",
                    f"{rss['growth_pct']}%",
                ]
            ],
        ),
        "",
        "RSS every 5 s (s, MiB): "
        + ", ".join(f"{t:g}: {v}" for t, v in part["rss_samples_mib"])
        + f"; load average before {part['loadavg_before']}, after {part['loadavg_after']}.",
        "",
        "Note: BentoML 1.4.39's TimeoutMiddleware arms a timer per request that is never cancelled; it keeps the "
        "request's context (OpenTelemetry span included) alive for `traffic.timeout` seconds (60 by default), so "
        "under steady load RSS climbs for that long, then levels off. Soak well past the timeout to tell that "
        "from a leak.",
    ]


# -- main -----------------------------------------------------------------------------------------------------
def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train and export a default-size vaegan)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell (default 4)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of warm-up before each cell, not counted (default 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of parts 1, 2 and 5 (default 3)")
    parser.add_argument(
        "--parts",
        help="comma-separated parts to run: 1 side by side, 2 batching, 3 trim settings "
        "(default 1,2,3; none with --soak)",
    )
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="run the soak test (part 4) for SECONDS")
    parser.add_argument(
        "--before",
        metavar="GIT_REF",
        help="part 5: genlab serve at this revision against this tree, "
        "alternating rounds (alone unless --parts is given too)",
    )
    parser.add_argument("--port", type=int, default=3100, help="preferred port (a free one is taken if it is busy)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the servers' logs into DIR")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables then go to stderr)")
    args = parser.parse_args()
    default = "" if args.soak or args.before else "1,2,3"
    args.parts = {p.strip() for p in (args.parts if args.parts is not None else default).split(",") if p.strip()}
    return args


def _prepare(bench: Bench) -> dict[str, Any]:
    """Payloads and the in-process reference images; returns the model's description."""
    from genlab.export.reader import open_export, sample_latents

    from genlab.latents import describe

    model = open_export(bench.export, providers="cpu", threads=1)
    digit = model.decode(sample_latents(1, model.latent_dim, 1, prior=model.latent_prior))
    bench.reference = model.decode(sample_latents(GEN_BIG, model.latent_dim, GEN_BIG_SEED, prior=model.latent_prior))
    bench.payloads = {
        "gen1": {"n": 1, "seed": GEN_SEED, "format": "npy"},
        "gen64": {"n": GEN_BIG, "seed": GEN_BIG_SEED, "format": "npy"},
        "score": {"array": digit.tolist()},
        "recon": {"array": digit.tolist(), "format": "array"},
        "raw_threshold": not model.calibration,
    }
    return {
        "name": model.name,
        "family": model.family,
        "image_shape": list(model.image_shape),
        "latent_dim": model.latent_dim,
        "calibrated": bool(model.calibration),
        "prior": describe(model.prior),
        "training": {
            k: model.manifest["training"].get(k)
            for k in ("epoch", "step", "complete")
            if k in model.manifest["training"]
        },
        "path": str(bench.export),
    }


def main() -> None:
    args = _parse()
    started, meta = time.perf_counter(), _machine()
    meta |= {"loadavg_start": _load(), "duration": args.duration, "warmup": args.warmup, "parts": sorted(args.parts)}
    result: dict[str, Any] = {"meta": meta}
    with (
        tempfile.TemporaryDirectory(prefix="genlab-serve-load-") as tmp_name,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        export = args.model or _make_model(tmp)
        meta["model_seconds"] = round(time.perf_counter() - t0, 1)  # training + export, 0 with --model
        bench = Bench(export, tmp, pool, args.port, args.duration, args.warmup, keep_logs=args.keep_logs)
        meta["model"] = _prepare(bench)
        pool.submit(time.sleep, 0).result()  # the client process starts now, not during a measurement
        parts = {
            "side_by_side": ("1" in args.parts, lambda: part_side_by_side(bench, args.rounds)),
            "batching": ("2" in args.parts, lambda: part_batching(bench, args.rounds)),
            "trim": ("3" in args.parts, lambda: part_trim(bench)),
            "soak": (bool(args.soak), lambda: part_soak(bench, args.soak)),
            "before_after": (bool(args.before), lambda: part_before_after(bench, args.before, args.rounds)),
        }
        for name, (wanted, run) in parts.items():
            if wanted:
                _say(f"{name.replace('_', ' ')} (load average {_load()})")
                result[name] = run()
        result["not_started"], result["server_log_problems"] = bench.failures, bench.log_problems
    meta["loadavg_end"], meta["seconds"] = _load(), round(time.perf_counter() - started, 1)
    table = render(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(table)
    if bench.log_problems:
        _say("server log lines about failures:\n" + json.dumps(bench.log_problems, indent=2))


if __name__ == "__main__":
    main()
