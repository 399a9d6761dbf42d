"""Training throughput (images/s) of genlab's loop against a ceiling and a pytorch/examples baseline.

For every model family (vae, gan, vaegan), batch 64, mnist-5k, default conv model (28x28x1):

- loop      ``training.loop.train`` as it is, ``max_steps=--steps``; its own ``images_per_s``
            (seconds inside the step loop: batching, conversion, logging flushes; no checkpoint
            write, no sample grids). The model is fresh, so the first (cold) steps count.
- loop+io   wall clock of a whole ``train()`` call for one epoch (62 steps, 3,968 images):
            startup, data loading, checkpoints, sample grids and calibration included.
- ceiling   ``model.train_step`` repeated on ONE fixed in-memory batch in [-1, 1] after a few
            warm-up steps: no data pipeline at all.
- baseline  the pytorch/examples way (dcgan/main.py, vae/main.py): a Dataset of PIL images
            through ToTensor + Normalize((0.5,), (0.5,)) per item, a DataLoader (shuffle,
            drop_last, num_workers=0), the same ``train_step`` on a fresh model.

The measurements are interleaved (order rotated each repeat) over ``--repeats`` repeats of
``--steps`` steps and the median images/s is reported; the ratios come from one run's medians.
Targets: loop/ceiling >= 0.9, loop/baseline >= 1.5.

Run:  .venv/bin/python benchmarks/train_throughput.py [--families vae gan] [--steps 60]
      [--repeats 3] [--device cpu|cuda] [--threads N] [--json]

On a CPU shared with other busy processes, intra-op threads = CPU count can make every step
many times slower (threads wait on each other); compare with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import statistics
import tempfile
import time
from functools import cache

import torch
from genlab.training.loop import train

from genlab.config import ModelConfig, TrainConfig
from genlab.data import load_split
from genlab.models import MODELS, build_model, model_class
from genlab.pixels import uint8_to_model

DATASET, BATCH = "mnist-5k", 64
KINDS = ("loop", "loop_wall", "ceiling", "baseline")


@cache
def train_images() -> torch.Tensor:
    return load_split(DATASET, "train").images  # uint8 [4000, 1, 28, 28]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(family: str, device: torch.device):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, image_size=28, channels=1)).to(device).train()
    return model, model.configure_optimizers(model_class(family).default_lr, (0.5, 0.999))


def run_train(family: str, device: torch.device, epochs: int, max_steps: int | None) -> tuple[dict, float]:
    tc = TrainConfig(
        dataset=DATASET,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=BATCH,
        sample_count=16,
        log_every=10,
        device=device.type,
    )
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stderr(io.StringIO()):  # hide tqdm
        start = time.perf_counter()
        summary = train(family, {}, tc, run_dir)
        return summary, time.perf_counter() - start


def measure_loop(family: str, steps: int, device: torch.device) -> float:
    epochs = math.ceil(steps / (len(train_images()) // BATCH))
    return run_train(family, device, epochs, steps)[0]["images_per_s"]


def measure_loop_wall(family: str, steps: int, device: torch.device) -> float:
    summary, seconds = run_train(family, device, epochs=1, max_steps=None)  # one full epoch
    return summary["step"] * BATCH / seconds


def measure_ceiling(family: str, steps: int, device: torch.device, warmup: int = 5) -> float:
    model, optimizers = fresh_model(family, device)
    x = uint8_to_model(train_images()[:BATCH].to(device))
    y = torch.zeros(BATCH, dtype=torch.int64, device=device)  # labels: unused by these unconditional models
    for _ in range(warmup):
        model.train_step(x, y, optimizers)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_step(x, y, optimizers)
    sync(device)
    return steps * BATCH / (time.perf_counter() - start)


def measure_baseline(family: str, steps: int, device: torch.device) -> float:
    from PIL import Image

    from genlab.torchvision_fix import import_torchvision

    tv = import_torchvision()
    T = tv.transforms

    class PILDigits(torch.utils.data.Dataset):  # what a torchvision-style dataset hands out
        def __init__(self, images: torch.Tensor, transform):
            self.arrays, self.transform = images[:, 0].numpy(), transform

        def __len__(self) -> int:
            return len(self.arrays)

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.arrays[i], mode="L")), 0

    dataset = PILDigits(train_images(), T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0)
    model, optimizers = fresh_model(family, device)
    done = 0
    sync(device)
    start = time.perf_counter()
    while done < steps:
        for x, y in loader:
            model.train_step(x.to(device), y.to(device), optimizers)
            done += 1
            if done == steps:
                break
    sync(device)
    return steps * BATCH / (time.perf_counter() - start)


MEASURE = {
    "loop": measure_loop,
    "loop_wall": measure_loop_wall,
    "ceiling": measure_ceiling,
    "baseline": measure_baseline,
}


def bench(family: str, steps: int, repeats: int, device: torch.device) -> dict:
    samples: dict[str, list[float]] = {k: [] for k in KINDS}
    measure_ceiling(family, 2, device)  # discarded: process-level warm-up (allocator, kernels) off repeat 0
    for r in range(repeats):
        for kind in KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]:  # rotate the order
            samples[kind].append(MEASURE[kind](family, steps, device))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "family": family,
        **med,
        "loop/ceiling": med["loop"] / med["ceiling"],
        "loop/baseline": med["loop"] / med["baseline"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for all measurements (default: CPU count; 1 is steadier on a busy CPU)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # the same for all measurements
    header = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "batch": BATCH,
        "dataset": DATASET,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    results = [bench(f, args.steps, args.repeats, device) for f in args.families]
    if args.json:
        print(json.dumps({**header, "results": results}, indent=2))
        return
    print(
        f"# torch {header['torch']}, threads {header['threads']}, device {device}, {header['date']}; "
        f"{DATASET}, batch {BATCH}, median of {args.repeats} x {args.steps} steps"
    )
    print(
        "| family | loop img/s | loop incl. checkpoint/grids img/s | ceiling img/s | baseline img/s "
        "| loop/ceiling | loop/baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        lc, lb = r["loop/ceiling"], r["loop/baseline"]
        print(
            f"| {r['family']} | {r['loop']:.0f} | {r['loop_wall']:.0f} | {r['ceiling']:.0f} | {r['baseline']:.0f} "
            f"| {lc:.2f} {'PASS' if lc >= 0.9 else 'MISS'} | {lb:.2f} {'PASS' if lb >= 1.5 else 'MISS'} |"
        )


if __name__ == "__main__":
    main()
