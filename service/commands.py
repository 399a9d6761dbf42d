"""``genlab serve``: check the models, then run ``bentoml serve genlab.service.service:Genlab``."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

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
        check_unambiguous(reference)
        directory = resolve(reference)
        manifest = read_manifest(directory, verify=True)
        if manifest["name"] in names:
            raise GenlabError(
                f"two models are named {manifest['name']!r}; export one of them with another --bento name"
            )
        names.append(manifest["name"])
    return names


def check_unambiguous(reference: str) -> None:
    """A bare model name (no ``:version``) must name one model: the BentoML store is shared by every checkout of a
    user, and several different versions under one name (a quickstart run in two checkouts, two trainings) would
    make BentoML serve whichever is newest. ``name:latest`` asks for the newest explicitly."""
    if ":" in reference or Path(reference).exists() or "/" in reference:
        return
    from genlab.export.store import versions_of

    versions = versions_of(reference)
    if len({v["content"] for v in versions}) <= 1:
        return
    listed = "; ".join(f"{v['tag']} (exported {v['created']} from {v['exported_from']})" for v in versions[:4])
    more = f"; and {len(versions) - 4} more (genlab models)" if len(versions) > 4 else ""
    raise GenlabError(
        f"the BentoML model store holds {len(versions)} different versions of {reference}: {listed}{more}. "
        f"Choose one: --model {versions[0]['tag']}, --model {reference}:latest (the newest) or --model EXPORT_DIR"
    )


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address this machine cannot listen on (a port in use, a host it does not have), before
    anything starts."""
    if not 0 < port < 65536:
        raise GenlabError(f"--port {port}: a port is 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise GenlabError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            busy = err.errno == errno.EADDRINUSE
            reason = "is in use by another program (stop it, or choose another --port)" if busy else err.strerror
            raise GenlabError(f"cannot listen on {host}:{port}: the address {reason}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from genlab.service.settings import DEFAULT_MODEL, SERVING_ENVIRONMENT

    check_port(args.host, args.port)
    if args.check_port:
        print(f"{args.host}:{args.port} is free", file=sys.stderr)
        return 0
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        help="an export directory or a BentoML model tag (name, name:version, name:latest); repeat for several "
        f"(default: {DEFAULT_MODEL}; a name that several different stored versions answer to is refused)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000)")
    p.add_argument(
        "--check-port",
        action="store_true",
        help="only check that --host and --port can be listened on (exit 0, or 2 with the reason); serve nothing",
    )
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
        help=f"merge concurrent requests into one ONNX Runtime call (default {defaults.batching})",
    )
    p.add_argument("--no-batching", action="store_true", help="same as --batching off")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    p.set_defaults(func=_cmd_serve)
