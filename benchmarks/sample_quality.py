"""Sample quality of each family trained with its defaults for the README's main-command budget.

For every family (``--families``, default all) and every setting given with ``--variant NAME=KEY=VALUE,...``
(default: the family's defaults only), trains on mnist-5k for ``--epochs`` (20, the main command) and
prints what the training loop tracked at the end (genlab.quality, in the reference classifier's
features, 500 fixed N(0, I) samples against the validation split): the confident-sample share, the
class entropy, the Fréchet and kernel distances (``fd``, ``kd``); the same for 500 samples of the
latent prior fitted after training (``prior_*``; families with an encoder: what exports generate,
genlab.latents); the best epoch; the training time
and the time quality tracking added (its share of the training time); and, with ``--inception N``,
Inception KID and FID of N samples against N held-out images (``genlab eval fid``; slow on a CPU).

Targets: the VAE-GAN reaches a confident share >= 0.85 with class entropy >= 0.97; the
GAN and VAE-GAN beat their former lenet FD by 2x; tracking costs about 5% of an epoch or less.

Run:  .venv/bin/python benchmarks/sample_quality.py [--families vaegan gan] [--epochs 20]
      [--variant ema=ema=0.999] [--inception 1000] [--out runs/sample-quality] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genlab.families import FAMILY_NAMES  # noqa: E402


def _variants(texts: list[str]) -> dict[str, list[str]]:
    """'NAME=KEY=VALUE,KEY=VALUE' -> {NAME: ['KEY=VALUE', ...]}; just 'defaults' when none is given
    (``--variant defaults=`` adds the defaults to other variants)."""
    variants: dict[str, list[str]] = {} if texts else {"defaults": []}
    for text in texts:
        name, _, pairs = text.partition("=")
        variants[name] = [p for p in pairs.split(",") if p]
    return variants


def run_one(family: str, overrides: list[str], epochs: int, out: Path) -> dict[str, Any]:
    from genlab.training.loop import train

    from genlab.checkpoint import load_checkpoint
    from genlab.config import TrainConfig, parse_overrides, split_overrides

    model_kw, train_kw = split_overrides(parse_overrides(overrides))
    started = time.perf_counter()
    summary = train(family, model_kw, TrainConfig(**{"dataset": "mnist-5k", "epochs": epochs, **train_kw}), out)
    wall = time.perf_counter() - started
    epochs_log = load_checkpoint(out)["metrics"]["epochs"]
    last = epochs_log[-1]
    tracking = sum(e.get("quality_seconds", 0.0) for e in epochs_log)
    prior = summary.get("prior_quality") or {}
    return {
        "family": family,
        "overrides": overrides,
        "epochs": epochs,
        "confident": last.get("quality_confident"),
        "class_entropy": last.get("quality_class_entropy"),
        "lenet_fd": last.get("quality_fd"),
        "lenet_kd": last.get("quality_kd"),
        # what exports generate: samples of the latent prior fitted after training (families with an encoder)
        "prior_confident": prior.get("confident"),
        "prior_class_entropy": prior.get("class_entropy"),
        "prior_lenet_fd": prior.get("fd"),
        "prior_lenet_kd": prior.get("kd"),
        "best_epoch": (summary["best"] or {}).get("epoch"),
        "best_lenet_fd": (summary["best"] or {}).get("quality_fd"),
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1),
        "tracking_seconds": round(tracking, 2),
        "tracking_share": round(tracking / max(summary["train_seconds"], 1e-9), 4),
        "run_dir": str(out),
    }


def export_best(run_dir: Path) -> Path:
    """What a user serves: ``genlab export RUN_DIR`` (best.pt where there is one)."""
    from genlab.export.onnx_export import export_checkpoint

    export_checkpoint(str(run_dir), str(run_dir / "export"), overwrite=True)
    return run_dir / "export"


def inception_figures(run_dir: Path, n: int) -> dict[str, Any]:
    from genlab.eval.fid import compute_fid

    result = compute_fid(
        str(export_best(run_dir)),
        ref="mnist-5k:heldout",
        n=n,
        metrics=("fid", "kid"),
        extractor="inception",
        progress=False,
    )
    values = result["values"]
    return {
        "inception_fid": values.get("fid"),
        "inception_kid": values.get("kid"),
        "inception_n": result["n"],
        "inception_n_reference": result["n_reference"],
    }


def render(rows: list[dict[str, Any]]) -> str:
    cols = [
        "family",
        "variant",
        "confident",
        "class_entropy",
        "lenet_fd",
        "prior_confident",
        "prior_class_entropy",
        "prior_lenet_fd",
        "best_epoch",
        "train_seconds",
        "tracking_share",
        "inception_kid",
        "inception_fid",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE,...")
    parser.add_argument(
        "--inception", type=int, default=0, metavar="N", help="Inception FID/KID with N samples (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "sample-quality")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for family in args.families:
        for name, overrides in _variants(args.variant).items():
            out = args.out / f"{family}-{name}"
            if (out / "last.pt").exists():
                raise SystemExit(f"{out} exists: remove it or choose another --out")
            row = {**run_one(family, overrides, args.epochs, out), "variant": name}
            if args.inception:
                row.update(inception_figures(out, args.inception))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    import platform

    print(
        f"# sample quality on mnist-5k, {args.epochs} epochs; {platform.node()}, {time.strftime('%Y-%m-%dT%H:%M:%S')}"
    )
    print(json.dumps(rows, indent=2) if args.json else render(rows))


if __name__ == "__main__":
    main()
