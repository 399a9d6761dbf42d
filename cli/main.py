"""The ``genlab`` command: one console script with subcommands, above every stage.

Each subcommand is a short function over importable, tested code; heavy imports happen inside
it. A :class:`~genlab.errors.GenlabError` (bad flag, missing file, corrupt artifact) prints
one line and exits with code 2 (a diverged run exits with 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from genlab.console import Parser, print_result
from genlab.devices import DEVICE_HELP
from genlab.errors import GenlabError
from genlab.families import FAMILIES, FAMILY_NAMES
from genlab.run_dir import LAST_CHECKPOINT

# `genlab train` options -> the TrainConfig field each sets (all default to None: "not typed")
TRAIN_FLAGS = {
    "--dataset": "dataset",
    "--data-dir": "data_dir",
    "--download": "download",
    "--normal-class": "normal_class",
    "--condition-on": "condition_on",
    "--translate": "translate",
    "--epochs": "epochs",
    "--max-steps": "max_steps",
    "--batch-size": "batch_size",
    "--lr": "lr",
    "--seed": "seed",
    "--device": "device",
    "--log-every": "log_every",
}


def _typed_train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the user set on the command line, by flag."""
    return {flag: getattr(args, field) for flag, field in TRAIN_FLAGS.items() if getattr(args, field) is not None}


def _resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    """With --resume, only the typed RESUME_OVERRIDABLE options override the checkpoint; any other is refused."""
    from genlab.training.loop import RESUME_OVERRIDABLE

    typed = _typed_train_options(args)
    refused = [flag for flag in typed if TRAIN_FLAGS[flag] not in RESUME_OVERRIDABLE]
    refused += [
        flag
        for flag, value in (("--arch", args.arch), ("--set", args.set), ("--conditional", args.conditional))
        if value
    ]
    if refused:
        allowed = ", ".join(flag for flag, field in TRAIN_FLAGS.items() if field in RESUME_OVERRIDABLE)
        raise GenlabError(
            f"{refused[0]} cannot be used with --resume: the run keeps the configuration in its checkpoint "
            f"(only {allowed} may change); drop {refused[0]}, or start a new run with another --out"
        )
    return {TRAIN_FLAGS[flag]: value for flag, value in typed.items()}


def _cmd_train(args: argparse.Namespace) -> int:
    from genlab.training.loop import resume, train

    if args.resume:
        summary = resume(args.family, args.out, _resume_changes(args))
    else:
        from genlab.config import TrainConfig, parse_overrides, split_overrides

        model_kw, train_kw = split_overrides(parse_overrides(args.set or []))
        if args.arch:
            model_kw["arch"] = args.arch
        if args.conditional:
            model_kw["conditional"] = True
        train_kw.update({TRAIN_FLAGS[flag]: value for flag, value in _typed_train_options(args).items()})
        summary = train(args.family, model_kw, TrainConfig(**train_kw), args.out)
    again = f"genlab train {args.family} --out {shlex.quote(args.out)} --resume"
    if summary["stopped"] == "interrupted":
        print(
            f"interrupted at step {summary['step']}; checkpoint saved to {summary['checkpoint']}; "
            f"continue with: {again}",
            file=sys.stderr,
        )
        return 130

    def text(s: dict[str, Any]) -> str:
        state = "complete" if s["stopped"] is None else s["stopped"].replace("_", " ")
        rate = f", {s['images_per_s']:,.0f} img/s" if s["images_per_s"] else ""
        line = (
            f"{s['family']} on {s['dataset']}: {state} at epoch {s['epoch']}/{s['epochs']}, step {s['step']} "
            f"({s['train_seconds']:.1f} s{rate}); checkpoint {s['checkpoint']}"
        )
        line += "".join(f"; {key} {s[key]}" for key in ("samples", "reconstructions") if s[key])
        if s["stopped"] == "max_steps":
            line += f"; to go on: {again} --max-steps N (N > {s['max_steps']})"
        return line

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        print_result(summary, args.json, text)
        warning = (summary.get("calibration_check") or {}).get("warning")
        if warning:
            print(f"genlab train: warning: {warning}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    target = Path(args.checkpoint)
    model_name = not target.exists() and "/" not in args.checkpoint and target.suffix != ".pt"
    if (target / "manifest.json").is_file() or model_name:  # an export directory or a model in the BentoML store
        from genlab.export.reader import read_export

        info = read_export(args.checkpoint).describe()
    else:
        info = _checkpoint_info(target)

    def text(d: dict[str, Any]) -> str:
        lines = []
        for key, value in d.items():
            if key == "calibration" and isinstance(value, dict) and isinstance(value.get("scores"), dict):
                lines += _calibration_lines(value)
            elif isinstance(value, dict):
                lines.append(f"{key}:")
                lines += [f"  {k}: {json.dumps(v, default=str)}" for k, v in value.items()]
            else:
                lines.append(f"{key}: {value}")
        return "\n".join(lines)

    print_result(info, args.json, text)
    return 0


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """A checkpoint's calibration for people: the split, and each score's p50 / p95 / p99, one line each (--json
    adds what each score means)."""
    lines = [f"calibration: on {calibration['n']} {calibration['split']} images (p50 / p95 / p99; --json: meanings)"]
    check = calibration.get("check")
    if check and check.get("unseen_fpr") is not None:
        lines.append(
            f"  threshold (p{check['percentile']:g}) on unseen normal images: flags {check['unseen_fpr']:.1%} "
            f"({check['method']})"
        )
    if check and check.get("warning"):
        lines.append(f"  warning: {check['warning']}")
    for name, row in calibration["scores"].items():
        figures = " / ".join(f"{row[p]:.4g}" for p in ("p50", "p95", "p99") if p in row)
        lines.append(f"  {name}: {figures}")
    return lines


def _checkpoint_info(target) -> dict[str, Any]:
    from genlab.checkpoint import describe, load_checkpoint
    from genlab.run_dir import BEST_CHECKPOINT

    info = describe(load_checkpoint(target))
    best = target / BEST_CHECKPOINT
    if best.is_file():  # a run directory: its best checkpoint too
        described = describe(load_checkpoint(best))
        info["best_checkpoint"] = {
            "path": str(best),
            "epoch": described["epoch"],
            "step": described["step"],
            "complete": described["complete"],
            "why": described.get("selection"),
            "prior_sample_quality": {k: v for k, v in (described["prior_sample_quality"] or {}).items() if k != "prior"}
            or None,
            "epoch_metrics": described["last_epoch_metrics"],
        }
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genlab", description="Train, export, serve and evaluate VAE, GAN and VAE-GAN image models.")
    from genlab import __version__

    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from genlab.config import DEFAULT_EPOCHS, ONE_CLASS_STEPS, TrainConfig

    tc = TrainConfig()  # the defaults the help shows
    p = sub.add_parser(
        "train",
        help=f"train a model family into RUN_DIR/{LAST_CHECKPOINT}",
        description="Train VAE, GAN or VAE-GAN. Config keys not given as flags can be set with --set key=value "
        "(e.g. --set latent_dim=64 --set beta=0.5 --set gamma=0.01).",
    )
    p.add_argument("family", choices=FAMILY_NAMES, help="; ".join(f"{f.name}: {f.summary}" for f in FAMILIES.values()))
    p.add_argument(
        "--dataset",
        help=f"mnist-5k (embedded), mnist, fashion-mnist, cifar10, celeba, folder:PATH, or an inspection set: "
        f"mvtec:CATEGORY_DIR (MVTec AD layout) or inspect:PATH (normal/abnormal/mask folders) (default {tc.dataset})",
    )
    p.add_argument("--data-dir", help=f"where the standard dataset files are (default: ./{tc.data_dir})")
    p.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download missing dataset files (connected machines; default: off, read the files under --data-dir)",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoint, metrics, sample grids)")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"passes over the training images (default {DEFAULT_EPOCHS}; with --normal-class, enough epochs for "
        f"{ONE_CLASS_STEPS:,} steps)",
    )
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps (default: no limit)")
    p.add_argument("--batch-size", type=int, help=f"per process (default {tc.batch_size})")
    p.add_argument(
        "--lr", type=float, help="Adam learning rate (default: 2e-4; 3e-4 for vaegan; 1e-3 for a one-class vae)"
    )
    p.add_argument("--arch", choices=("conv", "mlp"), help="network type (default conv)")
    p.add_argument(
        "--normal-class",
        type=int,
        metavar="K",
        help="train on class K only (one-class anomaly setting; default: every class)",
    )
    p.add_argument(
        "--conditional",
        action="store_true",
        default=None,
        help="class-conditional model: conditional VAE, auxiliary-classifier GAN, conditional VAE-GAN; "
        "generate asks for a class (the dataset's labels) (default: unconditional)",
    )
    p.add_argument(
        "--condition-on",
        metavar="ATTR",
        help="celeba: the binary attribute of list_attr_celeba.txt that labels the images (e.g. Male; default: none)",
    )
    p.add_argument(
        "--translate",
        type=float,
        metavar="F",
        help=f"random shifts of up to F of the image size (e.g. 0.1; default {tc.translate:g}: none)",
    )
    p.add_argument("--seed", type=int, help=f"seed of the weights, batches and samples (default {tc.seed})")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--log-every",
        type=int,
        metavar="STEPS",
        help=f"steps between progress / metrics flushes (default {tc.log_every})",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any model or training config field (default: the family's defaults, docs/cli.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue RUN_DIR/{LAST_CHECKPOINT} exactly where it stopped, with its own configuration; "
        "only --epochs, --max-steps, --device and --log-every may change (default: a new run)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON (default: one line of text)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="print what a checkpoint or an export holds")
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT|EXPORT",
        help="a checkpoint file, a run directory (last.pt, and best.pt where there is one), an export "
        "directory or a model in the BentoML store",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    from genlab.export.commands import register as register_export

    register_export(sub)

    from genlab.service.commands import register as register_serve

    register_serve(sub)
    from genlab.eval.commands import register as register_eval

    register_eval(sub)
    return parser


# Where each stage's third-party modules come from: a command run without its extra says what to install.
EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("torch", "torchvision", "tqdm", "matplotlib", "mlxtend", "torch_fidelity", "sklearn", "scipy"), "train"
    ),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    **dict.fromkeys(("onnxruntime", "bentoml", "pydantic", "python_multipart", "starlette"), "serve"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GenlabError as err:
        print(f"genlab {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except ModuleNotFoundError as err:
        extra = EXTRA_OF_MODULE.get((err.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"genlab {args.command}: error: {err.name} is not installed; genlab {args.command} needs the "
            f"{extra} extra: pip install 'genlab[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"genlab {args.command}: interrupted", file=sys.stderr)
        return 130
