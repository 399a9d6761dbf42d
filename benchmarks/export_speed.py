"""Inference speed of the exported graphs: ONNX Runtime vs torch eager, decoder and encoder of each family.

For every model family the default model (conv, width 32, latent 32, 28x28x1) is trained for one
step in-process (the weights' values do not matter for speed) and exported with
``export.onnx_export.export_checkpoint`` into a temporary directory. Then, for ``decoder.onnx``
(z float32 -> uint8 images) and ``encoder.onnx`` (uint8 images -> mu, logvar; VAE and VAE-GAN):

- torch  the same uint8-in / uint8-out wrapper modules the export traces (``DecoderGraph``,
         ``EncoderGraph``), eager, under ``torch.inference_mode()``;
- ort    an ONNX Runtime session on the exported file (CPUExecutionProvider).

Both use the same number of intra-op threads (``--threads``: ``torch.set_num_threads`` and
``SessionOptions.intra_op_num_threads``; ORT inter-op threads 1). Latency: batch 1, median of
``--runs`` timed calls after warm-up. Throughput: batch 256, images/s, median of ``--repeats``
timed calls. torch and ort calls are interleaved in blocks so that load from other processes
hits both alike; the load average is printed with the results. Speedup = torch time / ort time
(> 1: ONNX Runtime is faster). ``--json`` adds the quartiles of the batch-1 times and the
min/max of the batch-256 times.

On a CPU shared with other busy processes, torch with as many intra-op threads as there are
cores can stall for tens of milliseconds per call (its threads wait on each other while another
process holds a core); ONNX Runtime suffers less. Compare with ``--threads 1`` and look at the load
average printed with the table before reading much into one run.

``--device cuda`` adds torch-on-CUDA and ONNX Runtime CUDAExecutionProvider rows where both are
available (onnxruntime-gpu and a GPU); ort CUDA figures include the host<->device copies of
``session.run`` with numpy inputs, torch CUDA figures are measured on device tensors.

Run:  .venv/bin/python benchmarks/export_speed.py [--families vae gan] [--threads 2] [--runs 200]
      [--repeats 7] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from genlab.export.onnx_export import DecoderGraph, EncoderGraph, export_checkpoint
from genlab.export.reader import sample_latents
from genlab.training.loop import train

from genlab.checkpoint import model_from_checkpoint
from genlab.config import TrainConfig
from genlab.models import MODELS

LATENCY_BATCH, THROUGHPUT_BATCH = 1, 256
BLOCK = 20  # latency calls per engine before switching to the other


def build_exports(families: list[str], root: Path) -> dict[str, Path]:
    """family -> checkpoint path, after one training step with the default config and an export."""
    exports = {}
    for family in families:
        run = root / f"run-{family}"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train(family, {}, TrainConfig(dataset="mnist-5k", epochs=1, max_steps=1, sample_count=16), run)
        export_checkpoint(run / "last.pt", root / f"export-{family}")
        exports[family] = run / "last.pt"
    return exports


def ort_session(path: Path, threads: int, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"{path.name}: asked for {provider}, got {session.get_providers()}")
    return session


def inputs(graph: str, batch: int, latent: int, seed: int = 0) -> np.ndarray:
    if graph == "decoder":
        return sample_latents(batch, latent, seed)
    return np.random.default_rng(seed).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)


def interleaved(fns: dict[str, Callable[[], Any]], calls: int, block: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call for each function, timed one call at a time, alternating in blocks."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    while len(times[order[0]]) < calls:
        for name in order:
            fn = fns[name]
            for _ in range(min(block, calls - len(times[name]))):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        order.reverse()
    return times


def bench_graph(
    family: str, graph: str, model: torch.nn.Module, path: Path, args: argparse.Namespace, device: str
) -> dict[str, Any]:
    latent = model.cfg.latent_dim
    module = (DecoderGraph if graph == "decoder" else EncoderGraph)(model)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    session = ort_session(path, args.threads, provider)
    input_name = session.get_inputs()[0].name
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def engines(batch: int) -> dict[str, Callable[[], Any]]:
        x = inputs(graph, batch, latent)
        xt = torch.from_numpy(x).to(device)

        def run_torch():
            with torch.inference_mode():
                out = module(xt)
            sync()
            return out

        return {"torch": run_torch, "ort": lambda: session.run(None, {input_name: x})}

    # the two must agree (same graph, same weights) before their speed means anything
    check = engines(3)
    want = check["torch"]()
    want = [t.cpu().numpy() for t in (want if isinstance(want, tuple) else (want,))]
    for w, g in zip(want, check["ort"]()):
        assert np.abs(w.astype(np.float64) - g.astype(np.float64)).max() <= 1.0 + 1e-3, (
            f"{family} {graph}: ort != torch"
        )

    lat = interleaved(engines(LATENCY_BATCH), args.runs, BLOCK, warmup=args.warmup)
    thr = interleaved(engines(THROUGHPUT_BATCH), args.repeats, 1, warmup=2)
    torch_ms, ort_ms = (1e3 * statistics.median(lat[e]) for e in ("torch", "ort"))
    torch_ips, ort_ips = (THROUGHPUT_BATCH / statistics.median(thr[e]) for e in ("torch", "ort"))
    return {
        "family": family,
        "graph": graph,
        "device": device,
        "ort_provider": session.get_providers()[0],
        "torch_b1_ms": torch_ms,
        "ort_b1_ms": ort_ms,
        "b1_speedup": torch_ms / ort_ms,
        "torch_b256_img_s": torch_ips,
        "ort_b256_img_s": ort_ips,
        "b256_speedup": ort_ips / torch_ips,
        "b1_runs": args.runs,
        "b256_repeats": args.repeats,
        # spread, to tell a quiet measurement from a contended one
        "torch_b1_ms_quartiles": quartiles(lat["torch"], 1e3),
        "ort_b1_ms_quartiles": quartiles(lat["ort"], 1e3),
        "torch_b256_s_min_max": [min(thr["torch"]), max(thr["torch"])],
        "ort_b256_s_min_max": [min(thr["ort"]), max(thr["ort"])],
    }


def quartiles(values: list[float], scale: float) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [round(q[0] * scale, 4), round(q[2] * scale, 4)]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | graph | device | torch b1 ms | ort b1 ms | speedup | torch b256 img/s | ort b256 img/s | speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['graph']} | {r['device']} | {r['torch_b1_ms']:.3f} | {r['ort_b1_ms']:.3f} | "
            f"{r['b1_speedup']:.2f}x | {r['torch_b256_img_s']:,.0f} | {r['ort_b256_img_s']:,.0f} | "
            f"{r['b256_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--threads", type=int, default=2, help="intra-op threads for both torch and ONNX Runtime (default 2)"
    )
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per engine (median reported)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batch-1 calls per engine first")
    parser.add_argument("--repeats", type=int, default=7, help="timed batch-256 calls per engine (median reported)")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: add CUDA rows (torch on the GPU, ORT CUDAExecutionProvider) where available",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)
    devices = ["cpu"]
    skipped = None
    if args.device == "cuda":
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            devices.append("cuda")
        else:
            skipped = (
                f"CUDA rows skipped: torch.cuda.is_available()={torch.cuda.is_available()}, "
                f"ORT providers={ort.get_available_providers()}"
            )

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="genlab-export-speed-") as tmp:
        checkpoints = build_exports(args.families, Path(tmp))
        for family, checkpoint in checkpoints.items():
            for device in devices:
                model = model_from_checkpoint(checkpoint, device=device).float()
                for graph in ("decoder", "encoder"):
                    if graph == "encoder" and not MODELS[family].has_encoder:
                        continue
                    rows.append(
                        bench_graph(
                            family, graph, model, Path(tmp) / f"export-{family}" / f"{graph}.onnx", args, device
                        )
                    )
    load_after = os.getloadavg()

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.platform()})",
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "model": "default conv (width 32, latent 32, 28x28x1)",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "seconds": round(time.perf_counter() - started, 1),
        "cuda": skipped or ("measured" if "cuda" in devices else "not asked"),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(table(rows))
    print()
    print(
        f"{meta['date']}; {meta['machine']}; threads {args.threads} for both; "
        f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}; "
        f"batch 1: median of {args.runs} calls, batch 256: median of {args.repeats}; "
        f"load average (1/5/15 min) before {meta['loadavg_before']}, after {meta['loadavg_after']}; {meta['seconds']} s"
    )
    if skipped:
        print(skipped)


if __name__ == "__main__":
    main()
