"""Load test of the genlab HTTP service: a real ``genlab serve`` on localhost, driven from another process.

What it measures (markdown tables on stdout; ``--json`` prints JSON on stdout and the tables on stderr):

1. Each endpoint with one image per request -- ``/generate`` (n=1, format=npy), ``/reconstruct``
   (1 image as ``array``, format=array) and ``/anomaly-score`` (1 image as ``array``) -- at 1, 8, 32
   and 64 concurrent clients (``--levels``) for ``--duration`` seconds each (after a short warm-up
   at the same concurrency): requests, errors (non-200 or transport errors, by kind), req/s, p50
   and p99 latency, the mean batch size BentoML's adaptive batching formed per runtime method
   during the level (from the server's ``/metrics`` histogram ``bentoml_service_adaptive_batch_size``),
   and the CPU the server's processes (HTTP front, ONNX runtime) and the client process used, in cores.
2. ``/generate`` n=64 format=npy over HTTP (one client, sequential) vs the same decoder called
   in-process through ONNX Runtime (``open_export(EXPORT).decode(z)`` on the very latents the server
   draws for that seed; the two outputs are checked to be equal): median time per call, images/s
   and the ratio HTTP / in-process (target >= 0.5). format=png (one PNG grid) is shown for
   information. HTTP and in-process calls alternate in blocks so that load from other processes
   hits both alike.
3. Single-image ``/reconstruct`` at 32 concurrent clients with adaptive batching on vs off (a second
   server, ``genlab serve --no-batching``, started for this part; rounds alternate between the two
   servers): req/s of each (median over rounds) and the ratio (target >= 3).

The client is one separate process (``multiprocessing``, spawn) running asyncio + aiohttp with
N coroutines, each sending its next request as soon as its previous one answered (closed loop);
it keeps its connections open. The server is ``genlab serve`` started with ``start_new_session`` and
stopped with ``killpg``. The load average (``os.getloadavg``) is recorded before and after each part,
with the ONNX Runtime thread settings (the service opens its sessions with ONNX Runtime's default
``SessionOptions``: intra-op threads 0 = one per physical core, inter-op 1, sequential execution).

Without ``--model``, a default-size VAE-GAN (width 32, latent 32, 28x28x1) is trained for a few steps
(``genlab train vaegan --max-steps 20 --epochs 1``; weights do not matter for speed) and exported
into a temporary directory. A model without calibration is scored with a raw ``threshold``.

Run:  .venv/bin/python benchmarks/serve_load.py [--model EXPORT_DIR] [--duration 3] [--levels 1,8,32,64]
      [--port 3100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
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
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENDPOINTS = ("generate", "reconstruct", "anomaly-score")
GEN_BIG = 64
RAW_THRESHOLD = 1.0  # any finite number: the work done is the same whatever the threshold


# -- the client process ---------------------------------------------------------------------------------------
def _drive(url: str, body: bytes, concurrency: int, duration: float | None, count: int | None,
           warmup: float) -> dict[str, Any]:
    """Runs in the client process: ``concurrency`` coroutines POST ``body`` (JSON) to ``url`` in a closed
    loop for ``duration`` seconds (or ``count`` requests in all), after ``warmup`` seconds not counted."""
    return asyncio.run(_drive_async(url, body, concurrency, duration, count, warmup))


async def _drive_async(url: str, body: bytes, concurrency: int, duration: float | None, count: int | None,
                       warmup: float) -> dict[str, Any]:
    import aiohttp

    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    state = {"measuring": False, "left": count, "deadline": 0.0}

    async def one(session) -> None:
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except Exception as err:  # noqa: BLE001 (a load test counts every failure)
            status = None
            kind = type(err).__name__
        elapsed = time.perf_counter() - t0
        if not state["measuring"]:
            return
        if status == 200:
            latencies.append(elapsed)
        else:
            key = f"HTTP {status}" if status is not None else kind
            errors[key] = errors.get(key, 0) + 1

    async def worker(session, until: float | None) -> None:
        while True:
            if until is not None and time.perf_counter() >= until:
                return
            if until is None:
                if state["left"] is None or state["left"] <= 0:
                    return
                state["left"] -= 1
            await one(session)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warmup > 0:
            end = time.perf_counter() + warmup
            await asyncio.gather(*(worker(session, end) for _ in range(concurrency)))
        state["measuring"] = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        if duration is not None:
            end = t0 + duration
            await asyncio.gather(*(worker(session, end) for _ in range(concurrency)))
        else:
            await asyncio.gather(*(worker(session, None) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {"latencies": latencies, "errors": errors, "wall": wall, "client_cpu": cpu}


# -- the server -----------------------------------------------------------------------------------------------
class Server:
    """``genlab serve`` in its own session; CPU use of its processes by role; /metrics snapshots."""

    def __init__(self, export: Path, port: int, batching: bool, log_path: Path):
        self.port, self.batching = port, batching
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w+")
        command = [str(REPO / ".venv" / "bin" / "genlab"), "serve", "--model", str(export), "--port", str(port)]
        if not Path(command[0]).exists():
            command = [sys.executable, "-m", "genlab", "serve", "--model", str(export), "--port", str(port)]
        if not batching:
            command.append("--no-batching")
        # its own BENTOML_HOME: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts,
        # which would wipe the /metrics of any other server on this machine (the batching-off one, or another user's)
        home = log_path.parent / f"bentoml-home-{port}"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server on port {self.port} exited:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server on port {self.port} not ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the server's processes: HTTP front, runtime, arbiter."""
        import psutil

        out = {"front": 0.0, "front_main_thread": 0.0, "runtime": 0.0, "runtime_main_thread": 0.0, "other": 0.0}
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return out
        for p in procs:
            try:
                cmd = " ".join(p.cmdline())
                t = p.cpu_times()
                threads = p.threads()
            except psutil.Error:
                continue
            role = "runtime" if "genlab-runtime" in cmd else "front" if "--service-name genlab " in cmd + " " else "other"
            out[role] += t.user + t.system
            if role != "other":  # the thread running the event loop (and all the Python code not sent to a thread)
                out[f"{role}_main_thread"] += sum(th.user_time + th.system_time for th in threads if th.id == p.pid)
        return out

    def batch_sizes(self) -> dict[str, tuple[float, float]]:
        """method -> (sum, count) of BentoML's adaptive batch size histogram."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, list[float]] = {}
        for line in text.splitlines():
            m = re.match(r'bentoml_service_adaptive_batch_size_(sum|count)\{.*?method_name="([^"]+)".*\}\s+(\S+)', line)
            if m:
                pair = out.setdefault(m.group(2), [0.0, 0.0])
                pair[0 if m.group(1) == "sum" else 1] += float(m.group(3))
        return {k: (v[0], v[1]) for k, v in out.items()}


def _batch_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """method -> {calls, mean} of the batches formed between two /metrics snapshots."""
    out = {}
    for method, (s1, c1) in after.items():
        s0, c0 = before.get(method, (0.0, 0.0))
        if c1 - c0 > 0:
            out[method] = {"calls": int(c1 - c0), "mean": round((s1 - s0) / (c1 - c0), 2)}
    return out


# -- helpers --------------------------------------------------------------------------------------------------
def _free_port(preferred: int) -> int:
    for port in [preferred, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def _make_model(tmp: Path) -> Path:
    genlab = REPO / ".venv" / "bin" / "genlab"
    base = [str(genlab)] if genlab.exists() else [sys.executable, "-m", "genlab"]
    print("training a default-size vaegan for 20 steps and exporting it ...", file=sys.stderr, flush=True)
    for args in (["train", "vaegan", "--max-steps", "20", "--epochs", "1", "--out", str(tmp / "run")],
                 ["export", str(tmp / "run"), "--out", str(tmp / "export"), "--no-bento"]):
        r = subprocess.run(base + args, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"genlab {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return tmp / "export"


def _ort_settings(model) -> dict[str, Any]:
    import onnxruntime as ort

    session = model.graphs["decoder"].session
    opts = session.get_session_options()
    return {
        "onnxruntime": ort.__version__,
        "providers": model.providers,
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "execution_mode": str(opts.execution_mode),
        "note": "0 threads = ONNX Runtime's default (one intra-op thread per physical core); the server opens its sessions the same way",
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ORT_NUM_THREADS") if os.environ.get(k)},
    }


class Bench:
    def __init__(self, pool: concurrent.futures.Executor, duration: float):
        self.pool, self.duration = pool, duration

    def run(self, server: Server, route: str, payload: dict, concurrency: int, duration: float | None = None,
            count: int | None = None, warmup: float | None = None) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        if warmup is None:
            warmup = min(1.0, self.duration / 3)
        cpu0, b0, load0 = server.cpu(), server.batch_sizes(), _load()
        res = self.pool.submit(_drive, f"{server.url}/{route}", body, concurrency,
                               duration if count is None else None, count, warmup).result()
        # the warm-up's server CPU is excluded only approximately: snapshots bracket warm-up + measurement
        cpu1, b1 = server.cpu(), server.batch_sizes()
        lat, wall = res["latencies"], res["wall"]
        span = wall + warmup
        return {
            "route": f"/{route}", "clients": concurrency, "requests": len(lat), "errors": sum(res["errors"].values()),
            "error_kinds": res["errors"], "seconds": round(wall, 2), "req_per_s": round(len(lat) / wall, 1) if wall else 0.0,
            "p50_ms": _round(_pct(lat, 50)), "p99_ms": _round(_pct(lat, 99)), "median_s": float(np.median(lat)) if lat else None,
            "batch": _batch_delta(b0, b1),
            "cpu_cores": {k: round((cpu1[k] - cpu0[k]) / span, 2) for k in cpu1} | {"client": round(res["client_cpu"] / wall, 2) if wall else 0.0},
            "loadavg": load0,
        }


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# -- the three parts ------------------------------------------------------------------------------------------
def part_levels(bench: Bench, server: Server, payloads: dict[str, dict], levels: list[int]) -> list[dict]:
    rows = []
    for route in ENDPOINTS:
        for c in levels:
            row = bench.run(server, route, payloads[route], c, duration=bench.duration)
            rows.append(row)
            print(f"  {row['route']:15s} c={c:<3d} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']} ms  "
                  f"p99 {row['p99_ms']} ms  errors {row['errors']}  batch {row['batch']}", file=sys.stderr, flush=True)
    return rows


def part_ort_cost(model, batches: tuple[int, ...] = (1, 8, 32), runs: int = 60) -> list[dict[str, Any]]:
    """In-process ONNX Runtime time per call of each graph at a few batch sizes (median): the most that
    batching can save per request is the difference between batch 1 and the per-image cost of a batch."""
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        z = rng.standard_normal((b, model.latent_dim), dtype=np.float32)
        images = model.decode(z)
        calls = {"decode": lambda: model.decode(z), "score": lambda: model.scores(images)}
        if model.has_encoder:
            calls["encode"] = lambda: model.encode(images)
        for name, call in calls.items():
            for _ in range(5):
                call()
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rows.append({"graph": name, "batch": b, "ms_per_call": round(med * 1000, 3), "ms_per_image": round(med * 1000 / b, 3)})
    return rows


def part_generate64(bench: Bench, server: Server, model, blocks: int, per_block: int) -> dict[str, Any]:
    seed = 0
    latents = np.random.default_rng(seed).standard_normal((GEN_BIG, model.latent_dim), dtype=np.float32)
    reference = model.decode(latents)
    # same images over HTTP as in-process (the server draws the latents from the seed the same way)
    with urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/generate", data=json.dumps({"n": GEN_BIG, "seed": seed, "format": "npy"}).encode(),
            headers={"content-type": "application/json"}), timeout=60) as r:
        served = np.load(io.BytesIO(r.read()), allow_pickle=False)
    same = bool(served.shape == reference.shape and np.array_equal(served, reference))
    for _ in range(5):
        model.decode(latents)
    inproc: list[float] = []
    http: dict[str, list[float]] = {"npy": [], "png": []}
    errors = 0
    load0 = _load()
    for _ in range(blocks):
        for _ in range(per_block):
            t0 = time.perf_counter()
            model.decode(latents)
            inproc.append(time.perf_counter() - t0)
        for fmt in ("npy", "png"):
            res = bench.pool.submit(_drive, f"{server.url}/generate",
                                    json.dumps({"n": GEN_BIG, "seed": seed, "format": fmt}).encode(), 1, None, per_block, 0.0).result()
            http[fmt] += res["latencies"]
            errors += sum(res["errors"].values())
    med = {"inproc": statistics.median(inproc), **{f"http_{k}": statistics.median(v) for k, v in http.items() if v}}
    ips = {k: GEN_BIG / v for k, v in med.items()}
    return {
        "n": GEN_BIG, "same_images": same, "calls_each": len(inproc), "errors": errors, "loadavg": load0,
        "median_ms": {k: round(v * 1000, 2) for k, v in med.items()},
        "images_per_s": {k: round(v, 1) for k, v in ips.items()},
        "ratio_http_npy_vs_inproc": round(ips.get("http_npy", 0.0) / ips["inproc"], 3),
        "ratio_http_png_vs_inproc": round(ips.get("http_png", 0.0) / ips["inproc"], 3),
        "target": 0.5,
    }


def part_batching(bench: Bench, on: Server, off: Server, payload: dict, clients: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(rounds):
        for key, server in (("on", on), ("off", off)):
            row = bench.run(server, "reconstruct", payload, clients, duration=bench.duration)
            runs[key].append(row)
            print(f"  batching {key:3s} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']} ms  errors {row['errors']}  "
                  f"batch {row['batch']}  cpu {row['cpu_cores']}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"clients": clients, "rounds": rounds, "target": 3.0}
    for key, rows in runs.items():
        summary[key] = {
            "req_per_s": round(statistics.median(r["req_per_s"] for r in rows), 1),
            "req_per_s_rounds": [r["req_per_s"] for r in rows],
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rows if r["p50_ms"] is not None), 1),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rows if r["p99_ms"] is not None), 1),
            "errors": sum(r["errors"] for r in rows),
            "batch": _merge_batches([r["batch"] for r in rows]),
            "cpu_cores": {k: round(statistics.median(r["cpu_cores"][k] for r in rows), 2) for k in rows[0]["cpu_cores"]},
        }
    summary["ratio_on_vs_off"] = round(summary["on"]["req_per_s"] / summary["off"]["req_per_s"], 2) if summary["off"]["req_per_s"] else None
    return summary


def _merge_batches(batches: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {}
    for b in batches:
        for method, v in b.items():
            acc = out.setdefault(method, [0.0, 0.0])
            acc[0] += v["mean"] * v["calls"]
            acc[1] += v["calls"]
    return {m: {"calls": int(c), "mean": round(s / c, 2)} for m, (s, c) in out.items() if c}


# -- output ---------------------------------------------------------------------------------------------------
def _fmt_batch(batch: dict) -> str:
    return ", ".join(f"{m} {v['mean']:g}" for m, v in sorted(batch.items())) or "-"


def _fmt_cpu(cpu: dict) -> str:
    return (f"{cpu['front']:.2f} ({cpu['front_main_thread']:.2f}) / {cpu['runtime']:.2f} ({cpu['runtime_main_thread']:.2f})"
            f" / {cpu['client']:.2f}")


def render(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# genlab serve load test ({meta['date']}, {meta['host']}, {meta['cpus']} CPUs, model {meta['model_name']})", "",
             f"ONNX Runtime {meta['ort']['onnxruntime']} {sorted(set(meta['ort']['providers'].values()))}, "
             f"intra-op threads {meta['ort']['intra_op_num_threads']} (0 = one per physical core), inter-op "
             f"{meta['ort']['inter_op_num_threads']}; thread env {meta['ort']['env'] or 'unset'}; bentoml {meta['bentoml']}; "
             f"{meta['duration']} s per level after a {meta['warmup']} s warm-up; one client process (asyncio + aiohttp).", "",
             "## 1. One image per request", "",
             "| endpoint | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch per runtime call | CPU cores front (main thread) / runtime (main thread) / client | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in result["levels"]:
        err = str(r["errors"]) + (f" {r['error_kinds']}" if r["errors"] else "")
        lines.append(f"| {r['route']} | {r['clients']} | {r['requests']} | {err} | {r['req_per_s']:.1f} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {_fmt_batch(r['batch'])} | {_fmt_cpu(r['cpu_cores'])} | {r['loadavg'][0]} |")
    g = result["generate64"]
    lines += ["", f"## 2. /generate n={g['n']}: HTTP vs in-process ONNX Runtime", "",
              "| path | median ms per call | images/s | vs in-process |", "|---|---:|---:|---:|",
              f"| in-process `open_export(...).decode(z)` | {g['median_ms']['inproc']} | {g['images_per_s']['inproc']:.0f} | 1 |",
              f"| HTTP format=npy | {g['median_ms'].get('http_npy')} | {g['images_per_s'].get('http_npy', 0):.0f} | **{g['ratio_http_npy_vs_inproc']}** (target >= {g['target']}) |",
              f"| HTTP format=png (grid, for information) | {g['median_ms'].get('http_png')} | {g['images_per_s'].get('http_png', 0):.0f} | {g['ratio_http_png_vs_inproc']} |",
              "", f"{g['calls_each']} calls each, alternating in blocks; HTTP errors {g['errors']}; same images over HTTP as in-process: "
              f"{g['same_images']}; load avg {g['loadavg']}."]
    b = result["batching"]
    lines += ["", f"## 3. /reconstruct, 1 image, {b['clients']} clients: adaptive batching on vs off", "",
              "| batching | req/s (median of rounds) | rounds | p50 ms | p99 ms | errors | mean batch per runtime call | CPU cores front (main thread) / runtime (main thread) / client |",
              "|---|---:|---|---:|---:|---:|---|---|"]
    for key in ("on", "off"):
        s = b[key]
        lines.append(f"| {key} | {s['req_per_s']:.1f} | {s['req_per_s_rounds']} | {s['p50_ms']} | {s['p99_ms']} | {s['errors']} | "
                     f"{_fmt_batch(s['batch'])} | {_fmt_cpu(s['cpu_cores'])} |")
    lines += ["", f"ratio on / off: **{b['ratio_on_vs_off']}** (target >= {b['target']}); load avg before {b['loadavg_before']}, after {b['loadavg_after']}.",
              "", f"Load average (1/5/15 min): start {meta['loadavg_start']}, end {meta['loadavg_end']}; total {meta['seconds']} s. "
              "CPU cores = CPU seconds of those processes / wall seconds of the level (server figures include the warm-up); "
              "main thread = the thread running the process's event loop (HTTP, (de)serialisation, batching dispatch, "
              "response encoding); the rest of the runtime's CPU is ONNX Runtime and its thread pool."]
    lines[-2:-2] = ["", "## 4. In-process ONNX Runtime cost per call (what batching can save)", "",
                    "| graph | batch | ms per call | ms per image |", "|---|---:|---:|---:|",
                    *(f"| {r['graph']} | {r['batch']} | {r['ms_per_call']} | {r['ms_per_image']} |" for r in result["ort_cost"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train and export a default-size vaegan)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per concurrency level (default 3)")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent clients, comma-separated (default 1,8,32,64)")
    parser.add_argument("--port", type=int, default=3100, help="port of the batching server; the --no-batching one uses the next free")
    parser.add_argument("--batching-clients", type=int, default=32)
    parser.add_argument("--batching-rounds", type=int, default=3, help="alternating on/off rounds (default 3)")
    parser.add_argument("--gen-blocks", type=int, default=5, help="blocks of the n=64 comparison (default 5)")
    parser.add_argument("--gen-per-block", type=int, default=10, help="calls per block and path (default 10)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the servers' logs into DIR")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables then go to stderr)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    import bentoml

    from export.reader import open_export

    started, load_start = time.perf_counter(), _load()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="genlab-serve-load-")
    tmp = Path(tmp_ctx.name)
    servers: list[Server] = []
    ctx = multiprocessing.get_context("spawn")
    try:
        export = args.model or _make_model(tmp)
        model = open_export(export, "cpu")
        cal = model.calibration
        c, h, w = model.image_shape
        digit = model.decode(np.random.default_rng(1).standard_normal((1, model.latent_dim), dtype=np.float32)).tolist()
        assert np.asarray(digit).shape == (1, c, h, w)
        payloads = {
            "generate": {"n": 1, "seed": 7, "format": "npy"},
            "reconstruct": {"array": digit, "format": "array"},
            "anomaly-score": {"array": digit} if cal else {"array": digit, "threshold": RAW_THRESHOLD},
        }
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "bentoml": bentoml.__version__, "model": str(export), "model_name": model.name,
            "family": model.family, "image_shape": [c, h, w], "latent_dim": model.latent_dim, "calibrated": bool(cal),
            "ort": _ort_settings(model), "duration": args.duration, "warmup": round(min(1.0, args.duration / 3), 2),
            "levels": levels, "payloads": {k: {kk: (vv if kk != "array" else "uint8 [1, C, H, W]") for kk, vv in v.items()} for k, v in payloads.items()},
            "loadavg_start": load_start,
        }
        print(f"load average {load_start}; starting the server (batching on) ...", file=sys.stderr, flush=True)
        on = Server(export, _free_port(args.port), True, tmp / "serve-on.log")
        servers.append(on)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            pool.submit(time.sleep, 0).result()  # start the client process now
            on.wait_ready()
            bench = Bench(pool, args.duration)
            for route, payload in payloads.items():  # every path once before measuring
                bench.run(on, route, payload, 2, count=8, warmup=0.0)
            ort_cost = part_ort_cost(model)
            print("part 1: one image per request", file=sys.stderr, flush=True)
            levels_rows = part_levels(bench, on, payloads, levels)
            print("part 2: generate n=64 HTTP vs in-process", file=sys.stderr, flush=True)
            gen = part_generate64(bench, on, model, args.gen_blocks, args.gen_per_block)
            print(f"  {gen['images_per_s']} ratio {gen['ratio_http_npy_vs_inproc']}", file=sys.stderr, flush=True)
            print("part 3: batching on vs off (starting a --no-batching server)", file=sys.stderr, flush=True)
            off = Server(export, _free_port(on.port + 1), False, tmp / "serve-off.log")
            servers.append(off)
            off.wait_ready()
            bench.run(off, "reconstruct", payloads["reconstruct"], 2, count=8, warmup=0.0)
            load_b = _load()
            batching = part_batching(bench, on, off, payloads["reconstruct"], args.batching_clients, args.batching_rounds)
            batching["loadavg_before"], batching["loadavg_after"] = load_b, _load()
        meta["loadavg_end"] = _load()
        meta["seconds"] = round(time.perf_counter() - started, 1)
        for r in levels_rows:
            r.pop("median_s", None)
        result = {"meta": meta, "ort_cost": ort_cost, "levels": levels_rows, "generate64": gen, "batching": batching}
        for s in servers:  # what the server logged about failures (the request log lines of non-200s included)
            text = s.tail(10**8)
            hits = [line for line in text.splitlines()
                    if re.search(r"Traceback|Error|Exception|retrying| 50[0-9] |timed? ?out", line, re.IGNORECASE)]
            if hits:
                result.setdefault("server_log_problems", {})[f"batching {'on' if s.batching else 'off'}"] = hits[-40:]
    finally:
        for s in servers:
            s.stop()
        if args.keep_logs:
            import shutil

            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("serve-*.log"):
                shutil.copy(log, args.keep_logs / log.name)
            print(f"server logs kept in {args.keep_logs}", file=sys.stderr)
        tmp_ctx.cleanup()
    table = render(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(table)
    if "server_log_problems" in result:
        print("server log lines about failures:", json.dumps(result["server_log_problems"], indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
