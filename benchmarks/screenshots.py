"""Screenshots of a run's report.html and of artifacts/index.html as a reader sees them, at desktop
and at phone width, through Playwright and the system's Chromium (Debian: apt-get install chromium;
pip install playwright), for docs/.

    python benchmarks/screenshots.py --run 3 --out docs

Each picture is the whole page. Every request but the page's own file is blocked, as in the browser
tests: what the picture shows came from the file alone.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from mnist_diffusion.config import DEFAULT_ARTIFACTS_DIR
from mnist_diffusion.errors import UserError
from mnist_diffusion.runs.store import resolve_run

WIDTHS = {"desktop": 1280, "phone": 390}


def shoot(browser, page: Path, width: int, out: Path) -> None:
    """``page`` drawn ``width`` CSS pixels wide, the whole of it, into ``out`` (PNG, a palette)."""
    uri = page.resolve().as_uri()
    tab = browser.new_page(viewport={"width": width, "height": 800})
    tab.route("**/*", lambda route: route.continue_() if route.request.url == uri else route.abort())
    tab.goto(uri, wait_until="load")
    tab.screenshot(path=str(out), full_page=True)
    tab.close()
    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)  # a palette: a third of the bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", help="run folder, name or number (default: the latest)")
    p.add_argument("--artifacts-dir", type=Path, default=DEFAULT_ARTIFACTS_DIR)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("docs"),
        help="folder for report-{desktop,phone}.png and index-{desktop,phone}.png",
    )
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Error: needs Chromium (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("Error: needs Playwright: pip install playwright") from None
    try:
        run_dir = resolve_run(args.run, args.artifacts_dir)
    except UserError as e:
        raise SystemExit(f"Error: {e}") from None
    pages = {"report": run_dir / "report.html", "index": args.artifacts_dir / "index.html"}
    for page in pages.values():
        if not page.is_file():
            raise SystemExit(f"Error: {page} does not exist (mnistdiff report / mnistdiff runs --html write it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        for name, page in pages.items():
            for label, width in WIDTHS.items():
                out = args.out / f"{name}-{label}.png"
                shoot(browser, page, width, out)
                print(out)
        browser.close()


if __name__ == "__main__":
    main()
