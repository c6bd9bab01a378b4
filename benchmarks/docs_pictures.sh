#!/usr/bin/env bash
# The pictures of README.md and docs/ that show a trained default-preset run, all re-taken from one run:
# its samples, inpainting, interpolation, SDEdit of a scribbled 7 (the scribble beside its results), and
# screenshots of its report and of the runs index.
#
#   bash benchmarks/docs_pictures.sh RUN [ARTIFACTS_DIR] [DEST]
#
# RUN: a run's folder, name or number; ARTIFACTS_DIR: default artifacts; DEST: default docs.
# PYTHON picks the interpreter (default: python). On one machine class and precision, each picture
# comes out the same, byte for byte, for the same run. Screenshots need Chromium.
set -euo pipefail
RUN=${1:?usage: bash benchmarks/docs_pictures.sh RUN [ARTIFACTS_DIR] [DEST]}
ART=${2:-artifacts}
DEST=${3:-docs}
PY=${PYTHON:-python}
md() { "$PY" -m mnist_diffusion "$@" --artifacts-dir "$ART"; }
mkdir -p "$DEST"

# 64 digits with the default sampler and guidance.
md sample --run "$RUN" -n 64 --seed 0 -o "$DEST/default-samples.png"
# Per row the original, the masked input (hole in grey), six completions.
md inpaint --run "$RUN" --test-index 0,1,2,3,4,7 --mask top -n 6 --seed 0 -o "$DEST/inpaint.png"
# A walk between two real digits (inverted first).
md interpolate --run "$RUN" --test-index 3,8 --frames 10 --seed 0 -o "$DEST/interpolate.png"
# SDEdit: a rough 7 drawn with Pillow, noised to t = 0.6 T and denoised into eight digits; the picture
# shows the scribble (28x28, as the model sees it) on the left of the eight.
"$PY" - "$DEST" <<'PY'
import sys
from pathlib import Path
from PIL import Image, ImageDraw
im = Image.new("L", (112, 112))
ImageDraw.Draw(im).line([(24, 22), (86, 26), (52, 96)], fill=255, width=9)
im.save(Path(sys.argv[1]) / "scribble-7.png")
PY
md sample --run "$RUN" --init "$DEST/scribble-7.png" --strength 0.6 -n 8 --seed 0 -o "$DEST/sdedit-7.png"
"$PY" - "$DEST" <<'PY'
import sys
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1])
grid = Image.open(out / "sdedit-7.png").convert("L")
scale = grid.height // 32  # one row of 28-pixel tiles with 2 pixels of padding, scaled
scribble = Image.open(out / "scribble-7.png").convert("L").resize((28, 28), Image.BILINEAR)
scribble = scribble.resize((28 * scale, 28 * scale), Image.NEAREST)
left = 32 * scale  # the scribble in a tile of its own, then a grey bar, then the eight digits
both = Image.new("L", (left + 2 * scale + grid.width, grid.height), 0)
both.paste(scribble, (2 * scale, 2 * scale))
both.paste(128, (left, 0, left + 2 * scale, grid.height))
both.paste(grid, (left + 2 * scale, 0))
both.save(out / "sdedit-7.png", optimize=True)
PY
# The run's report and the runs index, at desktop and phone width.
md report --run "$RUN"
md runs --html
"$PY" benchmarks/screenshots.py --run "$RUN" --artifacts-dir "$ART" --out "$DEST"
