"""Conditional generation against the unconditional twins, on mnist-5k.

For each family (``--families``, default all) trains a conditional model (``--conditional``) and its
unconditional twin with the same budget (``--epochs``, default 20: the README's main command; the
same defaults otherwise), exports each (best.pt, what a user serves) and measures the exports:

- class fidelity (conditional only): the share of ``--n`` samples (balanced, seeded labels) that the
  reference classifier assigns to the digit they were asked for, next to that classifier's own accuracy
  on the test split (``genlab.eval.class_fidelity``);
- pooled Inception KID (and FID) of ``--n`` samples against ``--n`` held-out images (val + test): for the
  conditional model, samples over balanced labels (``genlab eval fid``).

Targets: class fidelity >= 0.97 for the conditional VAE-GAN and the auxiliary-classifier GAN,
with a pooled KID no worse than the unconditional twin's. It also writes one grid per conditional model
with one row per digit (``--grids``, default docs/images/).

Runs that already exist are reused (``--fresh`` trains again); results go to
``benchmarks/results/conditional.json``.

Run:  .venv/bin/python benchmarks/conditional.py [--families vaegan gan vae] [--epochs 20] [--n 1000] [--train-seed S]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genlab.families import FAMILY_NAMES  # noqa: E402

DATASET = "mnist-5k"
REFERENCE = "mnist-5k:heldout"  # the 1,000 images training never sees
GRID_PER_CLASS = 8
TARGET_FIDELITY = 0.97
TARGETED = ("vaegan", "gan")  # the families the issue sets the fidelity target for


def train_run(family: str, conditional: bool, epochs: int, out: Path, fresh: bool, seed: int = 0) -> dict[str, Any]:
    """Train (or reuse a complete run); returns the training time."""
    from genlab.training.loop import train

    from genlab.checkpoint import load_checkpoint
    from genlab.config import TrainConfig

    if fresh and out.exists():
        shutil.rmtree(out)
    if not (out / "last.pt").exists() or not load_checkpoint(out / "last.pt").get("complete"):
        if out.exists():
            shutil.rmtree(out)
        train(
            family,
            {"conditional": True} if conditional else {},
            TrainConfig(dataset=DATASET, epochs=epochs, seed=seed),
            out,
        )
    ckpt = load_checkpoint(out / "last.pt")
    if (ckpt["epoch"], ckpt["seed"]) != (epochs, seed):
        raise SystemExit(
            f"{out} holds a {ckpt['epoch']}-epoch run of seed {ckpt['seed']}, not {epochs} of seed {seed}; pass --fresh"
        )
    return {"train_seconds": round(ckpt["metrics"]["train_seconds"], 1)}


def export_run(run_dir: Path) -> Path:
    from genlab.export.onnx_export import export_checkpoint

    export_checkpoint(str(run_dir), str(run_dir / "export"), overwrite=True)
    return run_dir / "export"


def kid_figures(export_dir: Path, n: int, seed: int) -> dict[str, Any]:
    from genlab.eval.fid import compute_fid

    result = compute_fid(
        str(export_dir), ref=REFERENCE, n=n, metrics=("fid", "kid"), extractor="inception", seed=seed, progress=False
    )
    values = result["values"]
    return {
        "kid": values.get("kid"),
        "kid_std": values.get("kid_std"),
        "fid": values.get("fid"),
        "n": result["n"],
        "n_reference": result["n_reference"],
    }


def fidelity_figures(export_dir: Path, n: int, seed: int) -> dict[str, Any]:
    from genlab.eval.class_fidelity import measure

    result = measure(str(export_dir), n=n, seed=seed)
    return {
        "class_fidelity": result["class_fidelity"],
        "class_fidelity_per_class": result["class_fidelity_per_class"],
        "classifier_test_accuracy": result["classifier_test_accuracy"],
    }


def write_grid(export_dir: Path, path: Path, seed: int) -> None:
    """One row of GRID_PER_CLASS samples per class, from the export's fitted prior: what /generate serves."""
    from genlab.export.reader import open_export

    from genlab.imageio import save_grid
    from genlab.latents import class_rows, sample_latents

    model = open_export(export_dir, providers="cpu")
    labels = class_rows(len(model.class_names), GRID_PER_CLASS)
    z = sample_latents(len(labels), model.latent_dim, seed, prior=model.prior, labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(model.decode(z, labels), path, nrow=GRID_PER_CLASS)


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | class fidelity (conditional) | classifier test accuracy | pooled KID conditional | "
        "pooled KID unconditional | KID ratio | FID conditional | FID unconditional | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        c, u = r["conditional"], r["plain"]
        ratio = c["kid"] / u["kid"] if u["kid"] else float("nan")
        verdict = []
        if r["family"] in TARGETED:
            verdict.append(f"fidelity {'met' if c['class_fidelity'] >= TARGET_FIDELITY else 'missed'}")
        verdict.append(f"KID {'met' if c['kid'] <= u['kid'] else 'missed'}")
        lines.append(
            f"| {r['family']} | {c['class_fidelity']:.3f} | {c['classifier_test_accuracy']:.3f} | {c['kid']:.4f} | "
            f"{u['kid']:.4f} | {ratio:.2f} | {c['fid']:.1f} | {u['fid']:.1f} | {', '.join(verdict)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000, help="samples per measurement (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the measurements")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=0,
        help="training seed of both models (runs of another seed get their own directories)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "conditional")
    parser.add_argument("--grids", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "conditional.json")
    parser.add_argument("--fresh", action="store_true", help="train again even where a complete run exists")
    args = parser.parse_args()

    from genlab.files import atomic_write_bytes

    started = time.perf_counter()
    rows = []
    for family in args.families:
        row: dict[str, Any] = {"family": family}
        for kind in ("conditional", "plain"):
            run_dir = args.out / (f"{family}-{kind}" + (f"-seed{args.train_seed}" if args.train_seed else ""))
            figures = train_run(family, kind == "conditional", args.epochs, run_dir, args.fresh, args.train_seed)
            export_dir = export_run(run_dir)
            figures.update(kid_figures(export_dir, args.n, args.seed))
            if kind == "conditional":
                figures.update(fidelity_figures(export_dir, args.n, args.seed))
                write_grid(export_dir, args.grids / f"conditional-{family}-digits.png", args.seed)
            row[kind] = figures
            print(json.dumps({"family": family, "kind": kind, **figures}), file=sys.stderr, flush=True)
        rows.append(row)
    meta = {
        "dataset": DATASET,
        "reference": REFERENCE,
        "epochs": args.epochs,
        "n": args.n,
        "seed": args.seed,
        "train_seed": args.train_seed,
        "host": platform.node(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.json_out, (json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n").encode())
    print(
        f"# conditional vs unconditional on {DATASET}, {args.epochs} epochs each; {args.n} samples vs {REFERENCE} "
        f"(Inception KID/FID); {meta['host']}, {meta['when']}, {meta['minutes']} min"
    )
    print(render(rows))


if __name__ == "__main__":
    main()
