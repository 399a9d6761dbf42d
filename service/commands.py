"""``genlab serve``: check the models, then run ``bentoml serve service.service:Genlab``."""

from __future__ import annotations

import argparse
import os
import sys

from genlab.errors import GenlabError


def _cmd_serve(args: argparse.Namespace) -> int:
    from export.reader import read_manifest, resolve
    from service.settings import DEFAULT_MODEL

    references = args.model or [DEFAULT_MODEL]
    names = set()
    for reference in references:
        if "," in reference:
            raise GenlabError(f"--model {reference!r}: give one model per --model flag")
        manifest = read_manifest(resolve(reference))  # fails here, in one line, rather than in a worker
        if manifest["name"] in names:
            raise GenlabError(f"two models are named {manifest['name']!r}; export one of them with another --bento name")
        names.add(manifest["name"])
    env = {**os.environ, "GENLAB_MODELS": ",".join(references), "BENTOML_DO_NOT_TRACK": "True"}
    if args.no_batching:
        env["GENLAB_BATCHING"] = "0"
    command = [sys.executable, "-m", "bentoml", "serve", "service.service:Genlab", "--host", args.host, "--port", str(args.port)]
    print(f"serving {', '.join(sorted(names))} on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
    return 0  # not reached


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve exported models over HTTP (generate, reconstruct, anomaly-score)",
                       description="Start the BentoML service on one or more exported models; the first is the default.")
    p.add_argument("--model", action="append", metavar="NAME|EXPORT_DIR",
                   help="a BentoML model tag or an export directory; repeat for several (default: genlab-vaegan-mnist-5k)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--no-batching", action="store_true", help="turn adaptive batching off (for comparisons)")
    p.set_defaults(func=_cmd_serve)
