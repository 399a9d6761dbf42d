"""genlab's metrics: no client can add series, two servers on one BENTOML_HOME keep their own, and the series say
what operators read (requests by route template, model and status; request time; the merger's queue and batches).

Against real `genlab serve` processes with an API key: a bounded loop of requests to distinct unknown paths without
the key must not grow /metrics or the worker's memory; a second server started on the same BENTOML_HOME must not
empty the first one's metrics.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service_fixtures import running_server

KEY = "metrics-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
DISTINCT_PATHS = 2000


def _server_pids(url: str) -> list[int]:
    """The pids of the processes listening on ``url``'s port and their children (from /proc)."""
    port = int(url.rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(f"socket:[{inode}]" == str(link.readlink()) for link in fd_dir.iterdir() for inode in inodes):
                pids.append(int(fd_dir.parent.name))
    return pids


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name`` with exactly these ``labels`` in a Prometheus exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@pytest.fixture(scope="module")
def guarded(exports, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {"GENLAB_API_KEY": KEY, "BENTOML_HOME": str(home)}
    with running_server([exports["vaegan"]], tmp_path_factory.mktemp("metrics") / "serve.log", env) as url:
        yield url, home


def test_distinct_unknown_paths_add_no_series_and_no_memory(guarded):
    url, _ = guarded
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(50):  # warm: the first requests of a worker allocate what every later one reuses
            client.get(f"/warm-{i}")
        before = client.get("/metrics", headers=AUTH)
        assert before.status_code == 200, before.text
        pids = _server_pids(url)
        assert pids
        rss_before = _rss_mib(pids)
        for i in range(DISTINCT_PATHS):
            assert client.get(f"/x-{i}").status_code == 401
        after = client.get("/metrics", headers=AUTH)
        rss_after = _rss_mib(pids)
    assert after.status_code == 200
    assert len(after.content) - len(before.content) < 2_000, (len(before.content), len(after.content))
    assert "x-1" not in after.text
    assert rss_after - rss_before < 16, (rss_before, rss_after)
    unmatched = sample(
        after.text, "genlab_http_requests_total", route="unmatched", method="GET", model="", status="401"
    )
    assert unmatched is not None and unmatched >= DISTINCT_PATHS, after.text[:3000]


def test_metrics_need_the_key_and_count_by_route_model_and_status(guarded):
    url, _ = guarded
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/livez").status_code == 200
        for _ in range(3):
            assert (
                client.post("/generate", json={"n": 2, "seed": 1, "format": "array"}, headers=AUTH).status_code == 200
            )
        assert client.post("/generate", json={"n": 0}, headers=AUTH).status_code == 400
        text = client.get("/metrics", headers=AUTH).text
    model = "genlab-vaegan-mnist-5k"
    ok = sample(text, "genlab_http_requests_total", route="/generate", method="POST", model=model, status="200")
    assert ok is not None and ok >= 3, text[:3000]
    assert sample(text, "genlab_http_requests_total", route="/generate", method="POST", model="", status="400") == 1
    assert sample(text, "genlab_http_request_duration_seconds_count", route="/generate", model=model) >= 3
    assert sample(text, "genlab_inference_batch_size_count", model=model, graph="decode") >= 3
    assert sample(text, "genlab_inference_batch_size_sum", model=model, graph="decode") >= 6
    assert sample(text, "genlab_inference_queue_duration_seconds_count", model=model, graph="decode") >= 3
    assert sample(text, "genlab_inference_compute_duration_seconds_count", model=model, graph="decode") >= 3
    assert "bentoml_" not in text  # BentoML's per-path traffic metrics are off


def test_a_second_server_on_the_same_bentoml_home_leaves_the_first_ones_metrics(guarded, exports, tmp_path):
    url, home = guarded
    with httpx.Client(base_url=url, timeout=10) as client:
        client.post("/generate", json={"n": 1, "seed": 2}, headers=AUTH)
        before = client.get("/metrics", headers=AUTH).text
        env = {"GENLAB_API_KEY": KEY, "BENTOML_HOME": str(home)}
        with running_server([exports["vaegan"]], tmp_path / "second.log", env) as second:
            assert httpx.get(f"{second}/metrics", headers=AUTH, timeout=10).status_code == 200
            client.post("/generate", json={"n": 1, "seed": 3}, headers=AUTH)
            after = client.get("/metrics", headers=AUTH).text
    labels = dict(route="/generate", method="POST", model="genlab-vaegan-mnist-5k", status="200")
    assert sample(after, "genlab_http_requests_total", **labels) > sample(
        before, "genlab_http_requests_total", **labels
    )
    assert len(after) >= len(before) * 0.9


def test_route_templates_name_every_path_by_its_route():
    from genlab.metrics import UNMATCHED, RouteTemplates

    route = RouteTemplates(["/generate", "/v2/models/{model}/infer", "/ui/{file}"])
    assert route("/generate") == "/generate"
    assert route("/v2/models/anything-at-all/infer") == "/v2/models/{model}/infer"
    assert route("/ui/page.js") == "/ui/{file}"
    for path in ("/generate/", "/x-1", "/v2/models/a/b/infer", "/ui/a/b", "/ui/"):
        assert route(path) == UNMATCHED, path


def test_the_merger_reports_rows_queue_and_compute_time():
    import asyncio

    from genlab.service.runtime import Merger
    from genlab.service.work import WorkPool

    seen: list[tuple[int, float, float]] = []
    merger = Merger(lambda x: {"y": x * 2}, 64, WorkPool(1), observe=lambda *a: seen.append(a))

    async def calls() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(merger(np.ones((2, 3), np.float32)) for _ in range(5)))

    results = asyncio.run(calls())
    assert all((r["y"] == 2).all() and r["y"].shape == (2, 3) for r in results)
    assert sum(rows for rows, _, _ in seen) == 10
    assert all(queued >= 0 and compute >= 0 for _, queued, compute in seen)
