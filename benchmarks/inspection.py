"""Inspection images in the MVTec AD layout, with synthetic defects, per category and family.

**The set.** Each category is one photograph that ships in scikit-image's wheel (``skimage/data/``): the
installed package's folder when scikit-image is importable, else the files read from the wheel's zip
(``pip download --no-deps scikit-image==0.26.*`` into a temporary folder; scikit-image is no project
dependency). A category's images are square crops of ``--crop`` px around one place in the photograph,
moved by up to ``--shift`` px (and flipped left-right for the textures), as photographs of one part
taken again and again: ``--train`` crops in ``train/good``, ``--test-good`` in ``test/good`` and
``--per-defect`` in each ``test/<defect>`` with its mask in ``ground_truth/<defect>/<name>_mask.png``.
The defects, drawn on fresh crops:

- ``scratch``: a thin straight line, bright or dark;
- ``hole``: a dark filled ellipse;
- ``smear``: an elliptical patch replaced by its Gaussian blur (the texture goes, the colours stay:
  the case a reconstruction error is weakest on);
- ``stain``: an elliptical patch tinted towards another colour (grey categories: brighter or darker).

Everything is drawn from ``--seed``; the folders are written once under ``--out``/data, named by every
choice that changes them. ``brick``, ``grass`` and ``gravel`` are never used: an independent check
keeps them.

**The models.** For each category and family (``--families``): ``genlab train FAMILY --dataset
mvtec:PATH --set image_size=SIZE`` (genlab's one-class budget unless ``--epochs E`` is given), then
``genlab eval anomaly RUN --dataset mvtec:PATH --json`` on the test split, at every ``--sizes``.
Nothing is chosen on the test defects: the families' scores, maps and thresholds are their defaults
(an inspection set's: the local anomaly map, ``genlab.models.local_map``), fitted and calibrated on
``train/good`` and its held-out share.

**The baseline**, from the same models: the reconstruction error alone, as an image score
(``recon_error``) and as a map (|image - reconstruction| averaged over channels, computed here from
the checkpoint) scored against the same masks.

**The tables.** Per category, family and size: the image AUROC and F1-max of the primary ``score``,
the pixel AUROC and AUPRO to FPR 0.3 of the anomaly map and of the baseline's, and the FPR on the good
test images and the TPR on the defective ones at the calibrated threshold; per defect type, the image
AUROC of ``score`` and of ``recon_error`` averaged over the categories; per family, the mean image
AUROC of every score component.
``--json`` prints the raw results instead.

Run:  .venv/bin/python benchmarks/inspection.py [--categories chelsea,coins] [--families vae,vaegan]
      [--sizes 64] [--epochs E] [--seed 0] [--out runs/inspection] [--json]
A run directory that already holds a trained model is evaluated again, not retrained; ``--fresh``
retrains.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
GENLAB = [sys.executable, "-m", "genlab"]
SKIMAGE_WHEEL = "scikit-image==0.26.*"
HELD_OUT = ("brick", "grass", "gravel")  # the independent check's photographs: never read here
DEFECTS = ("scratch", "hole", "smear", "stain")


@dataclass(frozen=True)
class Category:
    photo: str  # file name in skimage/data/
    centre: tuple[float, float]  # (row, column) of the crops' centre, as fractions of the photograph
    flips: bool  # a texture: crops are also flipped left-right


CATEGORIES = {
    "chelsea": Category("chelsea.png", (0.55, 0.45), True),  # the cat's eyes and fur
    "coins": Category("coins.png", (0.5, 0.5), False),
    "coffee": Category("coffee.png", (0.45, 0.5), False),
    "moon": Category("moon.png", (0.5, 0.5), True),
    "camera": Category("camera.png", (0.35, 0.45), False),
    "astronaut": Category("astronaut.png", (0.7, 0.35), False),  # the suit
    "rocket": Category("rocket.jpg", (0.5, 0.45), False),
}


# ---------------------------------------------------------------- photographs


def skimage_photo(name: str, scratch: Path) -> Image.Image:
    """One photograph of skimage/data/: from the installed package, else from the wheel (downloaded once)."""
    if Path(name).stem in HELD_OUT:
        raise SystemExit(f"{name} is kept for an independent check")
    try:
        import skimage

        return Image.open(Path(skimage.__file__).parent / "data" / name).copy()
    except ImportError:
        pass
    wheels = sorted(scratch.glob("scikit_image-*.whl"))
    if not wheels:
        scratch.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SKIMAGE_WHEEL, "-d", str(scratch)],
            check=True,
        )
        wheels = sorted(scratch.glob("scikit_image-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return Image.open(io.BytesIO(wheel.read(f"skimage/data/{name}"))).copy()


def photo_to_array(photo: Image.Image) -> np.ndarray:
    """uint8 [H, W, C]: grey photographs keep one channel, the others are RGB."""
    grey = photo.mode in ("L", "I", "I;16", "F", "1")
    return np.asarray(photo.convert("L" if grey else "RGB"), dtype=np.uint8).reshape(photo.height, photo.width, -1)


def crop(photo: np.ndarray, category: Category, side: int, shift: int, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = min(side, h - 2 * shift, w - 2 * shift)
    cy = int(category.centre[0] * h) - side // 2 + int(rng.integers(-shift, shift + 1))
    cx = int(category.centre[1] * w) - side // 2 + int(rng.integers(-shift, shift + 1))
    top = min(max(cy, 0), h - side)
    left = min(max(cx, 0), w - side)
    out = photo[top : top + side, left : left + side]
    if category.flips and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------- defects


def ellipse_mask(side: int, rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A bool ellipse of radii drawn from ``radius`` (fractions of the side), rotated, fully inside the image."""
    ry, rx = (side * rng.uniform(*radius) for _ in range(2))
    margin = max(ry, rx) + 2
    cy, cx = rng.uniform(margin, side - margin, size=2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:side, :side] - np.array([cy, cx])[:, None, None]
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def add_defect(image: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8 [S, S, C]) with one defect, and its bool mask [S, S]."""
    side, channels = image.shape[0], image.shape[2]
    out = image.astype(np.float32)
    if defect == "scratch":
        canvas = Image.new("L", (side, side))
        length = side * rng.uniform(0.3, 0.6)
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0.3 * side, 0.7 * side, size=2)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        width = max(2, round(side * rng.uniform(0.015, 0.03)))
        ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)
        mask = np.asarray(canvas) >= 128
        out[mask] = 240.0 if rng.random() < 0.5 else 15.0
    elif defect == "hole":
        mask = ellipse_mask(side, rng, (0.05, 0.11))
        out[mask] = rng.uniform(0, 25, size=channels)
    elif defect == "smear":
        mask = ellipse_mask(side, rng, (0.1, 0.18))
        blurred = Image.fromarray(image.squeeze(-1) if channels == 1 else image).filter(
            ImageFilter.GaussianBlur(side * 0.03)
        )
        out[mask] = np.asarray(blurred, dtype=np.float32).reshape(image.shape)[mask]
    elif defect == "stain":
        mask = ellipse_mask(side, rng, (0.08, 0.15))
        if channels == 1:
            tint = np.array([255.0 if rng.random() < 0.5 else 0.0])
        else:  # towards a saturated colour far from the patch's own
            own = out[mask].mean(axis=0)
            tint = np.where(rng.random(3) < 0.5, 0.0, 255.0)
            if np.abs(tint - own).sum() < 200:
                tint = 255.0 - tint
        out[mask] = 0.55 * out[mask] + 0.45 * tint
    else:
        raise ValueError(f"unknown defect {defect!r}")
    return np.clip(out.round(), 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------- the MVTec AD folder


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array).save(path)


def category_folder(name: str, args: argparse.Namespace, scratch: Path) -> Path:
    """The category's MVTec AD folder under ``--out``/data, written once; named by every choice that changes it."""
    key = f"{name}-crop{args.crop}-shift{args.shift}-n{args.train}-{args.test_good}-{args.per_defect}-seed{args.seed}"
    root = args.out / "data" / key / name
    done = root.parent / "complete"
    if done.exists():
        return root
    category = CATEGORIES[name]
    photo = photo_to_array(skimage_photo(category.photo, scratch))
    rng = np.random.default_rng([args.seed, sorted(CATEGORIES).index(name)])
    for i in range(args.train):
        save_png(crop(photo, category, args.crop, args.shift, rng), root / "train" / "good" / f"{i:03d}.png")
    for i in range(args.test_good):
        save_png(crop(photo, category, args.crop, args.shift, rng), root / "test" / "good" / f"{i:03d}.png")
    for defect in DEFECTS:
        for i in range(args.per_defect):
            image, mask = add_defect(crop(photo, category, args.crop, args.shift, rng), defect, rng)
            save_png(image, root / "test" / defect / f"{i:03d}.png")
            save_png(mask.astype(np.uint8) * 255, root / "ground_truth" / defect / f"{i:03d}_mask.png")
    done.write_text("")
    return root


# ---------------------------------------------------------------- train and evaluate


def genlab_json(argv: list[str]) -> dict[str, Any]:
    """Run ``genlab ARGV --json``; its progress goes to this process's stderr, its JSON is returned."""
    print("$ genlab " + shlex.join(argv), file=sys.stderr, flush=True)
    done = subprocess.run([*GENLAB, *argv, "--json"], cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def train_and_evaluate(family: str, folder: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    dataset = f"mvtec:{folder}"
    budget = "default" if args.epochs is None else f"e{args.epochs}"
    run_dir = args.out / "runs" / f"{folder.name}-{family}-{size}px-{budget}-seed{args.seed}"
    started = time.perf_counter()
    summary = None
    if args.fresh or not (run_dir / "last.pt").exists():
        summary = genlab_json(
            [
                "train",
                family,
                "--dataset",
                dataset,
                "--set",
                f"image_size={size}",
                *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
                "--seed",
                str(args.seed),
                "--log-every",
                "50",
                "--out",
                str(run_dir),
            ]  # fmt: skip
        )
    train_wall = time.perf_counter() - started
    started = time.perf_counter()
    result = genlab_json(["eval", "anomaly", str(run_dir), "--dataset", dataset])
    baseline = error_map_metrics(run_dir, dataset)
    return {
        "category": folder.name,
        "family": family,
        "size": size,
        "epochs": args.epochs,
        "run_dir": str(run_dir),
        "train": summary,
        "train_wall_seconds": round(train_wall, 1) if summary is not None else None,
        "eval_wall_seconds": round(time.perf_counter() - started, 1),
        "result": result,
        "error_map": baseline,
    }


def error_map_metrics(run_dir: Path, dataset: str) -> dict[str, float | None]:
    """The baseline map's pixel AUROC and AUPRO@0.3: |image - reconstruction| of the run's model, averaged over
    channels, against the test masks (bilinear to the masks' size, as ``genlab eval anomaly`` does)."""
    import torch
    from genlab.eval.anomaly_metrics import pixel_metrics
    from genlab.eval.inspection import resize_maps

    from genlab.checkpoint import model_from_checkpoint
    from genlab.data import load_split
    from genlab.pixels import uint8_to_model

    model = model_from_checkpoint(run_dir / "last.pt")
    test = load_split(dataset, "test", image_size=model.cfg.image_size, channels=model.cfg.channels)
    with torch.no_grad():
        maps = [
            (x - model.reconstruct(x)).abs().mean(dim=1) / 2.0
            for x in (uint8_to_model(test.images[i : i + 64]) for i in range(0, len(test), 64))
        ]
    masks = test.masks.numpy()
    metrics = pixel_metrics(resize_maps(torch.cat(maps).numpy(), masks.shape[1:]), masks)
    return {"auroc": metrics.auroc, "aupro": metrics.aupro}


# ---------------------------------------------------------------- tables


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def tables(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| category | family | size | image AUROC | image F1-max | pixel AUROC | AUPRO@0.3 | FPR good | TPR defects |"
        " train s | baseline: image AUROC | pixel AUROC | AUPRO@0.3 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        score = r["result"]["components"]["score"]
        pixel = r["result"]["pixel"] or {}
        seconds = "-" if r["train_wall_seconds"] is None else f"{r['train_wall_seconds']:.0f}"
        lines.append(
            f"| {r['category']} | {r['family']} | {r['size']} | {fmt(score['auroc'])} | {fmt(score['f1_max'])} "
            f"| {fmt(pixel.get('auroc'))} | {fmt(pixel.get('aupro'))} | {fmt(score['fpr'])} | {fmt(score['tpr'])} "
            f"| {seconds} | {fmt(r['result']['components']['recon_error']['auroc'])} "
            f"| {fmt(r['error_map']['auroc'])} | {fmt(r['error_map']['aupro'])} |"
        )
    groups = list(dict.fromkeys((r["family"], r["size"]) for r in rows))
    lines += [
        "",
        "image AUROC per defect type, mean over the categories, of `score` and of the baseline `recon_error`:",
        "",
        "| family | size | score | " + " | ".join(DEFECTS) + " |",
        "| --- | ---: | --- |" + " ---: |" * len(DEFECTS),
    ]
    for family, size in groups:
        group = [r for r in rows if (r["family"], r["size"]) == (family, size)]
        for name in ("score", "recon_error"):
            cells = []
            for defect in DEFECTS:
                values = [r["result"]["components"][name]["defects"].get(defect) for r in group]
                values = [v for v in values if v is not None]
                cells.append(fmt(sum(values) / len(values) if values else None))
            lines.append(f"| {family} | {size} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "every score component, mean image AUROC over the categories:", ""]
    for family, size in groups:
        group = [r for r in rows if (r["family"], r["size"]) == (family, size)]
        names = list(group[0]["result"]["components"])
        parts = [
            f"{n} {sum(r['result']['components'][n]['auroc'] for r in group) / len(group):.3f}"
            for n in names
            if all(n in r["result"]["components"] for r in group)
        ]
        lines.append(f"- {family} {size} px: " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", default="chelsea,coins", help=f"comma-separated, of {', '.join(CATEGORIES)}")
    parser.add_argument("--families", default="vae,vaegan")
    parser.add_argument("--sizes", default="64", help="comma-separated image sizes (e.g. 64,128)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="passes over the training crops (default: genlab's one-class budget)"
    )
    parser.add_argument("--crop", type=int, default=128, help="crop side in the photograph's pixels")
    parser.add_argument("--shift", type=int, default=12, help="largest shift of a crop, px")
    parser.add_argument("--train", type=int, default=200, help="train/good images per category")
    parser.add_argument("--test-good", type=int, default=30, help="test/good images per category")
    parser.add_argument("--per-defect", type=int, default=10, help="test images per defect type and category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="data and runs (default: a temporary folder)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already exist")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON instead of tables")
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(given)
    categories = [c for c in args.categories.split(",") if c]
    for name in categories:
        if name not in CATEGORIES:
            parser.error(f"unknown category {name!r}; one of {', '.join(CATEGORIES)}")
    families = [f for f in args.families.split(",") if f]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genlab-inspection-") as tmp:
        scratch = Path(tmp) / "wheel"
        if args.out is None:
            args.out = Path(tmp)
        args.out = args.out.resolve()
        rows = []
        for name in categories:
            folder = category_folder(name, args, scratch)
            for size in sizes:
                for family in families:
                    rows.append(train_and_evaluate(family, folder, size, args))
    total = time.perf_counter() - started
    import torch

    header = {
        "command": shlex.join([".venv/bin/python", "benchmarks/inspection.py", *given]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "set": f"{len(categories)} categories ({', '.join(categories)}); per category {args.train} train/good "
        f"(less genlab's held-out share), {args.test_good} test/good, {args.per_defect} per defect type "
        f"({', '.join(DEFECTS)}); crops of {args.crop} px, shifts up to {args.shift} px, seed {args.seed}",
        "budget": f"{args.epochs or 'the default number of'} epochs per model at {', '.join(map(str, sizes))} px; "
        f"families {', '.join(families)}",
        "total_seconds": round(total, 1),
    }
    if args.json:
        print(json.dumps({**header, "rows": rows}, indent=1))
        return
    print(f"# {header['command']}")
    print(f"# {header['machine']}")
    print(f"# {header['set']}")
    print(f"# {header['budget']}; total {total / 60:.1f} min")
    print()
    print(tables(rows))


if __name__ == "__main__":
    main()
