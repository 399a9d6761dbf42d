"""``genlab export`` and ``genlab models``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from genlab.export.onnx_export import default_name, export_checkpoint
    from genlab.export.store import check_name

    from genlab.console import print_result
    from genlab.run_dir import checkpoint_file

    if args.bento and not args.no_bento:
        check_name(args.bento)  # a bad name fails now, not after the export has been written
    manifest = export_checkpoint(
        args.checkpoint,
        args.out,
        opset=args.opset,
        name=args.bento,
        overwrite=args.overwrite,
        prefer_best=args.checkpoint_choice == "best",
    )
    result: dict[str, Any] = {
        "out": args.out,
        "checkpoint": str(checkpoint_file(args.checkpoint, args.checkpoint_choice == "best")),
        "epoch": manifest["training"]["epoch"],
        "name": manifest["name"],
        "family": manifest["family"],
        "graphs": sorted(manifest["graphs"]),
        "parity_max_diff": {
            g: max(o["max_diff"] for o in p["outputs"].values()) for g, p in manifest["parity"].items()
        },
        "bento_tag": None,
        "warning": manifest["training"]["warning"],
    }
    if result["warning"]:
        run_dir = shlex.quote(str(Path(result["checkpoint"]).parent))
        again = f"genlab train {manifest['family']} --out {run_dir} --resume"
        print(
            f"genlab export: warning: {result['checkpoint']}: {result['warning']}; train it to the end ({again})",
            file=sys.stderr,
        )
    if not args.no_bento:
        from genlab.export.store import save_to_store

        result["bento_tag"] = save_to_store(
            args.out, args.bento or default_name(manifest["family"], manifest["dataset"]["dataset"])
        )

    def text(r: dict[str, Any]) -> str:
        parity = ", ".join(f"{g} {d:.1e}" for g, d in r["parity_max_diff"].items())
        stored = f"; BentoML model {r['bento_tag']}" if r["bento_tag"] else ""
        return (
            f"exported {r['family']} from {r['checkpoint']} (epoch {r['epoch']}) to {r['out']} "
            f"({', '.join(f'{g}.onnx' for g in r['graphs'])}; parity max diff: {parity}){stored}"
        )

    print_result(result, args.json, text)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from genlab.export.store import list_models

    from genlab.console import print_result

    def text(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no genlab models in the BentoML store (add one with: genlab export CKPT --out DIR)"
        return "\n".join(
            f"{r['tag']:<48} {r['family']:<7} {r['dataset']:<14} latent {r['latent_dim']}  {r['created']}" for r in rows
        )

    print_result(list_models(), args.json, text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="checkpoint -> ONNX export directory (+ BentoML model store)",
        description="Export decoder, encoder and anomaly-score graphs to ONNX with a manifest, check them "
        "against torch, and save the export in BentoML's model store.",
    )
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (its best.pt where there is one)")
    p.add_argument(
        "--checkpoint",
        dest="checkpoint_choice",
        choices=("best", "last"),
        default="best",
        help="for a run directory: best.pt, the epoch with the best sample quality (default, where the run "
        "wrote one), or last.pt",
    )
    p.add_argument("--out", required=True, metavar="EXPORT_DIR", help="the export directory to create")
    p.add_argument("--bento", metavar="NAME", help="BentoML model name (default: genlab-<family>-<dataset>)")
    p.add_argument("--no-bento", action="store_true", help="do not save into the BentoML model store")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 with torch 2.13)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing EXPORT_DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list the genlab models in BentoML's model store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)
