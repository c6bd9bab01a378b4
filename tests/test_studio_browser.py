"""The studio in a real browser (Playwright driving the system's Chromium): draw the top bar of a
7 with the mouse, fill the rest, and check that the completions decoded and kept the drawn pixels;
sample and scrub the trajectory; move the forward process's t; walk. Every request outside
127.0.0.1 is blocked and must not have been tried, and the console must stay free of errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_chromium

pytest.importorskip("fastapi", reason="needs the studio extra: pip install 'mnist-diffusion[studio]'")
pytest.importorskip("pytest_playwright", reason="needs pytest-playwright: pip install 'mnist-diffusion[dev]'")

pytestmark = needs_chromium
WAIT_MS = 120_000  # a hang guard for one request on a busy machine


@pytest.fixture(scope="module")
def studio_url(tiny_run, data_dir):
    from mnist_diffusion.studio.engine import Studio
    from mnist_diffusion.studio.server import create_app, serving

    studio = Studio(tiny_run[0], data_dir, torch.device("cpu"))
    with serving(create_app(studio)) as url:
        yield url
    studio.close()


@pytest.fixture
def watched(page, studio_url):
    """The studio's page, with every request outside 127.0.0.1 blocked and noted, and every console
    error and uncaught exception noted."""
    left, errors = [], []

    def route(r):
        if r.request.url.startswith(studio_url):
            r.continue_()
        else:
            left.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "assert") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(studio_url)
    page.wait_for_function("window.studio && window.studio.info !== null", timeout=WAIT_MS)
    yield page
    assert left == [], f"the page asked for {left}"
    assert errors == []


def pixels_of(page, canvas: str) -> dict:
    return page.evaluate(
        """id => {
             const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
             return {width: c.width, height: c.height, red: Array.from(d.data.filter((_, i) => i % 4 === 0))};
           }""",
        canvas,
    )


def test_drawing_a_bar_and_filling_the_rest(watched):
    page = watched
    box = page.locator("#pad").bounding_box()
    at = lambda col, row: (box["x"] + col * box["width"] / 28, box["y"] + row * box["height"] / 28)  # noqa: E731
    guide = page.locator(".digit-box").bounding_box()  # MNIST's 20x20 digit box over the pad; strokes pass through
    assert max(abs(guide["x"] - at(4, 4)[0]), abs(guide["y"] - at(4, 4)[1])) <= 2
    assert abs(guide["width"] - 20 * box["width"] / 28) <= 2 and abs(guide["height"] - 20 * box["height"] / 28) <= 2
    for row in (8.5, 9.5):  # the top bar of a 7, two pixels thick, where MNIST's 7s have it
        page.mouse.move(*at(8.5, row))
        page.mouse.down()
        page.mouse.move(*at(20.5, row), steps=12)
        page.mouse.up()
    drawing = page.evaluate("Array.from(window.studio.drawing)")
    drawn = [i for i, v in enumerate(drawing) if v > 0]
    assert 30 <= len(drawn) <= 120 and all(5 <= i // 28 <= 11 for i in drawn)  # a bar, where it was drawn
    page.fill("#edits", "4")
    page.fill("#edit-steps", "5")
    assert page.is_checked("#edit-match") and page.is_enabled("#edit-match")  # a clustered run, MNIST at hand
    with page.expect_request("**/api/complete") as sent:
        page.click("#fill")
    assert json.loads(sent.value.post_data)["match_clusters"] is True
    page.wait_for_function("window.studio.results.complete !== undefined", timeout=WAIT_MS)
    grid = pixels_of(page, "edits-out")
    assert (grid["width"], grid["height"]) == (4 * 29 + 1, 29 + 1)  # four tiles of 28 with a pixel between
    for k in range(4):  # each completion keeps the drawn pixels
        tile = [grid["red"][(1 + r) * grid["width"] + 1 + k * 29 + c] for r in range(28) for c in range(28)]
        assert all(abs(tile[i] - round(drawing[i] * 255)) <= 1 for i in drawn), k
    assert "4 completions" in page.inner_text("#status")


def test_sampling_streams_and_the_slider_scrubs_the_steps(watched):
    page = watched
    page.fill("#sample-form input[name=n]", "4")
    page.fill("#sample-form input[name=steps]", "6")
    page.click("#sample-go")
    page.wait_for_function("window.studio.results.sample !== undefined", timeout=WAIT_MS)
    assert page.evaluate("window.studio.frames.length") == 6
    last = {c: pixels_of(page, c) for c in ("sample-xt", "sample-x0", "sample-eps")}
    page.locator("#sample-step").fill("0")  # drag the slider back to the first step
    assert "step 1 of 6" in page.inner_text("#sample-step-text")
    for canvas, picture in last.items():
        assert pixels_of(page, canvas) != picture, canvas


def test_the_forward_slider_and_a_walk(watched):
    page = watched
    page.wait_for_function("document.getElementById('fwd-t-text').textContent !== ''", timeout=WAIT_MS)
    before = pixels_of(page, "fwd-xt")
    page.locator("#fwd-t").fill("3")
    page.wait_for_function("document.getElementById('fwd-t-text').textContent.startsWith('t = 3:')", timeout=WAIT_MS)
    assert pixels_of(page, "fwd-xt") != before
    assert max(pixels_of(page, "fwd-x0")["red"]) > 200  # a test digit
    page.fill("#walk-frames", "3")
    page.click("#walk-go")
    page.wait_for_function("window.studio.results.walk !== undefined", timeout=WAIT_MS)
    assert pixels_of(page, "walk-out")["width"] == 3 * 29 + 1
