"""``genlab eval fid MODEL``: the command-line face of :func:`eval.fid.compute_fid`.

Light at import (the ``genlab`` parser imports it); torch and torch-fidelity load only when
the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from genlab.eval.extractors import EXTRACTOR_CHOICES
from genlab.eval.fid import BOOTSTRAP_ROUNDS, METRICS, OF_CHOICES

from genlab.devices import DEVICE_HELP


def _metrics(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}"
        )
    return chosen


def add_parser(eval_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fid`` to the ``genlab eval`` subcommands; returns its parser."""
    p = eval_subparsers.add_parser(
        "fid",
        help="FID / KID / precision-recall of a model's samples or reconstructions (torch-fidelity)",
        description="FID and friends of MODEL (a checkpoint, run directory, export directory or BentoML model tag) "
        "against a dataset split, computed by torch-fidelity. Reference statistics are cached in "
        "$GENLAB_CACHE (default ~/.cache/genlab). Every number is printed with the settings it depends on. "
        "A conditional model samples balanced, seeded labels and also reports class fidelity: the share of "
        "samples the reference classifier assigns to the class asked for, beside that classifier's test accuracy.",
    )
    _add_model_arguments(p)
    p.add_argument(
        "--ref", metavar="DATASET[:split]", help="reference images (default: the model's dataset, test split)"
    )
    p.add_argument(
        "--n",
        type=int,
        default=1000,
        help="number of samples; the reference uses as many (or all it has) (default 1000)",
    )
    p.add_argument("--metrics", type=_metrics, default=("fid", "kid"), metavar="fid,kid,prc", help="default fid,kid")
    p.add_argument(
        "--of",
        choices=OF_CHOICES,
        default="samples",
        help="samples from the prior (default), or reconstructions of the reference images (encoder models)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the latents (and of KID's subsets)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_ROUNDS,
        metavar="B",
        help=f"rounds of the FID bootstrap interval (default {BOOTSTRAP_ROUNDS}; 0: none)",
    )
    p.add_argument(
        "--extractor",
        choices=EXTRACTOR_CHOICES,
        default="inception",
        help="inception (FID, the standard) or lenet (a quick CPU check: 'FD (genlab-lenet features)', not FID)",
    )
    p.add_argument("--inception-weights", metavar="PATH", help="torch-fidelity-format Inception weights to use")
    p.add_argument("--data-dir", default="data", help="where the standard dataset files are (default ./data)")
    p.add_argument(
        "--per-class",
        action="store_true",
        help="conditional models: also each class's metrics, its n/K samples against the reference images of "
        "that class (pooled numbers and class fidelity are always given)",
    )
    save = p.add_mutually_exclusive_group()
    save.add_argument(
        "--save", metavar="RUN_DIR", help="save the result in RUN_DIR/eval/ (default: the checkpoint's run directory)"
    )
    save.add_argument("--no-save", action="store_true", help="do not save the result")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_fid_command)
    return p


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, and what names a served model."""
    p.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint file, run directory, export directory, BentoML model tag, or http://HOST:PORT of a running "
        "genlab serve (samples decoded by the server; GENLAB_API_KEY is sent as its bearer key)",
    )
    p.add_argument(
        "--model", dest="served_model", metavar="NAME", help="MODEL is a URL: the served model (default: its default)"
    )
    p.add_argument(
        "--prior-from",
        metavar="EXPORT",
        help="MODEL is a URL whose /models does not publish the fitted prior's numbers: a copy of the served export "
        "to read them from (refused unless its file hashes are the served model's)",
    )


def save_directory(args: argparse.Namespace, result: dict[str, Any]) -> tuple[Path | None, str]:
    """Where the result goes (--save, else the run directory of a checkpoint), or None and why not."""
    if args.no_save:
        return None, "not saved (--no-save)"
    if args.save:
        return Path(args.save), ""
    if result["kind"] == "checkpoint":
        return Path(result["model"]).parent, ""
    what = "a served model" if result["kind"] == "http" else "an export"
    return None, f"not saved: {what} has no run directory; --save RUN_DIR keeps the result there for genlab report"


def run_fid_command(args: argparse.Namespace) -> int:
    from genlab.eval.fid import compute_fid, result_name, summary_line
    from genlab.eval.results import save_result

    result = compute_fid(
        args.model,
        ref=args.ref,
        n=args.n,
        metrics=args.metrics,
        of=args.of,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        extractor=args.extractor,
        inception_weights=args.inception_weights,
        data_dir=args.data_dir,
        progress=sys.stderr.isatty(),
        per_class=args.per_class,
        bootstrap=args.bootstrap,
        served_model=args.served_model,
        prior_from=args.prior_from,
    )
    if result is None:  # a torchrun rank other than 0: it did its share, rank 0 reports
        return 0
    directory, why_not = save_directory(args, result)
    if directory is not None:
        result["saved"] = str(save_result(directory, result_name(result), result))
    for warning in result["warnings"]:
        print(f"genlab eval fid: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(summary_line(result) + (f"; saved {result['saved']}" if "saved" in result else ""))
    if why_not:
        print(f"genlab eval fid: {why_not}", file=sys.stderr)
    return 0
