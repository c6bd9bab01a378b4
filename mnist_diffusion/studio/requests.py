"""What the page may ask for: one model per request, each field typed and bounded, and each turned
into the settings object the command line uses (:class:`SamplingConfig`, the editing constants),
whose own checks then run. A request that fails either is answered with a 4xx and the reason."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..config import INPAINT_JUMPS, INTERPOLATE_FRAMES, SDEDIT_STRENGTH, Guidance, SamplingConfig

PIXELS = 28 * 28  # a drawing: 784 values, row by row
MAX_DIGITS = 64  # the most digits one sample request draws
MAX_EDITS = 16  # the most completions or clean-ups one request makes
MAX_FRAMES = 16  # the most pictures of one walk
MAX_RESAMPLE = 10  # RePaint's r: each block of steps walked at most this many times
STUDIO_STEPS = 20  # the page's default model evaluations: a sample that streams in about the time `sample` takes
STUDIO_RESAMPLE = 1  # the page's default r for "fill the rest": 8 completions in about 2.5 s on a 2-core CPU

Pixel = Annotated[float, Field(ge=0.0, le=1.0)]
Drawing = Annotated[list[Pixel], Field(min_length=PIXELS, max_length=PIXELS)]
Mask = Annotated[list[bool], Field(min_length=PIXELS, max_length=PIXELS)]


class Request(BaseModel):
    """Fields every request has: the page that sent it (a newer request from the same page cancels
    this one) and the run, by its folder's name among the runs the studio lists."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    page_id: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    run: str = Field(min_length=1, max_length=128)


class Sampling(Request):
    """The sampling flags of `mnistdiff sample`, as the page sends them."""

    sampler: str = SamplingConfig.sampler
    steps: int | None = STUDIO_STEPS
    eta: float = 0.0
    seed: int = 0
    autoguidance: float | None = None
    label_guidance: float | None = None
    cluster_guidance: float | None = None
    digit: int | None = None

    def sampling(self) -> SamplingConfig:
        """The request as a checked :class:`SamplingConfig` (ValueError naming the flag if not)."""
        guidance = Guidance(auto=self.autoguidance, labels=self.label_guidance, clusters=self.cluster_guidance)
        return SamplingConfig(
            sampler=self.sampler, steps=self.steps, eta=self.eta, seed=self.seed, guidance=guidance
        ).check()


class SampleRequest(Sampling):
    """`sample -n N`: N digits, streamed step by step."""

    n: int = Field(16, ge=1, le=MAX_DIGITS)


class CompleteRequest(Sampling):
    """`inpaint`: fill what was not drawn (or the painted ``mask``: True where to fill), n times."""

    drawing: Drawing
    mask: Mask | None = None
    n: int = Field(8, ge=1, le=MAX_EDITS)
    jumps: int = Field(INPAINT_JUMPS, ge=1, le=100)
    resample: int = Field(STUDIO_RESAMPLE, ge=1, le=MAX_RESAMPLE)
    match_clusters: bool = False  # `inpaint --match-clusters`: clustered runs, with MNIST's training digits at hand

    def missing(self) -> torch.Tensor:
        """bool [1 x 28 x 28]: the pixels to fill."""
        if self.mask is not None:
            return torch.tensor(self.mask).reshape(1, 28, 28)
        return digit_of(self.drawing)[0] == 0


class CleanupRequest(Sampling):
    """`sample --init`: SDEdit of the drawing at ``strength``, n times."""

    drawing: Drawing
    strength: float = Field(SDEDIT_STRENGTH, gt=0.0, le=1.0)
    n: int = Field(8, ge=1, le=MAX_EDITS)


class ForwardRequest(Request):
    """`visualize-forward`: a test digit (or the drawing) noised to x_t with the seed's noise."""

    t: int = Field(ge=0)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    test_digit: int = Field(0, ge=0)
    drawing: Drawing | None = None


class WalkRequest(Sampling):
    """`interpolate`: from one end to the other, each a seed or a drawing."""

    a: int | Drawing = 0
    b: int | Drawing = 1
    frames: int = Field(INTERPOLATE_FRAMES, ge=2, le=MAX_FRAMES)

    def end(self, which: int | list[float]) -> int | torch.Tensor:
        return which if isinstance(which, int) else digit_of(which)


def digit_of(drawing: list[float]) -> torch.Tensor:
    """784 values in [0, 1] as a digit [1 x 28 x 28]."""
    return torch.tensor(drawing, dtype=torch.float32).reshape(1, 28, 28)
