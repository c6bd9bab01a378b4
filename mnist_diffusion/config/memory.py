"""Memory estimates made before anything is allocated, so that a size no machine here can hold
is a one-line error at once rather than a failure minutes into the work."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .run import ModelConfig, RunConfig

MEMORY_FALLBACK = 16 * 2**30  # bytes of memory assumed where the system does not say how much it has

IMAGE_BYTES = 4 * 28 * 28  # one digit as float32, (1, 28, 28)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (os.sysconf), or MEMORY_FALLBACK where it cannot say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return MEMORY_FALLBACK
    return pages * page_size if pages > 0 and page_size > 0 else MEMORY_FALLBACK


def check_memory(need: int, what: str, hint: str) -> None:
    """A ValueError saying ``what`` would need ``need`` bytes, and ``hint``, if that is more than
    this machine's memory (:func:`memory_bytes`)."""
    have = memory_bytes()
    if need > have:
        raise ValueError(
            f"{what} would need about {need / 2**30:.3g} GiB of memory, more than this machine's "
            f"{have / 2**30:.3g} GiB; {hint}"
        )


def image_bytes(scale: int = 1) -> int:
    """The memory one digit takes while a command holds it: its float32 tensor a few times over
    (the batches, their concatenation, a grid's tiles) and its pixels in a picture at ``scale``
    (a byte each, a few copies)."""
    return 6 * IMAGE_BYTES + 4 * (28 + 2) ** 2 * scale**2


def check_image_count(n: int, flag: str, *, scale: int = 1, low: int = 1, each: int = 1) -> int:
    """``n``, a number of digits a command makes (``flag``; ``each`` digits per unit of it), if it
    is at least ``low`` and they fit in memory (:func:`image_bytes` at the picture's ``scale``);
    else a ValueError."""
    if n < low:
        raise ValueError(f"{flag} must be at least {low} (got {n})")
    what = f"{flag} {n}" + (f" ({n * each:,} digits)" if each > 1 else "")
    check_memory(n * each * image_bytes(scale), what, f"use a smaller {flag}")
    return n


def _widths(m: ModelConfig) -> list[int]:
    return [m.channels * k for k in m.channel_mult]  # at 28x28, 14x14, 7x7


def parameter_count(m: ModelConfig) -> int:
    """The number of parameters of the network ``m`` describes (nets/unet.py), from its shape alone."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return k * k * c_in * c_out + c_out

    ch, c = m.channels, m.in_channels
    if m.arch == "seed":  # three convolutions down, two transposed ones up, one out
        return (
            conv(c, ch, 3)
            + conv(ch, 2 * ch, 3)
            + conv(2 * ch, 4 * ch, 3)
            + conv(4 * ch, 2 * ch, 4)
            + conv(2 * ch, ch, 4)
            + conv(ch, c, 3)
        )
    emb = 4 * ch

    def res(c_in: int, c_out: int) -> int:  # two GroupNorms, two 3x3 convolutions, the embedding's shift, a skip
        return (
            2 * c_in
            + conv(c_in, c_out, 3)
            + emb * c_out
            + c_out
            + 2 * c_out
            + conv(c_out, c_out, 3)
            + (conv(c_in, c_out, 1) if c_in != c_out else 0)
        )

    widths = _widths(m)
    total = (ch * emb + emb) + (emb * emb + emb) + ((m.num_classes + 1) * emb if m.num_classes else 0)
    total += conv(c, widths[0], 3)
    cur, skips = widths[0], []
    for level, width in enumerate(widths):
        for _ in range(m.num_res_blocks):
            total, cur = total + res(cur, width), width
        skips.append(cur)
        total += conv(cur, cur, 3) if level < len(widths) - 1 else 0
    total += 2 * res(cur, cur) + (2 * cur + conv(cur, 3 * cur, 1) + conv(cur, cur, 1) if m.attention else 0)
    for level in reversed(range(len(widths))):
        for i in range(m.num_res_blocks):
            total, cur = total + res(cur + skips[level] if i == 0 else cur, widths[level]), widths[level]
    return total + 2 * cur + conv(cur, c, 3)


def activation_bytes(m: ModelConfig) -> int:
    """About the memory one image's feature maps take in a training step of the network ``m``
    describes (float32, all kept for the backward pass); a sampling step holds less."""
    sizes = [28 * 28, 14 * 14, 7 * 7]
    if m.arch == "seed":
        ch = m.channels
        maps = sizes[0] * ch + sizes[1] * 2 * ch + sizes[2] * 4 * ch + sizes[1] * 2 * ch + sizes[0] * ch
        return 4 * (3 * maps + 2 * sizes[0] * m.in_channels)  # each layer's input, output and activation

    def res(c_in: int, c_out: int, hw: int) -> int:  # its input twice (norm, activation), 8 maps of its width
        return hw * (2 * c_in + 8 * c_out)

    widths = _widths(m)
    total = sizes[0] * (m.in_channels + widths[0])
    cur, skips = widths[0], []
    for level, width in enumerate(widths):
        for _ in range(m.num_res_blocks):
            total, cur = total + res(cur, width, sizes[level]), width
        skips.append(cur)
        total += cur * sizes[level + 1] if level < len(widths) - 1 else 0
    total += 2 * res(cur, cur, sizes[-1]) + (sizes[-1] * (6 * cur + 4 * sizes[-1]) if m.attention else 0)
    for level in reversed(range(len(widths))):
        total += sizes[level] * (cur + (cur + skips[level]))  # the upsampled map and its concatenation
        for i in range(m.num_res_blocks):
            total, cur = total + res(cur + skips[level] if i == 0 else cur, widths[level], sizes[level]), widths[level]
    return 4 * (total + 3 * sizes[0] * cur)


def check_training_memory(cfg: RunConfig) -> RunConfig:
    """``cfg`` if training it fits in this machine's memory: the parameters six times over (the
    weights, their gradients, AdamW's two moments, the EMA and the guide) and one batch of
    activations; else a ValueError naming the flags that size it."""
    m, t = cfg.model, cfg.train
    params = parameter_count(m)
    need = 6 * 4 * params + t.batch_size * activation_bytes(m)
    check_memory(
        need,
        f"training a network of {params:,} parameters in batches of {t.batch_size:,}",
        "use a smaller --channels, --channel-mult or --batch-size",
    )
    return cfg
