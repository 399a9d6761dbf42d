"""The image's HEALTHCHECK: exit 0 when the server in this container answers /readyz with 200, else 1.

It asks the address ``bentoml serve`` was started on (its ``--host`` / ``--port`` arguments, read from the command
line of process 1, or ``BENTOML_PORT`` / ``PORT``), so ``docker run genlab:cpu --port 8080`` stays healthy. Standard
library only: it runs with the image's Python and needs nothing the service installs.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def option(arguments: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of ``names`` in ``arguments`` (``--port 8080`` or ``--port=8080``), None if absent."""
    value = None
    for i, argument in enumerate(arguments):
        name, equals, inline = argument.partition("=")
        if name in names:
            value = inline if equals else (arguments[i + 1] if i + 1 < len(arguments) else None)
    return value


def readyz_url(arguments: list[str], environ: dict[str, str]) -> str:
    port = option(arguments, ("--port", "-p")) or environ.get("BENTOML_PORT") or environ.get("PORT") or "3000"
    host = option(arguments, ("--host",)) or ""
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    try:
        arguments = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        arguments = []
    url = readyz_url(arguments, dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as reply:
            return 0 if reply.status == 200 else 1
    except OSError as err:
        print(f"{url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
