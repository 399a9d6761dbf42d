"""``genlab serve``: check the models, then run ``bentoml serve genlab.service.service:Genlab``."""

from __future__ import annotations

import argparse
import os
import sys

from genlab.errors import GenlabError


def verify_models(references: list[str]) -> list[str]:
    """Check every export in full (manifest and every file's sha256) before any server starts, so that a problem is
    one line here rather than a traceback in a worker (each worker checks again what it loads). Returns the model
    names."""
    from genlab.export.reader import read_manifest, resolve

    names: list[str] = []
    for reference in references:
        if "," in reference:
            raise GenlabError(f"--model {reference!r}: give one model per --model flag")
        directory = resolve(reference)
        manifest = read_manifest(directory, verify=True)
        if manifest["name"] in names:
            raise GenlabError(
                f"two models are named {manifest['name']!r}; export one of them with another --bento name"
            )
        names.append(manifest["name"])
    return names


def _cmd_serve(args: argparse.Namespace) -> int:
    from genlab.service.settings import DEFAULT_MODEL, SERVING_ENVIRONMENT

    references = args.model or [DEFAULT_MODEL]
    names = verify_models(references)
    if args.workers < 1 or args.ort_threads < 0:
        raise GenlabError("--workers must be >= 1 and --ort-threads >= 0")
    env = {
        **SERVING_ENVIRONMENT,  # where this environment does not set them: see service/settings.py
        **os.environ,
        "GENLAB_MODELS": ",".join(references),
        "BENTOML_DO_NOT_TRACK": "True",
        "GENLAB_WORKERS": str(args.workers),
        "GENLAB_BATCHING": "off" if args.no_batching else args.batching,
        "GENLAB_ACCESS_LOG": "1" if args.access_log else "0",
        "GENLAB_ORT_THREADS": str(args.ort_threads),
    }
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "genlab.service.service:Genlab",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    guarded = ", API key required" if os.environ.get("GENLAB_API_KEY") else ""
    print(
        f"serving {', '.join(names)} on http://{args.host}:{args.port} "
        f"({args.workers} worker(s){guarded}; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    os.execvpe(command[0], command, env)
    return 0  # not reached


def register(sub: argparse._SubParsersAction) -> None:
    from genlab.service.settings import BATCHING_CHOICES, DEFAULT_MODEL, Settings

    defaults = Settings()

    p = sub.add_parser(
        "serve",
        help="serve exported models over HTTP (generate, reconstruct, anomaly-score)",
        description="Start the BentoML service on one or more exported models; the first is the default. "
        "Set GENLAB_API_KEY to require 'Authorization: Bearer <key>' on every route but the "
        "health probes.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME|EXPORT_DIR",
        help=f"a BentoML model tag or an export directory; repeat for several (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=f"HTTP worker processes, each with its own ONNX Runtime sessions ({defaults.workers})",
    )
    p.add_argument(
        "--ort-threads",
        type=int,
        default=defaults.ort_threads,
        metavar="N",
        help=f"ONNX Runtime threads per session in each worker ({defaults.ort_threads}; 0 = one per core)",
    )
    p.add_argument(
        "--batching",
        choices=BATCHING_CHOICES,
        default=defaults.batching,
        help=f"merge concurrent requests into one ONNX Runtime call (default {defaults.batching}); "
        "auto = where the graphs run on a GPU",
    )
    p.add_argument("--no-batching", action="store_true", help="same as --batching off")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    p.set_defaults(func=_cmd_serve)
