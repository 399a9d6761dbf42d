"""/anomaly-score on one image with and without its anomaly map, against a real ``genlab serve``.

Server: one ``genlab serve --model EXPORT`` (default settings, one worker, GENLAB_API_KEY unset), started from the
repository root. Client: this process, one request at a time on one kept-alive HTTP/1.1 connection (http.client):
``POST /anomaly-score`` with one image as a JSON ``array`` (a sample the server draws first with ``/generate``),
``maps=false`` against ``maps=true`` (``maps_format=png``). After a warm-up of each (not counted), ``--rounds`` rounds
(default 5) of ``--requests`` requests (default 100) per kind, the two kinds alternating request by request and the
first kind alternating from round to round; latency is the client's, from sending to the end of the answer. Before
measuring, both answers are checked once: status 200, the same scores, the map only with maps=true, a PNG of the
image's size. Printed: each kind's median and 90th percentile over all its requests, each round's ratio of medians,
and the ratio of the overall medians (target: maps <= 1.3x without). Beside it, in this process, the score graph's
own call on the same image (``ExportedModel.scores``, ONNX Runtime on one thread) with and without the map asked
for, alternating, ``--rounds`` x ``--calls`` calls each: its median. No figure is asserted.

Run (from anywhere; ~15 s on 2 cores with the defaults, the server's start included):
    .venv/bin/python benchmarks/maps_latency.py [--model EXPORT_DIR] [--requests 100] [--rounds 5] [--calls 200]
        [--port 3400]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import Server, _free_port, _load, genlab  # noqa: E402

DEFAULT_MODEL = REPO / "runs" / "quickstart-vaegan" / "export"
TARGET = 1.3  # maps=true may take at most this many times the latency of maps=false


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
            for kind in ("plain", "maps") if r % 2 == 0 else ("maps", "plain"):
                start = time.perf_counter()
                model.scores(image, maps=kind == "maps")
                if r:
                    times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def _check(without: bytes, with_maps: bytes, shape: tuple[int, ...]) -> None:
    from PIL import Image

    a, b = json.loads(without)["results"][0], json.loads(with_maps)["results"][0]
    if "anomaly_map" in a or a["components"] != b["components"]:
        raise SystemExit("maps=false answered a map, or its scores differ from maps=true's")
    image = Image.open(io.BytesIO(base64.b64decode(b["anomaly_map"])))
    if image.size != (shape[-1], shape[-2]):
        raise SystemExit(f"the map is a {image.size} PNG, the image is {shape}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="export directory (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=100, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=30, help="requests per kind before measuring")
    parser.add_argument("--calls", type=int, default=200, help="in-process score-graph calls per kind and round")
    parser.add_argument("--port", type=int, default=3400)
    args = parser.parse_args()
    if not (args.model / "manifest.json").is_file():
        raise SystemExit(
            f"no genlab export at {args.model}: pass --model EXPORT_DIR (made by `genlab export RUN --out DIR`; "
            "bash scripts/quickstart.sh makes runs/quickstart-vaegan/export)"
        )
    manifest = json.loads((args.model / "manifest.json").read_text())
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="genlab-maps-") as tmp:
        server = Server(genlab(), args.model.resolve(), _free_port(args.port), Path(tmp))
        try:
            server.wait_ready()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            _, status, drawn = _post(conn, "/generate", json.dumps({"n": 1, "seed": 0, "format": "array"}).encode())
            if status != 200:
                raise SystemExit(f"/generate answered {status}: {drawn[:300]!r}")
            image = json.loads(drawn)["images"]
            bodies = {
                kind: json.dumps({"array": image, "maps": kind == "maps", "maps_format": "png"}).encode()
                for kind in ("plain", "maps")
            }
            answers = {}
            for kind, body in bodies.items():
                _, status, answers[kind] = _post(conn, "/anomaly-score", body)
                if status != 200:
                    raise SystemExit(f"/anomaly-score ({kind}) answered {status}: {answers[kind][:300]!r}")
            _check(answers["plain"], answers["maps"], np.asarray(image).shape)
            for _ in range(args.warmup):
                for body in bodies.values():
                    _post(conn, "/anomaly-score", body)
            times: dict[str, list[list[float]]] = {"plain": [], "maps": []}
            for r in range(args.rounds):
                order = ("plain", "maps") if r % 2 == 0 else ("maps", "plain")
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

    graph = _in_process(args.model, np.asarray(image, np.uint8), args.rounds, args.calls)
    every = {kind: [t for round_ in rounds for t in round_] for kind, rounds in times.items()}
    median = {kind: statistics.median(t) for kind, t in every.items()}
    per_round = [statistics.median(m) / statistics.median(p) for p, m in zip(times["plain"], times["maps"])]
    ratio = median["maps"] / median["plain"]
    print(
        f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; {args.model} "
        f"({manifest['family']}, {manifest['image']['channels']}x{manifest['image']['height']}x"
        f"{manifest['image']['width']}); onnxruntime {metadata.version('onnxruntime')}, "
        f"bentoml {metadata.version('bentoml')}; load {load_before} -> {_load()}"
    )
    print(f"# one client, one image per request, {args.rounds} rounds x {args.requests} requests per kind")
    print("| /anomaly-score | median | p90 |")
    print("| --- | ---: | ---: |")
    for kind, label in (("plain", "maps=false"), ("maps", "maps=true (png)")):
        print(f"| {label} | {median[kind] * 1e3:.2f} ms | {np.percentile(every[kind], 90) * 1e3:.2f} ms |")
    print(f"maps / without: {ratio:.2f}x (target <= {TARGET}x); per round: {', '.join(f'{x:.2f}' for x in per_round)}")
    print(
        f"in-process score graph, one image, one thread: {graph['plain'] * 1e3:.3f} ms without the map, "
        f"{graph['maps'] * 1e3:.3f} ms with it ({graph['maps'] / graph['plain']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
