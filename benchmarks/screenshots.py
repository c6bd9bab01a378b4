"""Screenshots of a run's report.html and of artifacts/index.html as a reader sees them, at desktop
and at phone width, through headless Chromium (Debian: apt-get install chromium), for docs/.

    python benchmarks/screenshots.py --run 3 --out docs

Each page is drawn in a window taller than the page, then cropped below its last drawn row, so
the picture is the whole page. The network is blocked, as for the browser test.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

from mnist_diffusion.config import DEFAULT_ARTIFACTS_DIR
from mnist_diffusion.errors import UserError
from mnist_diffusion.runs.store import resolve_run

WIDTHS = {"desktop": 1280, "phone": 390}
TALL = 16000  # pixels: taller than any report, so one shot holds the whole page
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def shoot(chromium: str, page: Path, width: int, out: Path) -> None:
    """``page`` drawn ``width`` pixels wide into ``out`` (PNG), cropped to what the page drew."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{TALL}",
                f"--screenshot={raw}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        image = Image.open(raw).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    bottom = min(image.height, (box[3] if box else image.height) + 24)
    image.crop((0, 0, width, bottom)).quantize(256).save(out, optimize=True)  # a palette: a third of the bytes


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
        run_dir = resolve_run(args.run, args.artifacts_dir)
    except UserError as e:
        raise SystemExit(f"Error: {e}") from None
    pages = {"report": run_dir / "report.html", "index": args.artifacts_dir / "index.html"}
    for name, page in pages.items():
        if not page.is_file():
            raise SystemExit(f"Error: {page} does not exist (mnistdiff report / mnistdiff runs --html write it)")
        for label, width in WIDTHS.items():
            out = args.out / f"{name}-{label}.png"
            shoot(chromium, page, width, out)
            print(out)


if __name__ == "__main__":
    main()
