"""Denoising networks. A network maps ``(x_t, t[, y])`` to a prediction and knows nothing else.

Two architectures:

- :class:`UNet`: sinusoidal timestep embedding, residual blocks with GroupNorm (or none: its
  ``norm`` argument), a 28 -> 14 -> 7 down path and a 7 -> 14 -> 28 up path joined by skip
  connections, optional self-attention at 7x7, optional class embedding for classifier-free
  guidance.
- :class:`SeedNet`: the original plain conv encoder-decoder with no time conditioning, kept so
  the starting point can be reproduced and compared (``--preset seed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Vaswani et al. 2017.

    :param t: a 1-D tensor of N timesteps.
    :return: an [N x dim] tensor: ``[cos(t * f_i), sin(t * f_i)]`` with geometric frequencies.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def upsample_nearest(h: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``h`` [N x C x H x W] to ``size`` (H', W'). Eagerly,
    F.interpolate. Under torch.compile, where ``size`` is twice H x W, the same values as a
    broadcast (expand, then reshape): inductor turns F.interpolate's gradient into a scatter
    (index_put), among the slowest kernels of a compiled CPU step, and the broadcast's into a sum
    it fuses with its neighbours."""
    b, c, height, width = h.shape
    if torch.compiler.is_compiling() and tuple(size) == (2 * height, 2 * width):
        return h[:, :, :, None, :, None].expand(b, c, height, 2, width, 2).reshape(b, c, 2 * height, 2 * width)
    return F.interpolate(h, size=size, mode="nearest")


# Makes a normalisation layer for a feature map of the given number of channels.
Norm = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.GroupNorm:
    """The network's normalisation: GroupNorm (Wu & He 2018) with 8 groups, or one per channel
    where there are fewer."""
    return nn.GroupNorm(min(8, channels), channels)


def no_norm(channels: int) -> nn.Identity:
    """No normalisation: the layer passes its input through and has no weights."""
    return nn.Identity()


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, plus the embedding as a per-channel shift, twice; a residual."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm: Norm = group_norm):
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int = 4, norm: Norm = group_norm):
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # each (B, nh, HW, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """A time-conditioned UNet for 28x28 single-channel images.

    ``forward(x, t, y=None)``: x is [N x C x 28 x 28], t is [N] (int or float timesteps), y is
    [N] class labels in 0..num_classes (the value ``num_classes`` means "no label", used for
    classifier-free guidance). Returns a tensor shaped like x.

    ``norm`` makes each normalisation layer (:data:`Norm`): :func:`group_norm`, the network every
    run trains, or :func:`no_norm`, the same network without them (same weights otherwise, in the
    same order and drawn alike from the same seed), which a benchmark uses to see what the rest
    of a training step costs.
    """

    def __init__(self, cfg: ModelConfig, norm: Norm = group_norm):
        super().__init__()
        ch = cfg.channels
        widths = [ch * m for m in cfg.channel_mult]  # one width per resolution: 28, 14, 7
        emb_dim = 4 * ch
        self.emb_ch = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = cfg.num_classes
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None

        self.stem = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths = []
        cur = widths[0]
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cur, width, emb_dim, cfg.dropout, norm))
                cur = width
            self.down.append(blocks)
            skip_widths.append(cur)
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(cur, cur, 3, stride=2, padding=1))

        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout, norm)
        self.mid_attn = Attention(cur, norm=norm) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout, norm)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for i in range(cfg.num_res_blocks):
                in_ch = cur + skip_widths[level] if i == 0 else cur
                blocks.append(ResBlock(in_ch, widths[level], emb_dim, cfg.dropout, norm))
                cur = widths[level]
            self.up.append(blocks)
        self.out = nn.Sequential(norm(cur), nn.SiLU(), nn.Conv2d(cur, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_ch))  # (B, 4ch)
        if self.label_emb is not None:
            if y is None:  # no label given: the "null" class of classifier-free guidance
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(y)
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)  # 28 -> 14 -> 7
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks in self.up:
            skip = skips.pop()
            if skip.shape[-1] != h.shape[-1]:
                h = upsample_nearest(h, skip.shape[-2:])  # 7 -> 14 -> 28
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.out(h)


class SeedNet(nn.Module):
    """The original network: a plain conv encoder-decoder that ignores ``t`` (and ``y``).

    Kept faithful to the starting script so its results can be reproduced and compared.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.channels
        c = cfg.in_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(c, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1),
            nn.ReLU(),  # 28 -> 14
            nn.Conv2d(2 * ch, 4 * ch, 3, stride=2, padding=1),
            nn.ReLU(),  # 14 -> 7
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * ch, 2 * ch, 4, stride=2, padding=1),
            nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1),
            nn.ReLU(),  # 14 -> 28
            nn.Conv2d(ch, c, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network named by ``cfg.arch``."""
    return {"unet": UNet, "seed": SeedNet}[cfg.arch](cfg)
