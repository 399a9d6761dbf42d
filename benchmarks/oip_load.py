"""The Open Inference Protocol routes (/v2) against genlab's own binary route, same server, same run.

Server: one ``genlab serve --model EXPORT`` (default settings, one worker, GENLAB_API_KEY unset), started from the
repository root. Workloads, each in a separate client process (spawned) driving gevent greenlets in a closed loop
(each sends its next request when its previous one is answered) over kept-alive connections of geventhttpclient,
the HTTP stack of ``tritonclient.http``:

- ``oip-binary``: ``tritonclient.http.InferenceServerClient.infer`` on ``NAME-score`` with the images as a binary
  tensor and ``scores`` asked for as binary data; the client's own request building and response parsing included;
- ``oip-json``: the same with the images and the scores as JSON ``data``;
- ``batch``: ``POST /batch/score`` with the same images as a .npy file part (the multipart body built once), the
  answer read with ``numpy.load``.

Levels: 64 images at 1 client (all three), 1 image at 32 clients (``oip-binary`` and ``batch``). Every level has a
warm-up (``--warmup``, default 1 s) that is not counted, then ``--duration`` seconds (default 4) measured; the
levels run ``--rounds`` times (default 3) in an order rotated each round, and each figure is the median of its
rounds. Before measuring, the protocol's scores for the 64 images are checked against /batch/score's (float
tolerance). Targets: ``oip-binary`` >= 0.9x ``batch`` at both levels; printed: the JSON form's cost against binary
at 64 images (its rate and per-request latency ratio). Errors (non-200 answers, client exceptions) fail the run.

Without ``--model``, the quickstart's VAE-GAN (default size, mnist-5k) is trained for one epoch and exported, as
``benchmarks/serve_load.py`` does. The tables (markdown) go to stdout and to ``benchmarks/results/oip_load.md``,
the figures to ``benchmarks/results/oip_load.json`` (``--out DIR`` for another folder).

Run (from anywhere; ~3 minutes with the defaults on 2 cores, plus ~1 minute to train the model):
    .venv/bin/python benchmarks/oip_load.py [--model EXPORT_DIR] [--duration 4] [--warmup 1] [--rounds 3]
        [--port 3300] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import Server, _free_port, _load, _machine, _make_model, _say, _table, genlab  # noqa: E402

MANY = 32
# level -> (images per request, clients, the clients to compare)
LEVELS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "64@1": (64, 1, ("oip-binary", "oip-json", "batch")),
    "1@32": (1, MANY, ("oip-binary", "batch")),
}
TITLES = {"64@1": "64 images, 1 client", "1@32": f"1 image, {MANY} clients"}
CLIENTS = {
    "oip-binary": "tritonclient infer, binary tensors",
    "oip-json": "tritonclient infer, JSON tensors",
    "batch": "POST /batch/score (.npy)",
}


def _images(n: int, shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, *shape), np.uint8)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _multipart(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    boundary = "genlab-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.npy"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + _npy(images)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# -- the client process ---------------------------------------------------------------------------------------
def _drive(
    client: str, host: str, model: str, images: np.ndarray, clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Runs in a client process: ``clients`` greenlets send ``client``'s request in a closed loop; requests answered
    in the ``duration`` seconds after ``warmup`` are counted."""
    import gevent
    import tritonclient.http as triton
    from geventhttpclient import HTTPClient

    if client == "batch":
        http = HTTPClient.from_url(f"http://{host}/", concurrency=clients, network_timeout=60)
        body, headers = _multipart(images)

        def call() -> None:
            response = http.post("/batch/score", body=body, headers=headers)
            data = response.read()
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {data[:200]!r}")
            np.load(io.BytesIO(data))

    else:
        triton_client = triton.InferenceServerClient(host, concurrency=clients, network_timeout=60)
        binary = client == "oip-binary"

        def call() -> None:
            tensor = triton.InferInput("images", list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images, binary_data=binary)
            outputs = [triton.InferRequestedOutput("scores", binary_data=binary)]
            triton_client.infer(f"{model}-score", [tensor], outputs=outputs).as_numpy("scores")

    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def loop() -> None:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            try:
                call()
            except Exception as err:  # every failure is counted by kind; any fails the run
                kind = type(err).__name__
                errors[kind] = errors.get(kind, 0) + 1
                continue
            done = time.perf_counter()
            if sent >= begin and done <= end:
                latencies.append(done - sent)

    gevent.joinall([gevent.spawn(loop) for _ in range(clients)])
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / duration, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "errors": errors,
    }


# -- the benchmark --------------------------------------------------------------------------------------------
def check(host: str, model: str, images: np.ndarray) -> float:
    """The protocol's scores for ``images`` against /batch/score's: their largest difference (must be tiny)."""
    import httpx
    import tritonclient.http as triton

    with triton.InferenceServerClient(host) as client:
        tensor = triton.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        scores = client.infer(f"{model}-score", [tensor]).as_numpy("scores")
    r = httpx.post(f"http://{host}/batch/score", files={"images": ("x.npy", _npy(images))}, timeout=60)
    reference = np.load(io.BytesIO(r.content))
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
    return float(np.abs(scores - reference).max())


def measure(
    host: str, model: str, shape: tuple[int, int, int], rounds: int, duration: float, warmup: float
) -> dict[str, dict[str, list[dict]]]:
    """level -> client -> one result per round; the runs of a round in an order rotated each round."""
    runs = [(level, client) for level, (_, _, clients) in LEVELS.items() for client in clients]
    results: dict[str, dict[str, list[dict]]] = {level: {c: [] for c in LEVELS[level][2]} for level in LEVELS}
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        for r in range(rounds):
            for level, client in runs[r % len(runs) :] + runs[: r % len(runs)]:
                n, clients, _ = LEVELS[level]
                args = (client, host, model, _images(n, shape), clients, duration, warmup)
                result = pool.apply(_drive, args)
                _say(f"round {r + 1}/{rounds} {level} {client}: {result['rps']} req/s, p50 {result['p50_ms']} ms")
                results[level][client].append(result)
    return results


def summarise(results: dict[str, dict[str, list[dict]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"levels": {}, "targets": []}
    for level, by_client in results.items():
        rows = {}
        for client, runs in by_client.items():
            rates = [run["rps"] for run in runs]
            rows[client] = {
                "rps_median": round(statistics.median(rates), 1),
                "rps_rounds": rates,
                "p50_ms_median": round(statistics.median(run["p50_ms"] for run in runs), 2),
                "errors": sum(sum(run["errors"].values()) for run in runs),
            }
        summary["levels"][level] = rows
        ratio = round(rows["oip-binary"]["rps_median"] / rows["batch"]["rps_median"], 2)
        summary["targets"].append(
            {"what": f"oip-binary / batch, {TITLES[level]}", "value": ratio, "target": ">= 0.9", "met": ratio >= 0.9}
        )
    big = summary["levels"]["64@1"]
    summary["json_vs_binary_64"] = {
        "rate_ratio": round(big["oip-json"]["rps_median"] / big["oip-binary"]["rps_median"], 3),
        "latency_ratio": round(big["oip-json"]["p50_ms_median"] / big["oip-binary"]["p50_ms_median"], 1),
        "extra_ms": round(big["oip-json"]["p50_ms_median"] - big["oip-binary"]["p50_ms_median"], 2),
    }
    errors = sum(row["errors"] for rows in summary["levels"].values() for row in rows.values())
    summary["targets"].append({"what": "errors", "value": errors, "target": "0", "met": errors == 0})
    return summary


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["summary"]
    lines = [
        f"# Open Inference Protocol vs /batch/score ({m['date']})",
        "",
        f"`{m['command']}`; {m['cpus']} CPUs, load {result['load_before']} -> {result['load_after']}; "
        f"model {result['model']} ({result['export']}); one `genlab serve` (default settings); "
        f"{result['rounds']} rounds of {result['duration']} s (+{result['warmup']} s warm-up), medians; "
        f"scores checked against /batch/score (largest difference {result['max_difference']:.2g}).",
        "",
    ]
    for level, rows in s["levels"].items():
        lines += [f"**{TITLES[level]}**", ""]
        batch = rows["batch"]["rps_median"]
        table = [
            [
                CLIENTS[c],
                row["rps_median"],
                row["p50_ms_median"],
                f"{row['rps_median'] / batch:.2f}x",
                row["rps_rounds"],
            ]
            for c, row in rows.items()
        ]
        lines += _table(["client", "req/s", "p50 ms", "vs /batch/score", "req/s by round"], table) + [""]
    j = s["json_vs_binary_64"]
    lines += [
        f"JSON tensors vs binary at 64 images: {j['rate_ratio']:.3f}x the requests per second; "
        f"{j['latency_ratio']}x the latency (+{j['extra_ms']} ms per request).",
        "",
    ]
    lines += _table(
        ["target", "value", "wanted", "met"], [[t["what"], t["value"], t["target"], t["met"]] for t in s["targets"]]
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train and export the quickstart's)")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3300)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        export = args.model or _make_model(tmp)
        from genlab.export.reader import read_export

        model = read_export(export, verify=False)
        load_before = _load()
        server = Server(genlab(), export, _free_port(args.port), tmp)
        try:
            server.wait_ready()
            host = server.url.removeprefix("http://")
            difference = check(host, model.name, _images(64, model.image_shape))
            results = measure(host, model.name, model.image_shape, args.rounds, args.duration, args.warmup)
        finally:
            server.stop()
    result = {
        "machine": _machine(),
        "model": model.name,
        "export": "given" if args.model else "quickstart vaegan, 1 epoch",
        "rounds": args.rounds,
        "duration": args.duration,
        "warmup": args.warmup,
        "load_before": load_before,
        "load_after": _load(),
        "max_difference": difference,
        "results": results,
        "summary": summarise(results),
    }
    text = render(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oip_load.md").write_text(text)
    (args.out / "oip_load.json").write_text(json.dumps(result, indent=2) + "\n")
    if not all(t["met"] for t in result["summary"]["targets"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
