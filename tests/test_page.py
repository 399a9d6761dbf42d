"""The browser page in a real headless Chromium (Debian's, driven by Playwright) against a real `genlab serve` with an
API key: what a person sees and does, checked against what the HTTP API answers for the same request.

Each test saves a screenshot under test-artifacts/page/. Without a Chromium the module is skipped with one line
saying how to enable it (scripts/test.sh installs it where it runs as root)."""

from __future__ import annotations

import base64
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser import HOW_TO_ENABLE, chromium_executable, launch
from tests.service_fixtures import CONDITIONAL_MODEL, REPO, running_server

KEY = "page-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ARTIFACTS = REPO / "test-artifacts" / "page"
# the R channel of each image a selector matches, at its natural size (the page's images are greyscale here)
PIXELS = """(selector) => [...document.querySelectorAll(selector)].map((img) => {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0));
})"""
DROP = """async ([files, target]) => {
  const dt = new DataTransfer();
  for (const [name, b64] of files) {
    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: "image/png" }));
  }
  const drop = new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true });
  document.querySelector(target).dispatchEvent(drop);
}"""


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    if executable is None:
        pytest.skip(HOW_TO_ENABLE)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright, executable)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    models = [exports[key] for key in ("vaegan", "gan-no-encoder", "vaegan-cond")]
    log = tmp_path_factory.mktemp("page") / "serve.log"
    with running_server(models, log, env={"GENLAB_API_KEY": KEY}) as url:
        yield url


@pytest.fixture(scope="module")
def models(server) -> dict[str, dict]:
    return {m["family"] if not m["conditional"] else "conditional": m for m in _post(server, "/models")}


class Tab:
    """A browser tab on the page, with the console errors it logged."""

    def __init__(self, page, errors: list[str]):
        self.page, self.errors = page, errors

    def ready(self, selector: str) -> None:
        self.page.wait_for_selector(f"{selector}[data-state=ready]", timeout=20_000)

    def pixels(self, selector: str) -> list[np.ndarray]:
        return [np.array(p, np.uint8) for p in self.page.evaluate(PIXELS, selector)]


@pytest.fixture
def open_tab(browser, server, request):
    """``open_tab(key=KEY, width=1280)``: a fresh browser context on the page, the key in sessionStorage as if typed
    (none for ``key=None``); a screenshot is saved when the test ends."""
    contexts = []

    def make(key: str | None = KEY, width: int = 1280) -> Tab:
        context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
        contexts.append(context)
        if key is not None:
            context.add_init_script(f"sessionStorage.setItem('genlab-api-key', {key!r})")
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.goto(server + "/")
        return Tab(page, errors)

    yield make
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i, context in enumerate(contexts):
        for page in context.pages:
            page.screenshot(path=ARTIFACTS / f"{request.node.name}-{i}.png", full_page=True)
        context.close()


def _post(url: str, path: str, **kwargs):
    r = httpx.post(url + path, headers=AUTH, timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def _generated(url: str, **body) -> np.ndarray:
    """What /generate draws for ``body``, uint8 [N, H*W] (channel 0)."""
    array = np.array(_post(url, "/generate", json={**body, "format": "array"})["images"], np.uint8)
    return array[:, 0].reshape(len(array), -1)


def _png(seed: int, size: int = 28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _choose(tab: Tab, model: dict) -> None:
    tab.page.select_option("#model", model["name"])
    tab.ready("#gallery-grid")


def test_the_page_loads_with_a_gallery_of_model_sized_images_and_no_console_error(open_tab, models, server):
    tab = open_tab()
    tab.ready("#gallery-grid")
    page = tab.page
    images = page.locator("#gallery-grid img")
    assert images.count() == 64  # the default
    sizes = page.eval_on_selector_all(
        "#gallery-grid img",
        "els => els.map(e => [e.naturalWidth, e.naturalHeight, e.width, getComputedStyle(e).imageRendering])",
    )
    _, height, width = models["vaegan"]["image_shape"]
    for natural_w, natural_h, shown_w, rendering in sizes:
        assert (natural_w, natural_h) == (width, height)
        assert shown_w % width == 0 and shown_w >= width  # a whole number of screen pixels per image pixel
        assert rendering == "pixelated"
    info = page.inner_text("#model-info")
    assert "vaegan" in info and "mnist-5k" in info and "1×28×28" in info and "CPU" in info
    # keyboard: a new count typed into the field and Enter
    page.fill("#g-n", "12")
    page.press("#g-n", "Enter")
    tab.ready("#gallery-grid")
    assert images.count() == 12
    seed = int(page.input_value("#g-seed"))
    assert np.array_equal(np.stack(tab.pixels("#gallery-grid img")), _generated(server, n=12, seed=seed))
    assert tab.errors == []


def test_a_new_seed_draws_new_pixels(open_tab, server):
    tab = open_tab()
    tab.ready("#gallery-grid")
    before, seed = tab.pixels("#gallery-grid img"), tab.page.input_value("#g-seed")
    tab.page.click("#g-new-seed")
    tab.ready("#gallery-grid")
    after, new_seed = tab.pixels("#gallery-grid img"), tab.page.input_value("#g-seed")
    assert new_seed != seed
    assert not np.array_equal(np.stack(before), np.stack(after))
    assert np.array_equal(np.stack(after), _generated(server, n=64, seed=int(new_seed)))
    assert tab.errors == []


def test_a_gallery_image_downloads_as_a_png(open_tab, models):
    tab = open_tab()
    tab.ready("#gallery-grid")
    with tab.page.expect_download() as download:
        tab.page.click("#gallery-grid a >> nth=0")
    assert download.value.suggested_filename.endswith(".png")
    image = Image.open(download.value.path())
    assert image.size == tuple(models["vaegan"]["image_shape"][:0:-1])


def test_the_interpolation_strip_runs_between_the_two_seeds_samples(open_tab, server):
    tab = open_tab()
    page = tab.page
    page.fill("#i-seed-a", "11")
    page.fill("#i-seed-b", "12")
    page.fill("#i-steps", "7")
    page.click("#interp-form button[type=submit]")
    tab.ready("#interp-strip")
    strip = tab.pixels("#interp-strip img")
    assert len(strip) == 7
    assert np.array_equal(strip[0], _generated(server, n=1, seed=11)[0])
    assert np.array_equal(strip[-1], _generated(server, n=1, seed=12)[0])
    assert not np.array_equal(strip[0], strip[-1])
    page.select_option("#i-method", "linear")
    page.click("#interp-form button[type=submit]")
    tab.ready("#interp-strip")
    assert np.array_equal(tab.pixels("#interp-strip img")[0], strip[0])  # same ends, another path
    assert tab.errors == []


def test_the_interpolation_between_two_uploaded_images_is_the_apis(open_tab, server, tmp_path):
    tab = open_tab()
    page = tab.page
    files = []
    for name, seed in (("a.png", 1), ("b.png", 2)):
        (tmp_path / name).write_bytes(_png(seed))
        files.append(tmp_path / name)
    page.check("#i-source-images")
    page.set_input_files("#i-image-a", files[0])
    page.set_input_files("#i-image-b", files[1])
    page.fill("#i-steps", "5")
    page.click("#interp-form button[type=submit]")
    tab.ready("#interp-strip")
    shown = np.stack(tab.pixels("#interp-strip img"))
    uploads = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    answer = _post(server, "/interpolate", files=uploads, data={"steps": "5", "format": "array"})
    assert np.array_equal(shown, np.array(answer["images"], np.uint8)[:, 0].reshape(5, -1))
    assert tab.errors == []


def test_a_dropped_png_gets_its_score_and_a_visible_heat_map_that_rescoring_follows(open_tab, server):
    tab = open_tab()
    page = tab.page
    png = _png(7)
    page.evaluate(DROP, [[["digit.png", base64.b64encode(png).decode()]], "#drop-zone"])
    tab.ready("#anomaly-results")
    card = page.locator("#anomaly-results .card")
    assert card.count() == 1
    expected = _post(server, "/anomaly-score", files=[("images", ("digit.png", png, "image/png"))])["results"][0]
    score = float(card.get_attribute("data-score"))
    assert score == pytest.approx(expected["score"], rel=1e-6)
    assert card.get_attribute("data-anomaly") == str(expected["is_anomaly"]).lower()
    assert f"{expected['percentile']:.1f} of normal images" in card.inner_text()
    heat = page.locator("#anomaly-results canvas.heat")
    assert heat.is_visible()
    painted = page.eval_on_selector(
        "#anomaly-results canvas.heat",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        ".filter((v, i) => i % 4 === 3 && v > 0).length",
    )
    assert painted > 0  # the map covers some of the image
    assert page.locator("#anomaly-results img").count() == 3  # the image, its reconstruction, the image under the map
    page.fill("#a-opacity", "0.2")
    assert heat.evaluate("c => getComputedStyle(c).opacity") == "0.2"
    # a raw threshold below and above the score flips is_anomaly
    page.select_option("#a-mode", "threshold")
    for cut, anomalous in ((score - 1, "true"), (score + 1, "false")):
        page.fill("#a-cut", str(cut))
        page.click("#anomaly-form button[type=submit]")
        tab.ready("#anomaly-results")
        assert card.get_attribute("data-anomaly") == anomalous
        assert card.locator(".badge").inner_text() == ("anomaly" if anomalous == "true" else "normal")
    assert tab.errors == []


def _colour_png(side: int, seed: int) -> str:
    """A random colour PNG, base64."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_large_colour_models_card_shows_its_images_at_their_real_size_and_in_colour(open_tab):
    # no 256 px colour model among the tiny ones: the API's answers for one are written here, the page is the real one
    side = 256
    tab = open_tab()
    page = tab.page

    def models(route):
        listed = route.fetch().json()
        route.fulfill(json=[{**m, "image_shape": [3, side, side]} for m in listed])

    scored = {
        "results": [
            {
                "score": 2.0,
                "normalized_score": 0.8,
                "percentile": 99.5,
                "is_anomaly": True,
                "anomaly_map": _colour_png(side, 1),
            }
        ],
        "threshold": 1.0,
        "threshold_percentile": 99.0,
        "score_name": "score",
        "meaning": "a test score",
    }
    page.route("**/models", models)
    page.route("**/anomaly-score", lambda route: route.fulfill(json=scored))
    page.route("**/reconstruct", lambda route: route.fulfill(json={"images": [_colour_png(side, 2)]}))
    page.reload()
    page.evaluate(DROP, [[["part.png", _colour_png(700, 3)]], "#drop-zone"])
    tab.ready("#anomaly-results")
    card = page.locator("#anomaly-results .card")
    # one CSS pixel per image pixel: the image, its reconstruction and the image under the map, inside the card
    shown = card.locator("img").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert shown == [side] * 3
    assert card.locator("canvas.heat").evaluate("c => [c.width, c.getBoundingClientRect().width]") == [side, side]
    assert card.evaluate("c => c.scrollWidth <= c.clientWidth")
    (reconstruction,) = page.evaluate(
        """() => [...document.querySelectorAll("#anomaly-results img")].filter(i => i.alt.startsWith("reconstruction"))
        .map((img) => {
          const c = document.createElement("canvas");
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
        })"""
    )
    rgba = np.array(reconstruction, np.uint8).reshape(side, side, 4)
    expected = np.array(Image.open(io.BytesIO(base64.b64decode(_colour_png(side, 2)))))
    assert np.array_equal(rgba[..., :3], expected)  # the colours the API sent, pixel for pixel
    assert tab.errors == []


def test_many_uploads_get_a_card_each_and_a_model_without_encoder_scores_only(open_tab, models, tmp_path):
    tab = open_tab()
    page = tab.page
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"up{i}.png")
        paths[-1].write_bytes(_png(20 + i))
    page.set_input_files("#a-files", paths)
    tab.ready("#anomaly-results")
    assert page.locator("#anomaly-results .card").count() == 3
    _choose(tab, models["gan"])  # the same files, scored again by the GAN
    tab.ready("#anomaly-results")
    assert page.locator("#anomaly-results .card").count() == 3
    assert page.locator("#anomaly-results canvas.heat").count() == 0
    assert "has no encoder" in page.inner_text("#anomaly-note")
    assert page.is_disabled("#i-source-images")
    assert tab.errors == []


def test_a_conditional_models_label_picker_draws_the_asked_class(open_tab, models, server):
    tab = open_tab()
    page = tab.page
    model = models["conditional"]
    assert model["name"] == CONDITIONAL_MODEL
    tab.ready("#gallery-grid")
    assert not page.is_visible("#g-label")
    _choose(tab, model)
    assert page.is_visible("#g-label")
    page.select_option("#g-label", "3")
    tab.ready("#gallery-grid")
    seed = int(page.input_value("#g-seed"))
    shown = np.stack(tab.pixels("#gallery-grid img"))
    assert np.array_equal(shown, _generated(server, n=64, seed=seed, label=3, model=model["name"]))
    name = model["classes"][3]
    assert all(
        alt.endswith(f"({name})") for alt in page.eval_on_selector_all("#gallery-grid img", "e => e.map(i => i.alt)")
    )
    # one row per class: a row head per class, as many images in each row
    page.select_option("#g-label", "rows")
    tab.ready("#gallery-grid")
    heads = page.locator("#gallery-grid .row-head").all_inner_texts()
    assert heads == model["classes"]
    per_class = int(page.input_value("#g-n"))
    assert page.locator("#gallery-grid img").count() == per_class * len(heads)
    labels = [k for k in range(len(heads)) for _ in range(per_class)]
    grid = _generated(server, n=len(labels), seed=seed, label=labels, model=model["name"])
    assert np.array_equal(np.stack(tab.pixels("#gallery-grid img")), grid)
    assert tab.errors == []


def test_without_a_key_and_with_a_wrong_one_the_page_says_which(open_tab):
    tab = open_tab(key=None)
    page = tab.page
    message = page.locator("#models-error")
    message.wait_for()
    assert message.inner_text().startswith("Key needed")
    page.fill("#api-key", "not-the-key")
    page.press("#api-key", "Enter")
    page.locator("#models-error", has_text="Key wrong").wait_for()
    page.fill("#api-key", KEY)
    page.click("#key-form button[type=submit]")
    tab.ready("#gallery-grid")
    assert message.is_hidden()
    assert page.evaluate("sessionStorage.getItem('genlab-api-key')") == KEY
    assert KEY not in page.url
    assert all("401" in error for error in tab.errors)  # the refused calls, and nothing else


def test_an_api_refusal_shows_its_error_and_field(open_tab):
    tab = open_tab()
    tab.ready("#gallery-grid")
    page = tab.page
    assert page.get_attribute("#g-n", "max") == "256"  # the server's limit (/models max_images)
    page.fill("#g-seed", str(2**64))  # beyond the seeds the server takes
    page.click("#gallery-form button[type=submit]")
    page.wait_for_selector("#gallery-grid[data-state=error]")
    text = page.inner_text("#gallery-error")
    assert re.match(r"Error 4\d\d: ", text) and "(field seed)" in text and str(2**63 - 1) in text


def test_at_a_phones_width_nothing_overflows(open_tab, tmp_path):
    tab = open_tab(width=390)
    tab.ready("#gallery-grid")
    path = tmp_path / "digit.png"
    path.write_bytes(_png(3))
    tab.page.set_input_files("#a-files", path)
    tab.ready("#anomaly-results")
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 390
    assert tab.errors == []


def test_every_control_has_a_label(open_tab):
    tab = open_tab()
    tab.ready("#gallery-grid")
    unlabelled = tab.page.evaluate(
        """() => [...document.querySelectorAll("input, select")]
             .filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label")).map((el) => el.id)"""
    )
    assert unlabelled == []
