"""Headless Chromium for the page's tests and benchmark: the system's browser (Debian's ``chromium`` package), driven
by Playwright; Playwright's own browser downloads are never used."""

from __future__ import annotations

import os
import shutil

# as the machines here need them: root needs --no-sandbox, and Chromium's background connections (updates, sync,
# Google's hosts) only fail on a closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_ENABLE = (
    "headless Chromium not found: install Debian's chromium (`apt-get install chromium`; scripts/test.sh does it "
    "when run as root) or set GENLAB_CHROMIUM to a Chromium binary"
)


def chromium_executable() -> str | None:
    """The Chromium binary to drive: ``GENLAB_CHROMIUM``, else ``chromium`` on PATH; None where there is none."""
    return os.environ.get("GENLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
