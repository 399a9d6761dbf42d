"""Requests to distinct unknown paths without the API key: what they do to a server's /metrics and memory.

Servers, each with ``GENLAB_API_KEY`` set and its own ``BENTOML_HOME``: ``genlab serve --model EXPORT`` from this tree
and, with ``--before GIT_REF``, from a git worktree of that revision, one after the other. For each: 200 warm-up
requests, then ``/metrics`` (with the key: its size and the time one read takes) and the resident memory of the
server's processes; then ``--paths`` GET requests, each to a path never seen before (``/x-0``, ``/x-1``, ...), without
the key (each answered 401); then the same readings again. Printed: the growth of each.

Targets at 20,000 paths: /metrics grows by less than 100 KB and answers in under 0.5 s, RSS grows by less than
32 MiB.

Run (from anywhere; ~1-3 minutes per server on 2 cores):
    .venv/bin/python benchmarks/path_flood.py [--model EXPORT_DIR] [--paths 20000] [--before GIT_REF] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.serve_load import Server, Spec, _free_port, _machine, _make_model, _say, checkout  # noqa: E402

KEY = "path-flood-benchmark-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def readings(client: httpx.Client, server: Server) -> dict[str, float]:
    started = time.perf_counter()
    metrics = client.get("/metrics", headers=AUTH, timeout=60)
    read_s = time.perf_counter() - started
    return {
        "metrics_status": metrics.status_code,
        "metrics_bytes": len(metrics.content),
        "metrics_read_s": round(read_s, 3),
        "rss_mib": round(server.rss_kib() / 1024, 1),
    }


def flood(spec: Spec, export: Path, tmp: Path, paths: int) -> dict[str, Any]:
    server = Server(spec, export, _free_port(3300), tmp)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(200):
                client.get(f"/warm-{i}")
            before = readings(client, server)
            started = time.perf_counter()
            statuses: dict[str, int] = {}
            for i in range(paths):
                status = str(client.get(f"/x-{i}").status_code)
                statuses[status] = statuses.get(status, 0) + 1
            wall = time.perf_counter() - started
            after = readings(client, server)
    finally:
        server.stop()
    return {
        "before": before,
        "after": after,
        "statuses": statuses,
        "requests_per_s": round(paths / wall, 1),
        "metrics_growth_bytes": after["metrics_bytes"] - before["metrics_bytes"],
        "rss_growth_mib": round(after["rss_mib"] - before["rss_mib"], 1),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['paths']:,} distinct unknown paths without the key ({result['meta']['cpus']} CPUs, "
        f"{result['meta']['python']})",
        "",
        "| server | statuses | /metrics before -> after | growth | one read after | RSS before -> after | growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in result["servers"].items():
        b, a = r["before"], r["after"]
        lines.append(
            f"| {label} | {r['statuses']} | {b['metrics_bytes']:,} -> {a['metrics_bytes']:,} B "
            f"| {r['metrics_growth_bytes']:+,} B | {a['metrics_read_s']} s (status {a['metrics_status']}) "
            f"| {b['rss_mib']} -> {a['rss_mib']} MiB | {r['rss_growth_mib']:+} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="export directory (default: train and export a default-size vaegan)")
    parser.add_argument("--paths", type=int, default=20_000, help="distinct unknown paths to request (20,000)")
    parser.add_argument("--before", metavar="GIT_REF", help="also measure genlab serve at this revision")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genlab-flood-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        export = args.model or _make_model(tmp)
        key = (("GENLAB_API_KEY", KEY),)
        specs = [Spec("genlab serve (this tree)", "genlab", env=key)]
        if args.before:
            tree = stack.enter_context(checkout(args.before, tmp))
            specs.insert(0, Spec(f"genlab serve at {args.before}", "genlab", env=key, tree=tree))
        servers = {}
        for spec in specs:
            _say(f"{spec.label}: {args.paths:,} paths ...")
            servers[spec.label] = flood(spec, export, tmp, args.paths)
    result = {"meta": _machine(), "paths": args.paths, "servers": servers}
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
