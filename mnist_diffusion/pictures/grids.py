"""Sample grids, both ways: images to a PNG grid, and sample files (a grid PNG, a folder of PNGs,
``.npy`` or ``.safetensors`` tensors) back to images."""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from tokenize import TokenError

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ..errors import UserError
from ..io import PNG_MAX_BYTES, atomic_write_bytes, load_tensors, read_bounded

GRID_PADDING = 2  # pixels between tiles, also used to read grids back (eval --samples)
TILE = 28  # MNIST's side


def default_nrow(n: int) -> int:
    """Tiles per row: one row for up to 10 images, else a near-square grid."""
    return n if n <= 10 else math.ceil(math.sqrt(n))


def tile(images: torch.Tensor, nrow: int, padding: int = GRID_PADDING, pad_value: float = 0.0) -> torch.Tensor:
    """[N x 1 x H x W] images as one [H' x W'] image: rows of ``nrow`` tiles, each with ``padding``
    pixels of ``pad_value`` around it, empty slots of the last row left at ``pad_value``. The
    layout of torchvision's ``make_grid`` (tests/test_grids.py checks it), without importing
    torchvision, which takes seconds at every start of the command line."""
    n, _, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    x = torch.nn.functional.pad(images[:, 0], (padding, 0, padding, 0), value=pad_value)  # (N, p + H, p + W)
    blank = x.new_full((rows * cols - n, *x.shape[1:]), pad_value)
    x = torch.cat([x, blank]).reshape(rows, cols, padding + h, padding + w).permute(0, 2, 1, 3)
    x = x.reshape(rows * (padding + h), cols * (padding + w))  # tiles in row-major order
    return torch.nn.functional.pad(x, (0, padding, 0, padding), value=pad_value)


def grid_image(images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> Image.Image:
    """A greyscale PIL image of [N x 1 x H x W] images in [0, 1], tiled ``nrow`` to a row,
    each pixel repeated ``scale`` times in both directions."""
    grid = tile(images.float().clamp(0, 1).cpu(), nrow or default_nrow(len(images)))
    pixels = grid.mul(255).round().to(torch.uint8)  # (H', W')
    if scale > 1:
        pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return Image.fromarray(pixels.numpy(), mode="L")


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``image`` as a PNG, crash-safely, with each item of ``metadata`` as a text chunk (tEXt,
    or iTXt for text beyond Latin-1) that :func:`picture_text` reads back. No time is recorded:
    the same image and metadata give the same bytes."""
    info = None
    if metadata:
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    scale: int = 1,
    metadata: dict[str, str] | None = None,
) -> None:
    """[N x 1 x H x W] images in [0, 1] as a PNG grid (:func:`grid_image`), carrying ``metadata``
    as text (:func:`save_png`): how the images were made."""
    save_png(grid_image(images, nrow, scale), path, metadata)


def picture_text(path: str | Path) -> dict[str, str]:
    """The text a picture carries: a PNG's text chunks (:func:`save_png`), or the ``key: value``
    lines of a GIF's comment (:func:`~mnist_diffusion.pictures.animation.save_gif`)."""
    with Image.open(path) as img:
        if img.format == "PNG":
            return dict(img.text)
        comment = img.info.get("comment", b"")
    text = comment.decode("utf-8") if isinstance(comment, bytes) else comment
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


# ----------------------------------------------------------------------------- sample files, read back


def check_images(x: torch.Tensor | np.ndarray, where: str) -> torch.Tensor:
    """Validate sample images and return float32 ``(N, 1, 28, 28)`` in [0, 1].

    Accepts ``(N, 28, 28)`` or ``(N, 1, 28, 28)``, floats of any width or byte order in [0, 1] or
    uint8 in 0..255. Other integers, bools and every other dtype are refused: their scale is a guess.
    """
    if isinstance(x, np.ndarray):
        x = _native(x, where)
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, TILE, TILE):
        raise UserError(f"{where}: expected images of shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    if len(x) == 0:
        raise UserError(f"{where}: holds no images")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise UserError(f"{where}: expected floats in [0, 1] or uint8 in 0..255, got {x.dtype}")
    try:
        x = x.float()
    except (RuntimeError, NotImplementedError):  # packed types such as float4_e2m1fn_x2 have no conversion
        raise UserError(f"{where}: cannot convert {x.dtype} to float32; save float32 or uint8 images") from None
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        hint = " (images in [-1, 1]? map them with (x + 1) / 2)" if lo >= -1 - 1e-6 and hi <= 1 + 1e-6 else ""
        raise UserError(f"{where}: values span {lo:.3g}..{hi:.3g}, expected [0, 1]{hint}")
    return x.clamp(0, 1)


def _native(x: np.ndarray, where: str) -> np.ndarray:
    """A numpy array torch can take: floats in native byte order (long doubles as float64), uint8 as
    it is; any other dtype (other integers, bool, complex, strings, records) is a UserError."""
    if x.dtype.kind == "f":
        return x.astype(np.float64 if x.dtype.itemsize > 8 else x.dtype.newbyteorder("="), copy=False)
    if x.dtype == np.uint8:
        return x
    name = "a structured dtype" if x.dtype.names else x.dtype.name
    raise UserError(f"{where}: expected floats in [0, 1] or uint8 in 0..255, got {name}")


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load_samples(path: str | os.PathLike) -> torch.Tensor:
    """Sample images from a file or folder, as float32 ``(N, 1, 28, 28)`` in [0, 1].

    - ``.safetensors``: the tensor named ``samples``, else the first one;
    - ``.npy``: one array (no pickles);
    - a folder of ``.png`` files, each one 28x28 greyscale image, in name order;
    - a ``.png`` grid written by ``mnistdiff sample`` (:func:`mnist_diffusion.images.save_grid`):
      28-pixel tiles with 2-pixel padding, at any integer upscale. Trailing all-black tiles of the
      last row are taken for the grid's empty slots and dropped.

    Arrays hold ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` values, floats in [0, 1] or uint8. PNGs may be
    8- or 16-bit grey, palette or colour with equal channels, opaque. Anything else is a
    :class:`UserError`.
    """
    path = Path(path)
    if path.is_dir():
        return _load_png_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = load_tensors(path.resolve())  # the file a link the user names points at
        if not tensors:
            raise UserError(f"{path}: holds no tensors")
        return check_images(tensors.get("samples", next(iter(tensors.values()))), str(path))
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError, TokenError, MemoryError) as e:
            # pickled objects, not an .npy file, a damaged header, or one claiming more than memory holds
            raise UserError(f"{path}: not a plain numpy array ({_first_line(e)})") from None
        if not isinstance(array, np.ndarray):  # np.load opens a zip archive (.npz) whatever its name
            array.close()
            raise UserError(f"{path}: an .npz archive of arrays, not one .npy array")
        return check_images(array, str(path))
    if suffix == ".png":
        return _load_grid(path)
    raise UserError(f"{path}: unknown sample format; expected .safetensors, .npy, .png (a grid) or a folder of PNGs")


def read_grey(
    path: Path, what: str = "samples", *, max_side: int | None = None, max_aspect: int | None = None
) -> np.ndarray:
    """A PNG as a uint8 ``(H, W)`` array. 16-bit greys are rounded to 8 bits; colour images must
    have equal channels and no transparent pixels (``what`` must be greyscale, says the error).
    A file over ``PNG_MAX_BYTES``, or not a regular file (a FIFO, a device), is refused unread, and
    an image over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``) before it is decoded, as is one
    with a side over ``max_side`` pixels or a longer side over ``max_aspect`` times the shorter."""
    try:
        data = read_bounded(path, PNG_MAX_BYTES, "a PNG image", follow_links=True)  # a path the user gave
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG":
                    raise UserError(f"{path}: not a PNG file")
                _check_shape(path, what, *img.size, max_side, max_aspect)
                if img.mode == "L":
                    return np.asarray(img, dtype=np.uint8)
                if img.mode.startswith("I"):  # 16-bit grey: I;16, I;16B or I
                    return np.rint(np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)
                rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)  # (H, W, 4)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: too large an image (over {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise UserError(f"{path}: cannot read the image ({_first_line(e)})") from None
    if (rgba[..., 3] != 255).any():
        raise UserError(f"{path}: has transparent pixels; {what} must be opaque greyscale")
    if not (rgba[..., :3] == rgba[..., :1]).all():
        raise UserError(f"{path}: a colour image; {what} must be greyscale")
    return rgba[..., 0]


def _check_shape(path: Path, what: str, width: int, height: int, max_side: int | None, max_aspect: int | None) -> None:
    if max_side is not None and max(width, height) > max_side:
        raise UserError(f"{path}: {width}x{height} pixels; {what} may be at most {max_side} pixels on a side")
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise UserError(f"{path}: {width}x{height} pixels, longer than {max_aspect}:1; {what} must be roughly square")


def _load_png_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise UserError(f"{folder}: no .png files in this folder")
    tiles = []
    for p in files:
        pixels = read_grey(p)
        if pixels.shape != (TILE, TILE):
            raise UserError(
                f"{p}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but each PNG in a folder must be one 28x28 "
                "image (pass a grid as a single file)"
            )
        tiles.append(pixels)
    return check_images(np.stack(tiles), str(folder))


def grid_scale(height: int, width: int) -> list[int]:
    """Integer upscales s at which a ``height x width`` image is a grid of 28-pixel tiles with
    ``GRID_PADDING``-pixel padding, largest first: each side must be s * (30 k + 2), k >= 1."""
    step = TILE + GRID_PADDING
    return [
        s
        for s in range(min(height, width) // step, 0, -1)
        if height % s == 0
        and width % s == 0
        and (height // s) % step == GRID_PADDING
        and (width // s) % step == GRID_PADDING
    ]


def _load_grid(path: Path) -> torch.Tensor:
    pixels = read_grey(path)
    h, w = pixels.shape
    step = TILE + GRID_PADDING
    for s in grid_scale(h, w):
        small = pixels[::s, ::s]  # (h/s, w/s)
        # A genuine upscale repeats each pixel s x s times; tile() pads with black (0).
        if not np.array_equal(np.repeat(np.repeat(small, s, 0), s, 1), pixels):
            continue
        pad_rows = np.arange(small.shape[0]) % step < GRID_PADDING
        pad_cols = np.arange(small.shape[1]) % step < GRID_PADDING
        if small[pad_rows].any() or small[:, pad_cols].any():
            continue
        rows, cols = (small.shape[0] - GRID_PADDING) // step, (small.shape[1] - GRID_PADDING) // step
        corners = [(GRID_PADDING + r * step, GRID_PADDING + c * step) for r in range(rows) for c in range(cols)]
        tiles = [small[y : y + TILE, x : x + TILE] for y, x in corners]  # row-major, as tile() fills them
        n = len(tiles)
        while n > (rows - 1) * cols and n > 1 and not tiles[n - 1].any():  # empty slots of the last row
            n -= 1
        return check_images(np.stack(tiles[:n]), str(path))
    raise UserError(
        f"{path}: {w}x{h} pixels is not a grid of 28x28 tiles with {GRID_PADDING}-pixel black padding at any "
        f"integer scale (each side must be scale * (30 * tiles + 2))"
    )
