"""/anomaly-score on one image with and without its anomaly map, against a real ``genlab serve``, per image size.

Server: one ``genlab serve --model EXPORT`` (default settings, one worker, GENLAB_API_KEY unset), started from the
repository root. Client: this process, one request at a time on one kept-alive HTTP/1.1 connection (http.client):
``POST /anomaly-score`` with one image as a JSON ``array`` (a sample the server draws first with ``/generate``),
``maps=false`` against ``maps=true`` (``maps_format=png``). After a warm-up of each (not counted), ``--rounds`` rounds
(default 5) of ``--requests`` requests (default 100) per kind, the two kinds alternating request by request and the
first kind alternating from round to round; latency is the client's, from sending to the end of the answer. Before
measuring, both answers are checked once: status 200, the same scores, the map only with maps=true, a PNG of the
image's size. Printed: each kind's median and 90th percentile over all its requests, each round's ratio of medians,
the ratio of the overall medians (target: maps <= 1.3x without) and the PNG map's bytes. Beside it, in this process,
the score graph's own call on the same image (``ExportedModel.scores``, ONNX Runtime on one thread) with and without
the map asked for, alternating, ``--rounds`` x ``--calls`` calls each: its median. No figure is asserted.

``--model EXPORT`` measures one export. ``--sizes 64,128,256`` measures one model per size instead: for each size,
a folder of ``--channels``-channel generated textures (``benchmarks/textures.py``, SIZE_MODEL_IMAGES images) in a
temporary directory, ``genlab train FAMILY --dataset folder:PATH --epochs 1 --set image_size=SIZE --set
channels=C --set anomaly_map=local`` (a complete run, so calibrated: the local anomaly map of the inspection path,
genlab.models.local_map) and ``genlab export RUN --out DIR --no-bento``; then the measurement above on that export,
one table row per size. A size whose training or export fails is a row with the command's error line (and the
script exits with status 1 after measuring the other sizes).

Run (from anywhere; ~15 s on 2 cores with the defaults, the server's start included; with --sizes, each size adds
its training and export, 30-80 s, and a larger image makes every request slower: lower --requests and --calls):
    .venv/bin/python benchmarks/maps_latency.py [--model EXPORT_DIR] [--requests 100] [--rounds 5] [--calls 200]
        [--port 3400]
    .venv/bin/python benchmarks/maps_latency.py --sizes 64,128,256 [--channels 3] [--family vae] [--requests 20]
        [--rounds 3] [--calls 20] [--warmup 5]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import Server, _free_port, _load, genlab  # noqa: E402
from benchmarks.textures import write_textures  # noqa: E402
from genlab.families import FAMILIES  # noqa: E402

DEFAULT_MODEL = REPO / "runs" / "quickstart-vaegan" / "export"
TARGET = 1.3  # maps=true may take at most this many times the latency of maps=false
KINDS = ("plain", "maps")  # maps=false, maps=true
SIZE_MODEL_IMAGES = 160  # a size model's folder: 144 training images (2 batches of 64), 8 val, 8 test


@dataclass(frozen=True)
class Latency:
    """One export's figures: client latency per kind (seconds), per-round ratios, the map's PNG bytes and the score
    graph's own call in-process (seconds)."""

    export: Path
    manifest: dict
    every: dict[str, list[float]]  # per kind, every measured request
    per_round: list[float]  # per round: median maps=true / median maps=false
    map_png_bytes: int
    graph: dict[str, float]  # per kind, the median in-process call
    load: tuple[list[float], list[float]]  # load average before and after

    def median(self, kind: str) -> float:
        return statistics.median(self.every[kind])

    def p90(self, kind: str) -> float:
        return float(np.percentile(self.every[kind], 90))

    @property
    def ratio(self) -> float:
        return self.median("maps") / self.median("plain")

    @property
    def shape(self) -> str:
        image = self.manifest["image"]
        return f"{image['channels']}x{image['height']}x{image['width']}"


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, int, bytes]:
    """One request on the kept-alive connection: (seconds, status, body)."""
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return time.perf_counter() - start, response.status, data


def _in_process(export: Path, image: np.ndarray, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds of the score graph's call on ``image`` without and with the map, alternating call by call."""
    from genlab.export.reader import open_export

    model = open_export(export, providers="cpu", threads=1)
    times: dict[str, list[float]] = {"plain": [], "maps": []}
    for r in range(rounds + 1):  # the first round warms up
        for _ in range(calls):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                start = time.perf_counter()
                model.scores(image, maps=kind == "maps")
                if r:
                    times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def _check(without: bytes, with_maps: bytes, shape: tuple[int, ...]) -> int:
    """Both answers agree and the map is a PNG of the image's size; returns the PNG's bytes."""
    from PIL import Image

    a, b = json.loads(without)["results"][0], json.loads(with_maps)["results"][0]
    if "anomaly_map" in a or a["components"] != b["components"]:
        raise SystemExit("maps=false answered a map, or its scores differ from maps=true's")
    png = base64.b64decode(b["anomaly_map"])
    image = Image.open(io.BytesIO(png))
    if image.size != (shape[-1], shape[-2]):
        raise SystemExit(f"the map is a {image.size} PNG, the image is {shape}")
    return len(png)


def measure(export: Path, args: argparse.Namespace) -> Latency:
    """Serve ``export``, measure /anomaly-score with and without maps, then the score graph in-process."""
    manifest = json.loads((export / "manifest.json").read_text())
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="genlab-maps-") as tmp:
        server = Server(genlab(), export.resolve(), _free_port(args.port), Path(tmp))
        try:
            server.wait_ready()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            _, status, drawn = _post(conn, "/generate", json.dumps({"n": 1, "seed": 0, "format": "array"}).encode())
            if status != 200:
                raise SystemExit(f"/generate answered {status}: {drawn[:300]!r}")
            image = json.loads(drawn)["images"]
            bodies = {
                kind: json.dumps({"array": image, "maps": kind == "maps", "maps_format": "png"}).encode()
                for kind in KINDS
            }
            answers = {}
            for kind, body in bodies.items():
                _, status, answers[kind] = _post(conn, "/anomaly-score", body)
                if status != 200:
                    raise SystemExit(f"/anomaly-score ({kind}) answered {status}: {answers[kind][:300]!r}")
            png_bytes = _check(answers["plain"], answers["maps"], np.asarray(image).shape)
            for _ in range(args.warmup):
                for body in bodies.values():
                    _post(conn, "/anomaly-score", body)
            times: dict[str, list[list[float]]] = {"plain": [], "maps": []}
            for r in range(args.rounds):
                order = KINDS if r % 2 == 0 else KINDS[::-1]
                for kind in order:
                    times[kind].append([])
                for _ in range(args.requests):
                    for kind in order:
                        seconds, status, data = _post(conn, "/anomaly-score", bodies[kind])
                        if status != 200:
                            raise SystemExit(f"/anomaly-score ({kind}) answered {status}: {data[:300]!r}")
                        times[kind][-1].append(seconds)
            conn.close()
        finally:
            server.stop()
    graph = _in_process(export, np.asarray(image, np.uint8), args.rounds, args.calls)
    return Latency(
        export=export,
        manifest=manifest,
        every={kind: [t for round_ in rounds for t in round_] for kind, rounds in times.items()},
        per_round=[statistics.median(m) / statistics.median(p) for p, m in zip(times["plain"], times["maps"])],
        map_png_bytes=png_bytes,
        graph=graph,
        load=(load_before, _load()),
    )


class SizeFailed(Exception):
    """A size whose model could not be trained or exported: the command's last error line."""


def _genlab(argv: list[str]) -> None:
    """Run one genlab command to its end; SizeFailed with its last error line if it fails."""
    done = subprocess.run([sys.executable, "-m", "genlab", *argv], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise SizeFailed(lines[-1] if lines else f"genlab {argv[0]} exited with status {done.returncode}")


def size_export(size: int, channels: int, family: str, scratch: Path) -> tuple[Path, float]:
    """A calibrated export of a ``family`` model of ``channels`` x ``size`` x ``size`` with the local anomaly map,
    trained one epoch on generated textures under ``scratch``; and the seconds its training and export took. Raises
    SizeFailed where either command fails."""
    start = time.perf_counter()
    folder = write_textures(scratch / f"textures-{size}px-{channels}ch", size, channels, SIZE_MODEL_IMAGES)
    run, export = scratch / f"run-{family}-{size}px", scratch / f"export-{family}-{size}px"
    shape = ["--set", f"image_size={size}", "--set", f"channels={channels}", "--set", "anomaly_map=local"]
    train = ["train", family, "--dataset", f"folder:{folder}", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    _genlab([*train, *shape])
    _genlab(["export", str(run), "--out", str(export), "--no-bento"])
    return export, time.perf_counter() - start


def versions() -> str:
    return f"onnxruntime {metadata.version('onnxruntime')}, bentoml {metadata.version('bentoml')}"


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def print_one(m: Latency, args: argparse.Namespace) -> None:
    print(f"# {now()}; {m.export} ({m.manifest['family']}, {m.shape}); {versions()}; load {m.load[0]} -> {m.load[1]}")
    print(f"# one client, one image per request, {args.rounds} rounds x {args.requests} requests per kind")
    print("| /anomaly-score | median | p90 |")
    print("| --- | ---: | ---: |")
    for kind, label in (("plain", "maps=false"), ("maps", "maps=true (png)")):
        print(f"| {label} | {m.median(kind) * 1e3:.2f} ms | {m.p90(kind) * 1e3:.2f} ms |")
    rounds = ", ".join(f"{x:.2f}" for x in m.per_round)
    print(f"maps / without: {m.ratio:.2f}x (target <= {TARGET}x); per round: {rounds}; PNG map {m.map_png_bytes} bytes")
    print(
        f"in-process score graph, one image, one thread: {m.graph['plain'] * 1e3:.3f} ms without the map, "
        f"{m.graph['maps'] * 1e3:.3f} ms with it ({m.graph['maps'] / m.graph['plain']:.2f}x)"
    )


def print_sizes(
    rows: list[tuple[int, Latency | SizeFailed, float]], args: argparse.Namespace, load: list[float]
) -> None:
    print(
        f"# {now()}; {os.cpu_count()} CPUs; {args.family}, anomaly_map=local, one epoch on {SIZE_MODEL_IMAGES} "
        f"generated textures per size; {versions()}; load {load} -> {_load()}"
    )
    print(
        f"# one client, one image per request, {args.rounds} rounds x {args.requests} requests per kind; "
        f"score graph in-process: one thread, {args.rounds} x {args.calls} calls per kind"
    )
    print(
        "| image | maps=false median | p90 | maps=true (png) median | p90 | maps / without | per round "
        "| PNG map bytes | score graph without / with map | train + export s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for size, m, seconds in rows:
        if isinstance(m, SizeFailed):
            print(f"| {args.channels}x{size}x{size} | {m} |{' - |' * 8} {seconds:.0f} |")
            continue
        ms = {kind: (m.median(kind) * 1e3, m.p90(kind) * 1e3) for kind in KINDS}
        print(
            f"| {m.shape} | {ms['plain'][0]:.2f} ms | {ms['plain'][1]:.2f} ms | {ms['maps'][0]:.2f} ms "
            f"| {ms['maps'][1]:.2f} ms | {m.ratio:.2f}x | {', '.join(f'{x:.2f}' for x in m.per_round)} "
            f"| {m.map_png_bytes} | {m.graph['plain'] * 1e3:.2f} / {m.graph['maps'] * 1e3:.2f} ms | {seconds:.0f} |"
        )
    print(f"target: maps <= {TARGET}x the latency without")


def comma_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes, got {text!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="export directory (default: %(default)s)")
    parser.add_argument(
        "--sizes", type=comma_ints, help="train, export and measure one model per size instead of --model"
    )
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3], help="--sizes: image channels")
    parser.add_argument("--family", default="vae", choices=list(FAMILIES), help="--sizes: the models' family")
    parser.add_argument("--requests", type=int, default=100, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=30, help="requests per kind before measuring")
    parser.add_argument("--calls", type=int, default=200, help="in-process score-graph calls per kind and round")
    parser.add_argument("--port", type=int, default=3400)
    args = parser.parse_args()
    if args.sizes:
        load = _load()
        rows: list[tuple[int, Latency | SizeFailed, float]] = []
        with tempfile.TemporaryDirectory(prefix="genlab-maps-sizes-") as scratch:
            for size in args.sizes:
                start = time.perf_counter()
                try:
                    export, seconds = size_export(size, args.channels, args.family, Path(scratch))
                except SizeFailed as failed:  # one row says why; the other sizes are still measured
                    rows.append((size, failed, time.perf_counter() - start))
                    continue
                rows.append((size, measure(export, args), seconds))
        print_sizes(rows, args, load)
        return 1 if any(isinstance(m, SizeFailed) for _, m, _ in rows) else 0
    if not (args.model / "manifest.json").is_file():
        raise SystemExit(
            f"no genlab export at {args.model}: pass --model EXPORT_DIR (made by `genlab export RUN --out DIR`; "
            "bash scripts/quickstart.sh makes runs/quickstart-vaegan/export) or --sizes"
        )
    print_one(measure(args.model, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
