"""report.html and index.html in a real browser: headless Chromium, driven through the DevTools
protocol over ``--remote-debugging-pipe`` with the standard library, opens each page from disk
with the network blocked and checks that nothing was requested over the network, the console
stayed free of errors, every image decoded, the index sorts, a phone-width page does not scroll
sideways, and the screenshot is not blank. Skipped where Chromium is not installed."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY_FLAGS
from PIL import Image
from typer.testing import CliRunner

from mnist_diffusion.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
]
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
TIMEOUT = 60.0  # seconds for any one answer: a hang guard


class Browser:
    """Chromium with the DevTools protocol on fds 3 (its input) and 4 (its output): JSON messages
    ended by a NUL byte."""

    def __init__(self, profile: Path):
        to_chrome, self.chrome_in = os.pipe()
        self.chrome_out, from_chrome = os.pipe()
        log = os.open(profile.parent / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        actions = [
            (os.POSIX_SPAWN_DUP2, to_chrome, 3),
            (os.POSIX_SPAWN_DUP2, from_chrome, 4),
            (os.POSIX_SPAWN_DUP2, log, 1),
            (os.POSIX_SPAWN_DUP2, log, 2),
        ]
        argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.pid = os.posix_spawn(CHROMIUM, argv, os.environ, file_actions=actions)
        for fd in (to_chrome, from_chrome, log):
            os.close(fd)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.chrome_in, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def receive(self) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.chrome_out], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self.chrome_out, 1 << 16)
            assert chunk, "Chromium closed the pipe"
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, session: str) -> None:
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
            self.events.append(self.receive())

    def close(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        os.waitpid(self.pid, 0)
        os.close(self.chrome_in)
        os.close(self.chrome_out)


class Page:
    """One tab opened on ``path`` at ``width`` pixels, with what it requested and logged."""

    def __init__(self, browser: Browser, path: Path, width: int = 1280):
        self.browser = browser
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.send(f"{domain}.enable", self.session)
        browser.send("Network.setBlockedURLs", self.session, urls=BLOCKED)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            self.session,
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        browser.send("Page.navigate", self.session, url=path.resolve().as_uri())
        browser.wait_for("Page.loadEventFired", self.session)

    def run(self, expression: str):
        reply = self.browser.send(
            "Runtime.evaluate", self.session, expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def events(self, method: str) -> list[dict]:
        return [
            e["params"] for e in self.browser.events if e.get("method") == method and e.get("sessionId") == self.session
        ]

    def requests(self) -> list[str]:
        return [e["request"]["url"] for e in self.events("Network.requestWillBeSent")]

    def errors(self) -> list[str]:
        console = [
            json.dumps(e["args"])[:300]
            for e in self.events("Runtime.consoleAPICalled")
            if e["type"] in ("error", "assert")
        ]
        thrown = [e["exceptionDetails"].get("text", "?") for e in self.events("Runtime.exceptionThrown")]
        logged = [e["entry"]["text"] for e in self.events("Log.entryAdded") if e["entry"]["level"] == "error"]
        return console + thrown + logged

    def screenshot(self) -> Image.Image:
        data = self.browser.send("Page.captureScreenshot", self.session, format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


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


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(tmp_path_factory.mktemp("chromium") / "profile")
    yield chrome
    chrome.close()


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
