"""compare.html (`mnistdiff compare --html`) in headless Chromium, driven by Playwright: the page
opens from disk, asks for nothing but itself (every other request is blocked and recorded), logs
no console error, decodes every image (the loss chart and each run's samples) and does not scroll
sideways on a phone. Skipped where Chromium or pytest-playwright is not installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import needs_chromium
from typer.testing import CliRunner

from mnist_diffusion.cli import app

pytest.importorskip("pytest_playwright", reason="needs pytest-playwright: pip install 'mnist-diffusion[dev]'")
pytestmark = needs_chromium
runner = CliRunner()


@pytest.fixture(scope="module")
def page_file(tmp_path_factory, run_pair) -> Path:
    """compare.html of two tiny runs (--lr differs), the first with an eval.json holding intervals."""
    artifacts = tmp_path_factory.mktemp("compare-browser") / "artifacts"
    shutil.copytree(run_pair, artifacts)
    fid = {"se": 0.004, "low": 0.295, "high": 0.311, "values": None}
    evaluation = {"model": {"fid": 0.303}, "n": 1000, "uncertainty": {"method": "bootstrap", "model": {"fid": fid}}}
    (artifacts / "runs" / "00000-a" / "eval.json").write_text(json.dumps(evaluation))
    out = artifacts / "compare.html"
    result = runner.invoke(app, ["compare", "a", "b", "--html", str(out), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    return out


def open_offline(browser, path: Path, width: int = 1280):
    """The page at ``path`` with every request but the file itself blocked: (page, requests made
    besides the file, console errors)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    url, others, errors = path.as_uri(), [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url == url:
            r.continue_()
        else:
            others.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, others, errors


def test_compare_page_opens_offline_with_every_image_decoded(page_file, browser):
    page, others, errors = open_offline(browser, page_file)
    assert others == [] and errors == []
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 3 and all(w > 0 for w in widths)  # the loss chart, then the samples of a and b
    assert "train.lr" in page.inner_text("#config") and "0.303" in page.inner_text("#metrics")
    page.close()


def test_compare_page_fits_a_phone_screen(page_file, browser):
    page, others, errors = open_offline(browser, page_file, width=390)
    assert others == [] and errors == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    page.close()
