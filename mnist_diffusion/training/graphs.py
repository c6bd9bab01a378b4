"""The training step on the device alone: the learner's recipe as tensor operations on static
buffers, with no host work and no host sync inside, so that on a GPU it can be captured once as a
CUDA graph and replayed (torch.cuda.CUDAGraph), one launch a step instead of hundreds.

Everything a step reads lives on the device: the epoch's batch order, the step number, the
learning rate and the EMA's weight (both set from the host before each step, outside any graph:
a new value needs no recapture). Its timesteps, noise and label dropout come from a
counter-based hash of (seed, step, rank): the same numbers on the CPU and on a GPU, whatever ran
before, so a run resumed at step k draws what a straight run draws at step k. On the CPU the same
step runs eagerly; the tests check it there (``train.device_step`` in the config chooses it).
"""

from __future__ import annotations

import math

import torch

from ..diffusion import pixels_to_x0
from ..diffusion.losses import diffusion_loss
from ..runtime import autocast
from .batches import Batch, Batches
from .learner import Learner
from .recipe import ema_decay_at, lr_at

_M32 = 0xFFFFFFFF
# Streams of the counter hash: which random numbers of a step are which.
STREAM_TIMESTEPS, STREAM_NOISE, STREAM_DROPOUT = 1, 2, 3


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 tensors holding uint32 values, without overflowing int64."""
    low = x * (c & 0xFFFF)  # < 2^48
    high = ((x * (c >> 16)) & 0xFFFF) << 16  # only its low 16 bits reach the low 32 of the product
    return (low + high) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit integers with strong avalanche ("lowbias32", C. Wellons' hash
    prospector): int64 tensors holding uint32 values in, the same out."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def step_key(seed: int, step: torch.Tensor, rank: int) -> torch.Tensor:
    """The hash key of one optimizer step: an int64 scalar on ``step``'s device."""
    return mix32(mix32(mix32(torch.full_like(step, seed & _M32)) ^ step) + rank * 0x9E3779B9)


def counter_uniform(key: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """``n`` float32 uniforms in [0, 1) (24 bits each) for ``key`` and ``stream``: element i is a
    hash of (key, stream, i), so it does not depend on what else was drawn."""
    i = torch.arange(n, device=key.device, dtype=torch.int64)
    h = mix32(mix32(key ^ (stream * 0x85EBCA6B)) + i)
    return (h >> 8).to(torch.float32) * 2.0**-24


def counter_normal(key: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals of ``shape`` from pairs of counter uniforms (Box-Muller)."""
    n = math.prod(shape)
    u = counter_uniform(key, stream, 2 * n)
    u1, u2 = 1.0 - u[:n], u[n:]  # u1 in (0, 1]: its log is finite
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).reshape(shape)


class DeviceStep:
    """One training step of ``learner`` on ``batches``, with all its inputs in device buffers (see
    the module's docstring). ``__call__`` takes the step whose 0-based number is in ``self.step``
    and advances it; the loss is added to ``self.loss_sum``, read only when the loop logs."""

    def __init__(self, learner: Learner, batches: Batches):
        self.learner, self.batches = learner, batches
        cfg, device = learner.cfg, learner.device
        b = cfg.train.batch_size
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.order = torch.zeros(batches.steps_per_epoch * b, dtype=torch.int64, device=device)
        self.offsets = torch.arange(b, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.ema_weight = torch.zeros((), device=device)  # 1 - the EMA's decay
        self.lr = learner.opt.param_groups[0]["lr"]  # a device tensor (recipe.make_optimizer): set, never replaced
        if not torch.is_tensor(self.lr):
            raise ValueError("the step on the device needs an optimizer with a tensor learning rate")

    def buffers(self) -> list[torch.Tensor]:
        """The tensors a step changes besides the learner's (for its snapshots)."""
        return [self.step, self.order, self.loss_sum, self.ema_weight, self.lr]

    def set(self, step: int) -> None:
        """Point the buffers at optimizer step ``step`` (0-based) and its epoch's batch order
        (copied in place, so a captured graph sees it)."""
        self.step.fill_(step)
        self.order.copy_(self.batches.order(step)[: self.order.numel()])

    def prepare(self, step: int) -> None:
        """Before step ``step``: its learning rate and EMA weight, computed on the host as the eager
        recipe computes them and written into the device buffers the step reads."""
        learner = self.learner
        self.lr.fill_(lr_at(step, learner.cfg, learner.total_steps))
        # swa_utils.AveragedModel copies the weights at its first update, then averages
        self.ema_weight.fill_(1.0 - ema_decay_at(learner.ema.updates, learner.cfg) if learner.ema.updates else 1.0)

    def batch(self) -> Batch:
        """The batch of ``self.step``: images at its place in the order, with its own timesteps,
        noise and label dropout."""
        data, cfg = self.batches, self.learner.cfg
        b = cfg.train.batch_size
        idx = self.order[(self.step % data.steps_per_epoch) * b + self.offsets]
        x0 = pixels_to_x0(data.images[idx])  # (B, 1, 28, 28) in [-1, 1]
        if data.device.type == "cuda":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        key = step_key(cfg.train.seed, self.step, data.info.rank)
        timesteps = data.schedule.training_steps(counter_uniform(key, STREAM_TIMESTEPS, b))
        noise = counter_normal(key, STREAM_NOISE, tuple(x0.shape)).to(memory_format=torch.preserve_format)
        y = None
        if cfg.model.num_classes:
            drop = counter_uniform(key, STREAM_DROPOUT, b) < cfg.train.label_dropout
            y = torch.where(drop, torch.full_like(idx, cfg.model.num_classes), data.labels[idx])
        return Batch(x0, y, timesteps, noise)

    def __call__(self) -> None:
        learner, cfg = self.learner, self.learner.cfg
        batch = self.batch()
        learner.opt.zero_grad(set_to_none=False)  # a graph keeps its gradient buffers
        with autocast(learner.device, learner.autocast):
            loss = diffusion_loss(learner.net, learner.schedule, cfg.diffusion, batch.x0, batch.t, batch.noise, batch.y)
        loss.backward()
        params = list(learner.model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip or math.inf)
        learner.watch(loss.detach(), grad_norm)
        learner.opt.step()
        self._update_ema(params)
        self.loss_sum += loss.detach()
        self.step += 1

    @torch.no_grad()
    def _update_ema(self, params: list[torch.Tensor]) -> None:
        """recipe.make_ema's update, ema <- ema + w (weights - ema), with w = 1 - decay read from
        its device buffer (set by :meth:`prepare`)."""
        ema = self.learner.ema
        averages = list(ema.module.parameters())
        torch._foreach_lerp_(averages, params, [self.ema_weight] * len(averages))
        ema.n_averaged += 1


class GraphStep:
    """A :class:`DeviceStep` captured as one CUDA graph: warmed up on a side stream (on a copy of
    the learner's state, put back afterwards), captured once, replayed each step."""

    def __init__(self, step: DeviceStep, warmup: int = 3):
        self.device_step = step
        learner, device = step.learner, step.learner.device
        saved = learner.snapshot(step.buffers())
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        learner.restore_snapshot(saved, step.buffers())  # in place: the graph holds these very tensors

    def __call__(self) -> None:
        self.graph.replay()


def graphs_wanted(asked: bool | None, learner: Learner, log) -> bool:
    """Whether a run whose step is on the device replays it as a CUDA graph: as ``asked``, else
    wherever it can (on CUDA), and never under torchrun, with dropout or in fp16."""
    if asked is None:
        asked = learner.device.type == "cuda"
    if asked and (learner.distributed or learner.cfg.model.dropout or learner.autocast == torch.float16):
        log("CUDA graphs are not used under torchrun, with dropout or in fp16: eager steps instead")
        return False
    return asked
