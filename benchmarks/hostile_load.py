"""What a hostile client can do to one ``genlab serve`` worker: event-loop freezes and memory per body.

Servers: ``genlab serve --model EXPORT`` (one worker, default limits) from this tree and, with
``--before GIT_REF``, from a git worktree of that revision, one after the other, same machine and
client. For each:

1. **Liveness under maximal uploads.** Two client threads post uploads back to back to
   ``/anomaly-score`` for ``--seconds`` seconds while a third polls ``GET /livez`` every 50 ms:
   (a) the flood: 256 blank 4096x4096 PNGs (16 KB each on the wire, 4.3 G pixels decoded); (b) the
   largest upload the pixel budget admits, 16 blank 2048x2048 PNGs (64 Mi pixels). Printed: /livez
   p50 / p99 / max latency, the uploads' statuses and latencies. Target: /livez p99 < 1 s.
2. **Memory per body.** Idle RSS of the worker (VmRSS of the server's processes), then four
   concurrent 30 MiB JSON ``array`` bodies (each under the 32 MiB body limit) to /anomaly-score,
   RSS sampled every 10 ms; then four concurrent maximal *valid* JSON bodies (256 images of the
   model's shape). Printed: idle and peak MiB and peak / idle. Target: peak <= 2x idle.

Without ``--model``, a default-size VAE-GAN is trained for 20 steps and exported (as
``benchmarks/serve_load.py`` does; the weights do not matter here).

Run (from anywhere; ~2-4 minutes on 2 cores):
    .venv/bin/python benchmarks/hostile_load.py [--model EXPORT_DIR] [--before GIT_REF] [--seconds 8] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.serve_load import (
    Bench,
    Spec,
    _free_port,
    _machine,
    _make_model,
    _ms,
    _prepare,
    _say,
    _table,  # noqa: E402
    checkout,
)


def blank_png(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes((side + 1) * side), 9))
        + chunk(b"IEND", b"")
    )


UPLOADS = {"flood: 256 x 4096x4096 PNG": (256, 4096), "budget: 16 x 2048x2048 PNG": (16, 2048)}


def liveness(url: str, count: int, side: int, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    files = [("images", (f"{i}.png", blank_png(side))) for i in range(count)]
    form = {k: str(v) for k, v in extra.items()}
    stop = threading.Event()
    uploads: list[tuple[int, float]] = []

    def uploader() -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    status = client.post(f"{url}/anomaly-score", files=files, data=form).status_code
                except httpx.HTTPError:
                    status = 0
                uploads.append((status, time.perf_counter() - start))

    probes: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool, httpx.Client(timeout=300) as probe:
        running = [pool.submit(uploader) for _ in range(2)]
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            probe.get(f"{url}/livez")
            probes.append(time.perf_counter() - start)
            time.sleep(0.05)
        stop.set()
        for future in running:
            future.result()
    statuses: dict[str, int] = {}
    for status, _ in uploads:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "livez": {"n": len(probes), "p50_ms": _ms(probes, 50), "p99_ms": _ms(probes, 99), "max_ms": _ms(probes, 100)},
        "uploads": {"n": len(uploads), "statuses": statuses, "p50_ms": _ms([t for _, t in uploads], 50)},
    }


def peak_rss(server: Any, send: Callable[[], list[int]]) -> tuple[float, list[int]]:
    """``send()`` while the server's RSS is sampled every 10 ms: (peak MiB, what ``send`` returned)."""
    peak, done = [server.rss_kib()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(server.rss_kib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = send()
    finally:
        done.set()
        sampler.join()
    return round(max(peak) / 1024, 1), result


def memory(server: Any, image_shape: tuple[int, ...], extra: dict[str, Any], max_images: int = 256) -> dict[str, Any]:
    hostile = b'{"array": [' + b"0," * (15 << 20) + b"0]}"  # 30 MiB
    valid = json.dumps({"array": np.zeros((max_images, *image_shape), np.uint8).tolist(), **extra}).encode()

    def four(body: bytes) -> Callable[[], list[int]]:
        def send() -> list[int]:
            with httpx.Client(timeout=300) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:

                def post(_: int) -> int:
                    return client.post(
                        f"{server.url}/anomaly-score",
                        content=body,
                        headers={"content-type": "application/json"},
                    ).status_code

                return list(pool.map(post, range(4)))

        return send

    time.sleep(1)
    idle = round(server.rss_kib() / 1024, 1)
    hostile_peak, hostile_statuses = peak_rss(server, four(hostile))
    valid_peak, valid_statuses = peak_rss(server, four(valid))
    return {
        "idle_mib": idle,
        "hostile_30mib_json": {
            "peak_mib": hostile_peak,
            "ratio": round(hostile_peak / idle, 2),
            "statuses": hostile_statuses,
        },
        "valid_full_batch_json": {
            "bytes": len(valid),
            "peak_mib": valid_peak,
            "ratio": round(valid_peak / idle, 2),
            "statuses": valid_statuses,
        },
    }


def measure(bench: Bench, spec: Spec, image_shape: tuple[int, ...], seconds: float) -> dict[str, Any]:
    # a model without calibration (a --max-steps run) is scored against a raw threshold: the work is the same
    extra = {"threshold": 1.0} if bench.payloads["raw_threshold"] else {}
    with bench.serving(spec) as up:
        server = up.get(spec.label)
        if server is None:
            return {"failed": bench.failures.get(spec.label)}
        out: dict[str, Any] = {"memory": memory(server, image_shape, extra)}  # first: idle RSS before any upload
        for name, (count, side) in UPLOADS.items():
            _say(f"  {spec.label}: {name} for {seconds:g} s ...")
            out[name] = liveness(server.url, count, side, seconds, extra)
        return out


def render(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        f"# genlab serve under hostile uploads ({m['date']})",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Machine: {m['host']}, {m['cpus']} CPUs; model {result['model']}; {result['seconds']} s per upload kind, "
        "two upload clients back to back, /livez every 50 ms.",
        "",
        "## 1. /livez while uploads are processed",
        "",
    ]
    rows = []
    for label, res in result["servers"].items():
        for name in UPLOADS:
            cell = res.get(name)
            if cell:
                live, up = cell["livez"], cell["uploads"]
                rows.append(
                    [
                        f"`{label}`",
                        name,
                        live["n"],
                        live["p50_ms"],
                        live["p99_ms"],
                        live["max_ms"],
                        up["n"],
                        json.dumps(up["statuses"]),
                        up["p50_ms"],
                    ]
                )
    lines += _table(
        ["server", "uploads", "probes", "p50 ms", "p99 ms", "max ms", "uploads done", "statuses", "upload p50 ms"], rows
    )
    lines += ["", "## 2. Worker RSS, four concurrent bodies", ""]
    rows = [
        [
            f"`{label}`",
            r["memory"]["idle_mib"],
            f"{r['memory']['hostile_30mib_json']['peak_mib']} "
            f"({r['memory']['hostile_30mib_json']['ratio']}x) {r['memory']['hostile_30mib_json']['statuses']}",
            f"{r['memory']['valid_full_batch_json']['peak_mib']} ({r['memory']['valid_full_batch_json']['ratio']}x) "
            f"{r['memory']['valid_full_batch_json']['statuses']}",
        ]
        for label, r in result["servers"].items()
        if "memory" in r
    ]
    lines += _table(
        ["server", "idle MiB", "peak MiB, 30 MiB JSON bodies (statuses)", "peak MiB, full valid batches"], rows
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train and export a default-size vaegan)")
    parser.add_argument("--before", metavar="GIT_REF", help="also measure genlab serve at this revision")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of uploads per kind (default 8)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    meta = _machine()
    with tempfile.TemporaryDirectory(prefix="genlab-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        export = args.model or _make_model(tmp)
        bench = Bench(export, tmp, concurrent.futures.ThreadPoolExecutor(1), _free_port(3200), 1.0, 0.0)
        model = _prepare(bench)  # the payloads and reference images each server's answers are checked against first
        servers: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            specs = [Spec("genlab serve (this tree)", "genlab")]
            if args.before:
                specs.insert(
                    0,
                    Spec(
                        f"genlab serve at {args.before}", "genlab", tree=stack.enter_context(checkout(args.before, tmp))
                    ),
                )
            for spec in specs:
                servers[spec.label] = measure(bench, spec, tuple(model["image_shape"]), args.seconds)
    result = {
        "meta": meta,
        "model": f"{model['name']} {model['image_shape']}",
        "seconds": args.seconds,
        "servers": servers,
    }
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
