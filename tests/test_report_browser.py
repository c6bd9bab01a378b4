"""report.html and index.html in a real browser: Playwright drives the system's Chromium, opens
each page from disk with every request off the disk blocked and checks that nothing was requested
over the network, the console stayed free of errors, every image decoded, the index sorts, a
phone-width page does not scroll sideways, and the screenshot is not blank. Skipped where
Chromium or pytest-playwright is not installed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, needs_chromium
from PIL import Image
from typer.testing import CliRunner

from mnist_diffusion.cli import app

pytest.importorskip("pytest_playwright", reason="needs pytest-playwright: pip install 'mnist-diffusion[dev]'")

pytestmark = needs_chromium
LOCAL = ("file://", "data:", "about:")  # what a page read from disk may ask for


class Page:
    """One tab opened on ``path`` at ``width`` pixels, with what it requested and logged."""

    def __init__(self, browser, path: Path, width: int = 1280):
        self.context = browser.new_context(viewport={"width": width, "height": 900}, is_mobile=width < 600)
        self.page = self.context.new_page()
        self.requested, self.logged = [], []

        def route(r):
            self.requested.append(r.request.url)
            r.continue_() if r.request.url.startswith(LOCAL) else r.abort()

        self.page.route("**/*", route)
        self.page.on("console", lambda m: self.logged.append(m.text) if m.type in ("error", "assert") else None)
        self.page.on("pageerror", lambda e: self.logged.append(str(e)))
        self.page.goto(path.resolve().as_uri())

    def run(self, expression: str):
        return self.page.evaluate(expression)

    def requests(self) -> list[str]:
        return list(self.requested)

    def errors(self) -> list[str]:
        return list(self.logged)

    def screenshot(self) -> Image.Image:
        return Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")


runner = CliRunner()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, tiny_run, data_dir) -> Path:
    """An artifacts folder of three runs: the shared tiny run, one with progress grids, a FID while
    training and an evaluation, and one whose config is damaged; a report each and the index."""
    artifacts = tmp_path_factory.mktemp("browser") / "artifacts"
    shutil.copytree(tiny_run[0], artifacts)
    where, data = ["--artifacts-dir", str(artifacts)], ["--data-dir", str(data_dir)]
    broken = artifacts / "runs" / "00002-broken"
    steps = [
        [
            "train",
            *TINY_FLAGS,
            "--max-steps",
            "4",
            "--sample-every",
            "1",
            "--eval-every",
            "4",
            "--eval-samples",
            "10",
            *data,
            *where,
        ],
        ["eval", "-n", "10", "--steps", "2", *data, *where],
        ["report", *where],
        ["report", "--run", str(broken), *where],
        ["runs", "--html", *where],
    ]
    for args in steps:
        if args[0] == "report" and "--run" in args:  # a run whose config.json is cut short
            broken.mkdir()
            (broken / "config.json").write_text("{")
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return artifacts


def assert_offline_clean_and_drawn(page: Page, images: int) -> None:
    fetched = [u for u in page.requests() if not u.startswith(("file://", "data:", "about:"))]
    assert fetched == [], f"the page asked the network for {fetched}"
    assert page.errors() == []
    widths = page.run(
        "Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth, () => 0)))"
    )
    assert len(widths) == images and all(w > 0 for w in widths), widths
    shot = page.screenshot()
    colours = shot.getcolors(1 << 16) or range(1 << 16)  # None: more colours than that
    assert len(colours) > 8, "the screenshot is blank"


@pytest.mark.parametrize("run, images", [("00000-default", 3), ("00001-default", 8), ("00002-broken", 0)])
def test_a_report_opens_offline_with_every_image_and_no_error(pages, browser, run, images):
    # 00001: the curves, samples.png, 4 progress grids, the trajectory and the class histogram
    page = Page(browser, pages / "runs" / run / "report.html")
    assert_offline_clean_and_drawn(page, images)
    assert page.run("document.querySelectorAll('section').length") == 8


def test_a_report_fits_a_phone_screen(pages, browser):
    page = Page(browser, pages / "runs" / "00001-default" / "report.html", width=390)
    assert_offline_clean_and_drawn(page, 8)
    assert page.run("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"


def test_the_index_opens_offline_and_sorts_by_a_column(pages, browser):
    page = Page(browser, pages / "index.html")
    assert_offline_clean_and_drawn(page, 2)  # the two thumbnails: the broken run has no samples
    order = "Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.dataset.run)"
    assert page.run(order) == ["00000-default", "00001-default", "00002-broken"]
    click = "document.querySelector('th[data-col=\"{}\"]').click()"
    page.run(click.format(3))  # steps, ascending: 0 first
    assert page.run(order) == ["00002-broken", "00000-default", "00001-default"]
    page.run(click.format(0) + ";" + click.format(0))  # by name: ascending, then descending
    assert page.run(order) == ["00002-broken", "00001-default", "00000-default"]
    assert page.errors() == []
