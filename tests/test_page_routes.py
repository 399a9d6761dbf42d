"""The browser page's routes, without a browser: where the page, its files and Swagger UI are, and who may load them.
What the page does in a browser is tests/test_page.py."""

from __future__ import annotations

import pytest
from genlab.service.page import PAGE_DIR

from tests.conftest import bentoml_test_client

KEY = "page-key"


@pytest.fixture(scope="module")
def keyed(exports):
    from genlab.service.service import build_service
    from genlab.service.settings import Settings

    service = build_service(Settings(models=(str(exports["vaegan"]),), api_key=KEY))
    with bentoml_test_client(service) as c:
        yield c


PAGE_FILES = sorted(p.name for p in PAGE_DIR.iterdir() if p.is_file())


def test_the_page_is_at_the_root_and_swagger_at_docs(keyed):
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == (PAGE_DIR / "index.html").read_bytes()
    assert "default-src 'none'" in page.headers["content-security-policy"]  # nothing loads from elsewhere
    assert keyed.head("/").status_code == 200
    docs = keyed.get("/docs", headers={"Authorization": f"Bearer {KEY}"})
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_files_load_without_a_key(keyed, name):
    r = keyed.get(f"/ui/{name}")
    assert r.status_code == 200 and r.content == (PAGE_DIR / name).read_bytes()
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_api_still_needs_the_key(keyed):
    for path in ("/models", "/docs", "/docs.json"):
        r = keyed.get(path)
        assert r.status_code == 401, path
        assert r.json()["field"] == "Authorization"


@pytest.mark.parametrize("path", ["/ui/../service.py", "/ui/%2e%2e/service.py", "/ui/missing.js", "/ui/..%2fpage.py"])
def test_no_file_outside_the_page_is_served(keyed, path):
    r = keyed.get(path)
    assert r.status_code in (401, 404), (path, r.status_code)  # 401: a path the client resolved out of /ui/
    assert b"import" not in r.content


def test_the_page_files_are_small():
    total = sum(p.stat().st_size for p in PAGE_DIR.iterdir() if p.is_file())
    assert total < 100_000, f"the page's files take {total:,} bytes; the budget is 100 KB"
