"""One-class anomaly detection over every class: the AUROC of each score, per family and normal class.

For each family (``--families``, default all) and each class K of the dataset (``--classes``, default
all ten), trains a model on class K of the training split with genlab's one-class defaults
(``genlab train FAMILY --normal-class K``; ``--steps`` overrides the budget), then scores the test
split with ``genlab eval anomaly`` (class K normal, every other class anomalous) and records the
AUROC of the primary ``score`` and of every component. Prints, per family, the primary score's
AUROC for each class with the mean and minimum, the mean AUROC of every component, and the time
taken; writes every figure as JSON (``--json-out``).

The contrast guard (``low_contrast``, :mod:`genlab.models.scoring`) is measured on the same models in the
same run: the primary score's AUROC with the guard and without it (the same model with its contrast floor
at 0, as a checkpoint fitted without the guard scores), the
largest AUROC loss per family and the digit it falls on, how many test images the guard touches, and the
scores of blank (0), mid-grey (128) and white (255) frames against the calibrated threshold.
Requirement: no digit loses more than 0.005 AUROC to the guard in any family.

Nothing here chooses anything: the scores and their fitting are fixed by the model family, fitted
on normal training and validation images only, and the test anomalies are only ever scored. The
primary scores were chosen with ``--split val --pairs`` (AUROC on the validation split, where the
other digits' validation images are the anomalies, for every component and every standardised
pair of components); the test split reports them.

Targets (mnist-5k): best family mean >= 0.97, every family >= 0.93, no class below 0.85.

Run:  .venv/bin/python benchmarks/one_class.py [--dataset mnist-5k] [--families vae gan vaegan]
      [--classes 0 1 ...] [--steps N] [--seed S] [--out runs/one-class] [--json-out benchmarks/results/one_class.json]
A run directory that already holds a finished model is evaluated again, not retrained (so an
interrupted benchmark continues where it stopped); ``--fresh`` retrains.
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


def combinations(run_dir: Path, dataset: str, k: int, split: str, data_dir: str) -> dict[str, float]:
    """AUROC on ``split`` of every pair of score components, each standardised on the held-out normal images
    (the validation images of class K) and averaged: the candidates the primary score was chosen from."""
    from itertools import combinations as pairs

    from genlab.eval.anomaly import AnomalySettings, labelled_images, ranking_metrics
    from genlab.eval.model_source import ensure_source

    from genlab.data import load_split

    source = ensure_source(str(run_dir))
    normal = source.scores(load_split(dataset, "val", data_dir).only_class(k).images.numpy())
    images, is_anomaly = labelled_images(AnomalySettings(dataset, k, None, split, data_dir), tuple(source.image_shape))
    scores = source.scores(images)
    z = {n: (v - normal[n].mean()) / max(normal[n].std(), 1e-12) for n, v in scores.items() if n != "score"}
    return {f"{a}+{b}": round(ranking_metrics((z[a] + z[b]) / 2, is_anomaly)["auroc"], 4) for a, b in pairs(z, 2)}


CONSTANT_LEVELS = (0, 128, 255)  # the constant frames the guard is measured on
MAX_GUARD_LOSS = 0.005  # the largest AUROC the guard may cost any digit


def guard_figures(run_dir: Path, dataset: str, k: int, split: str, data_dir: str) -> dict[str, Any]:
    """The primary score's AUROC with and without the contrast guard on ``split`` (class K normal), the test
    images the guard touches, and the scores of constant frames with and without it against the threshold."""
    import numpy as np
    from genlab.eval.anomaly import AnomalySettings, labelled_images, ranking_metrics
    from genlab.eval.model_source import ensure_source

    from genlab.models.scoring import LOW_CONTRAST
    from genlab.thresholds import DEFAULT_PERCENTILE, quantile

    source = ensure_source(str(run_dir))  # the checkpoint's model, so its guard can be turned off below
    images, is_anomaly = labelled_images(AnomalySettings(dataset, k, None, split, data_dir), tuple(source.image_shape))
    constant = np.stack([np.full(tuple(source.image_shape), v, np.uint8) for v in CONSTANT_LEVELS])
    guarded, frames = source.scores(images), source.scores(constant)
    source.model.score_fit.contrast_floor.zero_()  # the guard off: the score of a fit without a contrast floor
    unguarded, unguarded_frames = source.scores(images), source.scores(constant)
    touched = np.asarray(guarded[LOW_CONTRAST]) > 0
    return {
        "auroc_with_guard": round(ranking_metrics(guarded["score"], is_anomaly)["auroc"], 4),
        "auroc_without_guard": round(ranking_metrics(unguarded["score"], is_anomaly)["auroc"], 4),
        "guarded_normal": int(touched[~is_anomaly].sum()),
        "guarded_anomalies": int(touched[is_anomaly].sum()),
        "threshold": quantile(source.calibration, "score", DEFAULT_PERCENTILE),
        "constant_frames": {
            str(level): {"with_guard": float(frames["score"][i]), "without_guard": float(unguarded_frames["score"][i])}
            for i, level in enumerate(CONSTANT_LEVELS)
        },
    }


def one_run(
    family: str,
    dataset: str,
    k: int,
    steps: int | None,
    data_dir: str,
    run_dir: Path,
    fresh: bool,
    split: str = "test",
    with_pairs: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    from genlab.eval.anomaly import evaluate_anomaly
    from genlab.training.loop import resume, train

    from genlab.checkpoint import load_checkpoint
    from genlab.config import TrainConfig
    from genlab.run_dir import LAST_CHECKPOINT

    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    if (run_dir / LAST_CHECKPOINT).exists():
        summary = resume(family, run_dir)  # finished: only refits and recalibrates if it needs to
    else:
        epochs = None  # genlab's one-class default
        if steps is not None:  # whole epochs of the one class's training images
            from genlab.data import load_split

            per_epoch = len(load_split(dataset, "train", data_dir).only_class(k)) // TrainConfig.batch_size
            epochs = -(-steps // per_epoch)
        tc = TrainConfig(
            dataset=dataset, data_dir=data_dir, normal_class=k, epochs=epochs, quality_every=0, log_every=50, seed=seed
        )
        summary = train(family, {}, tc, run_dir)
    train_wall = time.perf_counter() - started
    started = time.perf_counter()
    result = evaluate_anomaly(str(run_dir), data_dir=data_dir, split=split)
    ckpt = load_checkpoint(run_dir)
    return {
        "split": split,
        **({"pairs_auroc": combinations(run_dir, dataset, k, split, data_dir)} if with_pairs else {}),
        "guard": guard_figures(run_dir, dataset, k, split, data_dir),
        "family": family,
        "dataset": dataset,
        "normal_class": k,
        "seed": ckpt["seed"],
        "steps": ckpt["step"],
        "train_seconds": summary["train_seconds"],
        "train_wall_seconds": round(train_wall, 1),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "counts": result["counts"],
        "auroc": {name: round(row["auroc"], 4) for name, row in result["components"].items()},
        "auprc": {name: round(row["auprc"], 4) for name, row in result["components"].items()},
        "tpr": {name: row["tpr"] for name, row in result["components"].items()},
        "fpr": {name: row["fpr"] for name, row in result["components"].items()},
    }


def tables(rows: list[dict[str, Any]], classes: list[int]) -> str:
    lines = [
        "primary score, AUROC per normal class:",
        "",
        "| family | " + " | ".join(map(str, classes)) + " | mean | min |",
        "|---|" + "---:|" * (len(classes) + 2),
    ]
    families = list(dict.fromkeys(r["family"] for r in rows))
    for family in families:
        by_class = {r["normal_class"]: r["auroc"]["score"] for r in rows if r["family"] == family}
        values = [by_class[k] for k in classes if k in by_class]
        cells = [f"{by_class[k]:.3f}" if k in by_class else "" for k in classes]
        lines.append(
            f"| {family} | " + " | ".join(cells) + f" | **{sum(values) / len(values):.3f}** | {min(values):.3f} |"
        )
    lines += ["", "every component, mean (min) AUROC over the classes:", ""]
    for family in families:
        family_rows = [r for r in rows if r["family"] == family]
        names = list(family_rows[0]["auroc"])
        parts = []
        for name in names:
            values = [r["auroc"][name] for r in family_rows]
            parts.append(f"{name} {sum(values) / len(values):.3f} ({min(values):.3f})")
        steps = sorted({r["steps"] for r in family_rows})
        seconds = sum(r["train_seconds"] for r in family_rows)
        lines.append(f"- {family} ({'/'.join(map(str, steps))} steps, {seconds:.0f} s training): " + ", ".join(parts))
        if all("pairs_auroc" in r for r in family_rows):
            means = {
                p: sum(r["pairs_auroc"][p] for r in family_rows) / len(family_rows)
                for p in family_rows[0]["pairs_auroc"]
            }
            best = sorted(means, key=means.get, reverse=True)[:5]
            lines.append(
                "  best standardised pairs, mean (min): "
                + ", ".join(f"{p} {means[p]:.3f} ({min(r['pairs_auroc'][p] for r in family_rows):.3f})" for p in best)
            )
    return "\n".join(lines + guard_table(rows, families, classes))


def guard_table(rows: list[dict[str, Any]], families: list[str], classes: list[int]) -> list[str]:
    """The primary score's AUROC with and without the contrast guard, per family and class, and its largest loss."""
    lines = [
        "",
        "contrast guard: primary score AUROC with / without it, per normal class; blank, grey and white frames:",
        "",
        "| family | " + " | ".join(map(str, classes)) + " | max loss (class) | frames above threshold |",
        "|---|" + "---:|" * (len(classes) + 2),
    ]
    for family in families:
        by_class = {r["normal_class"]: r["guard"] for r in rows if r["family"] == family and "guard" in r}
        if not by_class:
            continue
        cells = [
            f"{g['auroc_with_guard']:.4f} / {g['auroc_without_guard']:.4f}" if (g := by_class.get(k)) else ""
            for k in classes
        ]
        losses = {k: g["auroc_without_guard"] - g["auroc_with_guard"] for k, g in by_class.items()}
        worst = max(losses, key=losses.get)
        above = sum(f["with_guard"] > g["threshold"] for g in by_class.values() for f in g["constant_frames"].values())
        frames = sum(len(g["constant_frames"]) for g in by_class.values())
        verdict = "ok" if losses[worst] <= MAX_GUARD_LOSS else f"over {MAX_GUARD_LOSS}"
        lines.append(
            f"| {family} | " + " | ".join(cells) + f" | {losses[worst]:+.4f} ({worst}, {verdict}) | {above}/{frames} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES)
    parser.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--steps", type=int, help="training steps per model (default: genlab's one-class budget)")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed (runs of another seed get their own directories)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "one-class")
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "one_class.json")
    parser.add_argument("--fresh", action="store_true", help="retrain models that already exist under --out")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="where the AUROC is measured: test (the report) or val (where the primary score was chosen)",
    )
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="also every pair of standardised components (the candidates; use with --split val)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the rows of --json-out for families / classes not run now"
    )
    args = parser.parse_args()

    from genlab.files import atomic_write_bytes

    started = time.perf_counter()
    rows = []
    for family in args.families:
        for k in args.classes:
            run_dir = args.out / args.dataset / (f"{family}-c{k}" + (f"-seed{args.seed}" if args.seed else ""))
            row = one_run(
                family,
                args.dataset,
                k,
                args.steps,
                args.data_dir,
                run_dir,
                args.fresh,
                args.split,
                args.pairs,
                args.seed,
            )
            rows.append(row)
            print(
                f"{family} class {k}: score AUROC {row['auroc']['score']:.4f} ({row['steps']} steps, "
                f"{row['train_seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    total = time.perf_counter() - started
    if args.merge and args.json_out.exists():  # keep the other families' / classes' rows of an earlier invocation
        fresh = {(r["family"], r["normal_class"]) for r in rows}
        earlier = json.loads(args.json_out.read_text())
        rows = [
            r for r in earlier["rows"] if (r["family"], r["normal_class"]) not in fresh and r["dataset"] == args.dataset
        ] + rows
        rows.sort(key=lambda r: (FAMILY_NAMES.index(r["family"]), r["normal_class"]))
    seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in rows)
    print(
        f"# one-class {args.dataset}, AUROC on the {args.split} split, {platform.node()}, "
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')}; this invocation "
        f"{total / 60:.1f} min; training + evaluation of all {len(rows)} models {seconds / 60:.1f} min"
    )
    print(tables(rows, sorted({r["normal_class"] for r in rows})))
    report = {
        "dataset": args.dataset,
        "steps": args.steps,
        "seed": args.seed,
        "machine": platform.node(),
        "train_and_eval_seconds": round(seconds, 1),
        "rows": rows,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.json_out, (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
