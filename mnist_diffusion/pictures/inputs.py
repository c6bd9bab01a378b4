"""The pictures a user hands the editing commands: digits (PNGs of any size, or MNIST test digits
by index) and inpainting masks (a named region, a random share of the pixels, or a PNG)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.mnist import as_unit, ensure_mnist, test_digits
from ..errors import UserError
from .grids import TILE, read_grey

# The named masks: the part of a digit that is missing (the centre is the middle 14 x 14 square).
MASKS = ("left", "right", "top", "bottom", "center")
# A drawing is padded to a square and resized to 28x28: its shape is checked before, so that a
# 200000x1 PNG is refused rather than padded to a 200000x200000 square.
MAX_SIDE = 4096  # pixels on either side of a drawing (or a mask) at most
MAX_ASPECT = 8  # the longer side of a drawing at most this many times the shorter


def _missing_region(name: str) -> torch.Tensor:
    """A named mask as bool [28 x 28], True where missing."""
    half, quarter = TILE // 2, TILE // 4
    region = torch.zeros(TILE, TILE, dtype=torch.bool)
    if name == "left":
        region[:, :half] = True
    elif name == "right":
        region[:, half:] = True
    elif name == "top":
        region[:half] = True
    elif name == "bottom":
        region[half:] = True
    else:  # center
        region[quarter : TILE - quarter, quarter : TILE - quarter] = True
    return region


def parse_mask(spec: str, seed: int = 0) -> torch.Tensor:
    """What ``--mask`` says is missing, as bool [1 x 1 x 28 x 28] (True: missing, to be filled):
    one of :data:`MASKS`; ``random:P``, each pixel missing with probability P (drawn with
    ``seed``); or the path of a 28x28 greyscale PNG, white (>= 128) where missing."""
    if spec in MASKS:
        return _missing_region(spec)[None, None]
    if spec.startswith("random:"):
        try:
            share = float(spec.removeprefix("random:"))
        except ValueError:
            share = float("nan")
        if not 0.0 <= share <= 1.0:
            raise UserError(f"--mask random:P needs a share P between 0 and 1 (got {spec!r})")
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(TILE, TILE, generator=g) < share)[None, None]
    path = Path(spec)
    if path.suffix.lower() != ".png" or not path.is_file():
        raise UserError(f"--mask must be one of {', '.join(MASKS)}, random:P or a PNG file (got {spec!r})")
    pixels = read_grey(path, "a mask", max_side=MAX_SIDE)
    if pixels.shape != (TILE, TILE):
        raise UserError(
            f"{path}: a mask of {pixels.shape[1]}x{pixels.shape[0]} pixels; it must be 28x28, as the "
            "digits are (white where missing)"
        )
    return torch.from_numpy(pixels >= 128)[None, None]


def read_digit(path: Path, log: Callable[[str], None] = print) -> torch.Tensor:
    """A digit drawn by a user, as float [1 x 28 x 28] in [0, 1], light on dark as in MNIST.

    A greyscale PNG of 28x28 is taken as it is. Any other size is resized to 28x28 (a non-square
    one padded to a square first), and a drawing that is mostly light is inverted to MNIST's
    light on dark; ``log`` gets a line for each. A colour or transparent image, one with a single
    value in every pixel (nothing drawn), or one over ``MAX_SIDE`` pixels a side or ``MAX_ASPECT``
    to 1 (checked before it is decoded) is a one-line UserError.
    """
    pixels = read_grey(path, "a digit", max_side=MAX_SIDE, max_aspect=MAX_ASPECT)  # (H, W) uint8
    low, high = int(pixels.min()), int(pixels.max())
    if low == high:
        raise UserError(f"{path}: an empty image (every pixel is {low}); draw a digit")
    if pixels.mean() > 127.5:
        pixels = 255 - pixels
        log(f"{path}: a dark drawing on a light ground, inverted to light on dark as in MNIST")
    h, w = pixels.shape
    if (h, w) != (TILE, TILE):
        side = max(h, w)
        square = np.zeros((side, side), np.uint8)
        square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = pixels
        method = Image.Resampling.BOX if side > TILE else Image.Resampling.BILINEAR  # area average when shrinking
        pixels = np.asarray(Image.fromarray(square, mode="L").resize((TILE, TILE), method))
        log(f"{path}: {w}x{h} pixels, resized to 28x28")
    return torch.from_numpy(pixels.copy()).float().div(255).unsqueeze(0)


def load_digits(
    images: list[Path], indices: list[int], data_dir: str | os.PathLike, log: Callable[[str], None] = print
) -> torch.Tensor:
    """The digits to edit, as float [N x 1 x 28 x 28] in [0, 1]: the PNGs ``images``
    (:func:`read_digit`), then the MNIST test digits at ``indices`` (fetched into ``data_dir``
    first if needed)."""
    if not images and not indices:
        raise UserError("give the digits to edit: --image PATH (repeat it for several) or --test-index 0,5,9")
    digits = [read_digit(p, log) for p in images]
    if indices:
        ensure_mnist(data_dir, log=log)
        digits += list(as_unit(test_digits(data_dir, indices)[0]))
    return torch.stack(digits)
