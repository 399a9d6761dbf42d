"""The ``genlab`` command: one console script with subcommands.

Each subcommand is a short function over importable, tested code; heavy imports happen inside
it. A :class:`~genlab.errors.GenlabError` (bad flag, missing file, corrupt artifact) prints
one line and exits with code 2 (a diverged run exits with 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from genlab.errors import GenlabError

DEFAULT_FAMILIES = ("vae", "gan", "vaegan")  # the registry's names, known without importing torch


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(result, indent=2, default=str) if as_json else text(result))


def _cmd_train(args: argparse.Namespace) -> int:
    from genlab.config import TrainConfig, parse_overrides, split_overrides
    from training.loop import train

    model_kw, train_kw = split_overrides(parse_overrides(args.set or []))
    if args.arch:
        model_kw["arch"] = args.arch
    flags = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "download": args.download,
        "normal_class": args.normal_class,
        "translate": args.translate,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
    }
    train_kw.update({k: v for k, v in flags.items() if v is not None})
    summary = train(args.family, model_kw, TrainConfig(**train_kw), args.out, resume=args.resume)
    if summary["stopped"] == "interrupted":
        print(f"interrupted at step {summary['step']}; checkpoint saved to {summary['checkpoint']}; "
              f"continue with: genlab train {args.family} --out {args.out} --resume", file=sys.stderr)
        return 130

    def text(s: dict[str, Any]) -> str:
        state = "complete" if s["stopped"] is None else s["stopped"].replace("_", " ")
        rate = f", {s['images_per_s']:,.0f} img/s" if s["images_per_s"] else ""
        return (f"{s['family']} on {s['dataset']}: {state} at epoch {s['epoch']}/{s['epochs']}, step {s['step']} "
                f"({s['train_seconds']:.1f} s{rate}); checkpoint {s['checkpoint']}; samples {s['samples']}")

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        _print(summary, args.json, text)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from genlab.checkpoint import describe, load_checkpoint

    info = describe(load_checkpoint(args.checkpoint))

    def text(d: dict[str, Any]) -> str:
        lines = []
        for key, value in d.items():
            if isinstance(value, dict):
                lines.append(f"{key}:")
                lines += [f"  {k}: {json.dumps(v, default=str)}" for k, v in value.items()]
            else:
                lines.append(f"{key}: {value}")
        return "\n".join(lines)

    _print(info, args.json, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genlab", description="Train, export, serve and evaluate VAE, GAN and VAE-GAN image models.")
    from genlab import __version__

    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model family into RUN_DIR/last.pt",
                       description="Train VAE, GAN or VAE-GAN. Config keys not given as flags can be set with --set key=value "
                                   "(e.g. --set latent_dim=64 --set beta=0.5 --set gamma=0.01).")
    p.add_argument("family", choices=DEFAULT_FAMILIES)
    p.add_argument("--dataset", help="mnist-5k (default, embedded), mnist, fashion-mnist, cifar10, celeba, or folder:PATH")
    p.add_argument("--data-dir", help="where the standard dataset files are (default: ./data)")
    p.add_argument("--download", action="store_true", default=None, help="download missing dataset files (connected machines)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoint, metrics, sample grids)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps")
    p.add_argument("--batch-size", type=int, help="per process (default 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 2e-4; 3e-4 for vaegan)")
    p.add_argument("--arch", choices=("conv", "mlp"), help="network type (default conv)")
    p.add_argument("--normal-class", type=int, metavar="K", help="train on class K only (one-class anomaly setting)")
    p.add_argument("--translate", type=float, metavar="F", help="random shifts of up to F of the image size (e.g. 0.1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any model or training config field")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly where it stopped")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="print what a checkpoint holds")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    from export.commands import register as register_export

    register_export(sub)

    from service.commands import register as register_serve

    register_serve(sub)
    from eval.commands import register as register_eval

    register_eval(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GenlabError as err:
        print(f"genlab {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"genlab {args.command}: interrupted", file=sys.stderr)
        return 130
