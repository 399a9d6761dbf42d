"""Training throughput (images/s) of genlab's loop against a ceiling and a pytorch/examples baseline, per image size.

For every model family (vae, gan, vaegan) and every ``--sizes`` size, batch 64, default conv model. 28 px is
mnist-5k's grey digits (28x28x1, the default and the reference); every other size is a folder of generated
textures (``benchmarks/textures.py``) of ``--channels`` channels, written into a temporary directory and read
with ``--dataset folder:PATH`` at that size, holding more training batches than the loop takes steps (so no epoch
ends inside a measurement).

- loop      ``training.loop.train`` as it is, ``max_steps`` = the size's steps; its own ``images_per_s``
            (seconds inside the step loop: batching, conversion, logging flushes; no checkpoint
            write, no sample grids). The model is fresh, so the first (cold) steps count.
- loop+io   wall clock of a whole ``train()`` call for one epoch of mnist-5k (62 steps, 3,968 images):
            startup, data loading, checkpoints, sample grids and calibration included. 28 px only.
- ceiling   ``model.train_step`` repeated on ONE fixed in-memory batch in [-1, 1] after min(5, steps)
            warm-up steps: no data pipeline at all.
- baseline  the pytorch/examples way (dcgan/main.py, vae/main.py): a Dataset of PIL images
            through ToTensor + Normalize((0.5,), (0.5,)) per item, a DataLoader (shuffle,
            drop_last, num_workers=0), the same ``train_step`` on a fresh model. 28 px only: at the
            larger sizes the step costs 6-350x the 28 px one, and the data path is not what they compare.

The measurements are interleaved (order rotated each repeat) over ``--repeats`` repeats and the median images/s
is reported; the ratios come from one run's medians. Each (family, size) starts with one discarded ceiling
measurement (process-level warm-up at that size). Targets: loop/ceiling >= 0.9, loop/baseline >= 1.5. Beside
each size: the ceiling's seconds per step, and that step's cost relative to the same family's 28x28x1 step
where 28 is among the sizes. The last line is the process's peak resident memory.

Run:  .venv/bin/python benchmarks/train_throughput.py [--families vae gan] [--sizes 28,64,128,256]
      [--channels 3] [--steps 40 | --steps 40,20,8,3] [--repeats 3] [--device cpu|cuda] [--threads N] [--json]

``--steps`` is one count for every size, or one per size. On a CPU shared with other busy processes, intra-op
threads = CPU count can make every step many times slower (threads wait on each other); compare with
``--threads 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from genlab.training.loop import train

from genlab.config import ModelConfig, TrainConfig
from genlab.data import VAL_FRACTION, load_split
from genlab.models import MODELS, build_model, model_class
from genlab.pixels import uint8_to_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.textures import write_textures  # noqa: E402

BATCH = 64
REFERENCE = ("mnist-5k", 28, 1)  # dataset, size, channels of the reference size
KINDS = ("loop", "loop_wall", "ceiling", "baseline")
SIZE_KINDS = ("loop", "ceiling")  # what sizes other than the reference measure
CEILING_WARMUP = 5  # at most: min(CEILING_WARMUP, steps) warm-up steps before the ceiling's timed steps


@dataclass(frozen=True)
class Workload:
    """One image size: the dataset read at it, and how many steps each measurement takes."""

    dataset: str
    size: int
    channels: int
    steps: int

    @property
    def reference(self) -> bool:
        return (self.dataset, self.size, self.channels) == REFERENCE

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.reference else SIZE_KINDS


def texture_count(steps: int) -> int:
    """Images a folder needs for its training split (90%) to hold steps + 1 batches."""
    return math.ceil(BATCH * (steps + 1) / (1 - VAL_FRACTION)) + 2


def workloads(sizes: list[int], channels: int, steps: list[int], scratch: Path) -> list[Workload]:
    """The reference size as mnist-5k; every other size as a texture folder written under ``scratch``."""
    out = []
    for size, n in zip(sizes, steps):
        if size == REFERENCE[1]:
            out.append(Workload(REFERENCE[0], size, REFERENCE[2], n))
            continue
        folder = write_textures(scratch / f"textures-{size}px-{channels}ch", size, channels, texture_count(n))
        out.append(Workload(f"folder:{folder}", size, channels, n))
    return out


@cache
def train_images(w: Workload) -> torch.Tensor:
    return load_split(w.dataset, "train", image_size=w.size, channels=w.channels).images  # uint8 [N, C, H, W]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(family: str, w: Workload, device: torch.device):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, image_size=w.size, channels=w.channels)).to(device).train()
    return model, model.configure_optimizers(model_class(family).default_lr, (0.5, 0.999))


def run_train(family: str, w: Workload, device: torch.device, epochs: int, max_steps: int | None) -> tuple[dict, float]:
    tc = TrainConfig(
        dataset=w.dataset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=BATCH,
        sample_count=16,
        log_every=10,
        device=device.type,
    )
    shape = {"image_size": w.size, "channels": w.channels}
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stderr(io.StringIO()):  # hide tqdm
        start = time.perf_counter()
        summary = train(family, shape, tc, run_dir)
        return summary, time.perf_counter() - start


def measure_loop(family: str, w: Workload, device: torch.device) -> float:
    epochs = math.ceil(w.steps / (len(train_images(w)) // BATCH))
    return run_train(family, w, device, epochs, w.steps)[0]["images_per_s"]


def measure_loop_wall(family: str, w: Workload, device: torch.device) -> float:
    summary, seconds = run_train(family, w, device, epochs=1, max_steps=None)  # one full epoch
    return summary["step"] * BATCH / seconds


def measure_ceiling(
    family: str, w: Workload, device: torch.device, steps: int | None = None, warmup: int | None = None
) -> float:
    steps = w.steps if steps is None else steps
    warmup = min(CEILING_WARMUP, w.steps) if warmup is None else warmup
    model, optimizers = fresh_model(family, w, device)
    x = uint8_to_model(train_images(w)[:BATCH].to(device))
    y = torch.zeros(BATCH, dtype=torch.int64, device=device)  # labels: unused by these unconditional models
    for _ in range(warmup):
        model.train_step(x, y, optimizers)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_step(x, y, optimizers)
    sync(device)
    return steps * BATCH / (time.perf_counter() - start)


def measure_baseline(family: str, w: Workload, device: torch.device) -> float:
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

    dataset = PILDigits(train_images(w), T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0)
    model, optimizers = fresh_model(family, w, device)
    done = 0
    sync(device)
    start = time.perf_counter()
    while done < w.steps:
        for x, y in loader:
            model.train_step(x.to(device), y.to(device), optimizers)
            done += 1
            if done == w.steps:
                break
    sync(device)
    return w.steps * BATCH / (time.perf_counter() - start)


MEASURE = {
    "loop": measure_loop,
    "loop_wall": measure_loop_wall,
    "ceiling": measure_ceiling,
    "baseline": measure_baseline,
}


def bench(family: str, w: Workload, repeats: int, device: torch.device) -> dict:
    kinds = w.kinds
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    measure_ceiling(family, w, device, steps=1, warmup=1)  # discarded: process-level warm-up at this size
    for r in range(repeats):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:  # rotate the order
            samples[kind].append(MEASURE[kind](family, w, device))
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "family": family,
        "dataset": "generated textures" if w.dataset.startswith("folder:") else w.dataset,
        "size": w.size,
        "channels": w.channels,
        "steps": w.steps,
        **med,
        "step_s": BATCH / med["ceiling"],
        "loop/ceiling": med["loop"] / med["ceiling"],
        "samples": samples,
    }
    if "baseline" in med:
        result["loop/baseline"] = med["loop"] / med["baseline"]
    return result


def step_costs(results: list[dict]) -> None:
    """Add each result's ceiling step cost relative to its family's reference (28x28x1) step, where measured."""
    reference = {r["family"]: r["step_s"] for r in results if (r["size"], r["channels"]) == REFERENCE[1:]}
    for r in results:
        if r["family"] in reference:
            r["step/reference"] = r["step_s"] / reference[r["family"]]


def comma_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def print_tables(header: dict, results: list[dict], repeats: int) -> None:
    steps = ", ".join(f"{size} px: {n}" for size, n in header["steps"].items())
    print(
        f"# torch {header['torch']}, threads {header['threads']}, device {header['device']}, {header['cpus']} CPUs, "
        f"{header['date']}; batch {BATCH}, median of {repeats} repeats of {steps} steps; "
        f"load {header['load_before']} -> {header['load_after']}"
    )
    reference = [r for r in results if "baseline" in r]
    if reference:
        print(f"# {REFERENCE[0]}, {REFERENCE[1]}x{REFERENCE[1]}x{REFERENCE[2]}")
        print(
            "| family | loop img/s | loop incl. checkpoint/grids img/s | ceiling img/s | baseline img/s "
            "| loop/ceiling | loop/baseline |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in reference:
            lc, lb = r["loop/ceiling"], r["loop/baseline"]
            print(
                f"| {r['family']} | {r['loop']:.0f} | {r['loop_wall']:.0f} | {r['ceiling']:.0f} "
                f"| {r['baseline']:.0f} | {lc:.2f} {'PASS' if lc >= 0.9 else 'MISS'} "
                f"| {lb:.2f} {'PASS' if lb >= 1.5 else 'MISS'} |"
            )
    if len(reference) < len(results):
        name, size = REFERENCE[:2]
        print(f"# per size: {name} at {size} px, {header['channels']}-channel generated textures at the others")
        print("| family | images | loop img/s | ceiling img/s | loop/ceiling | ceiling s/step | step / 28x28x1 |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in results:
            lc, cost = r["loop/ceiling"], r.get("step/reference")
            print(
                f"| {r['family']} | {r['channels']}x{r['size']}x{r['size']} | {r['loop']:.1f} "
                f"| {r['ceiling']:.1f} | {lc:.2f} {'PASS' if lc >= 0.9 else 'MISS'} | {r['step_s']:.3f} "
                f"| {'-' if cost is None else f'{cost:.1f}x'} |"
            )
    print(f"# peak resident memory of this process: {header['peak_rss_gib']:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--sizes",
        type=comma_ints,
        default=[REFERENCE[1]],
        help="image sizes, comma-separated (default: 28, mnist-5k; other sizes: generated textures)",
    )
    parser.add_argument(
        "--channels", type=int, default=3, choices=[1, 3], help="channels at sizes other than 28 (default: 3)"
    )
    parser.add_argument(
        "--steps", type=comma_ints, default=[60], help="steps per measurement: one count, or one per size"
    )
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
    if len(args.steps) not in (1, len(args.sizes)):
        parser.error(f"--steps: give one count or one per size ({len(args.sizes)}), got {len(args.steps)}")
    steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # the same for all measurements
    header = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "batch": BATCH,
        "channels": args.channels,
        "steps": dict(zip(args.sizes, steps)),
        "repeats": args.repeats,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="genlab-throughput-") as scratch:
        loads = workloads(args.sizes, args.channels, steps, Path(scratch))
        results = [bench(f, w, args.repeats, device) for f in args.families for w in loads]
    step_costs(results)
    header["load_after"] = [round(x, 2) for x in os.getloadavg()]
    header["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    if args.json:
        print(json.dumps({**header, "results": results}, indent=2))
        return
    print_tables(header, results, args.repeats)


if __name__ == "__main__":
    main()
