"""The learner: the network, its EMA and AdamW, the precision, and one optimizer step (the
diffusion loss, backward, clipping, AdamW, the EMA), with a watch on the device for the first
step whose loss or gradient is not finite. The recipe's numbers are in recipe.py."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ModelConfig, RunConfig
from ..diffusion.losses import diffusion_loss
from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..nets.unet import build_model
from ..runs.checkpoint import Checkpoint, restore
from ..runtime import DistInfo, EagerFallback, autocast, autocast_dtype, compile_by_default, compile_network
from .batches import Batch
from .recipe import lr_at, make_ema, make_optimizer


@dataclass
class Snapshot:
    """A copy of a learner's state (:meth:`Learner.snapshot`): each tensor with its value, and the rest."""

    values: list[tuple[torch.Tensor, torch.Tensor]]
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    ema_updates: int
    scaler: dict


class Learner:
    """The network ``cfg.model`` on ``device`` with its EMA and optimizer, trained one step at a
    time (:meth:`step`). ``total_steps`` is the plan the learning rate follows; ``compile`` is
    ``--compile``/``--no-compile``, or None for the default where it pays (:func:`compile_by_default`).
    ``network`` builds the network from ``cfg.model`` after the run's seed is set (default:
    :func:`build_model`; a benchmark passes the UNet without normalisation)."""

    def __init__(
        self,
        cfg: RunConfig,
        device: torch.device,
        info: DistInfo,
        *,
        total_steps: int,
        start_step: int = 0,
        compile: bool | None = False,
        log: Callable[[str], None] = print,
        network: Callable[[ModelConfig], nn.Module] = build_model,
    ):
        self.cfg, self.device, self.total_steps = cfg, device, total_steps
        self.autocast = autocast_dtype(cfg.train.precision, device)
        if self.autocast == torch.bfloat16 and device.type == "cpu":
            log("bf16 autocast: this CPU has bf16 units (--precision fp32 turns it off)")
        # fp16 needs its loss scaled so small gradients survive; bf16 and fp32 do not (a no-op then).
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast == torch.float16)
        torch.manual_seed(cfg.train.seed)
        self.schedule = Schedule(cfg.diffusion, device)
        ab = self.schedule.final_alpha_bar
        if ab > 1e-3:
            log(
                f"warning: this schedule ends at alpha_bar_T = {ab:.3g} (sqrt = {math.sqrt(ab):.2f}): x_T still holds "
                "part of the digit, but sampling starts from pure noise. The cosine schedule ends at pure noise."
            )
        self.model = network(cfg.model).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model, cfg)
        self.opt = make_optimizer(self.model, cfg, device)
        self.distributed = info.enabled  # one of several processes, under torchrun
        self.net = DistributedDataParallel(self.model) if info.enabled else self.model
        if compile is None:
            why = compile_by_default(device, self.autocast, total_steps)
            if why:
                log(f"torch.compile: {why}")
            compile = why is not None
        self.compiled = compile
        if compile:
            self.net = EagerFallback(self.net, compile_network(self.net, device, self.autocast), log, required=compile)
        # The first step (1-based) whose loss or gradient norm was not finite, or -1: kept on the
        # device and read only at check points, so a GPU step needs no extra sync.
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step_number = torch.full((), start_step, dtype=torch.long, device=device)

    def restore(self, ckpt: Checkpoint, world_size: int) -> None:
        """Load a verified checkpoint's weights, EMA, optimizer and loss-scaler state; it must come
        from as many processes as this one is trained by."""
        if ckpt.meta["world_size"] != world_size:
            raise UserError(
                f"{ckpt.path.parent.name} was trained by {ckpt.meta['world_size']} process(es); resume "
                f"it with as many (this is {world_size})"
            )
        restore(ckpt, model=self.model, ema=self.ema, opt=self.opt, device=self.device)
        self.ema.updates = ckpt.meta["ema_updates"]
        if self.scaler.is_enabled() and isinstance(ckpt.meta.get("grad_scaler"), dict):
            self.scaler.load_state_dict(ckpt.meta["grad_scaler"])

    # ---------------------------------------------------------------------------- one step

    def step(self, batch: Batch, step: int) -> torch.Tensor:
        """One optimizer step (0-based ``step``) on ``batch``: :meth:`forward_backward`, then
        :meth:`update`. Returns the loss as a device scalar (not synced)."""
        loss = self.forward_backward(batch)
        self.update(step, loss)
        return loss

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """The network's half of a step: zero the gradients, forward and loss (under the
        precision's autocast), backward (of the scaled loss in fp16). Returns the loss, detached."""
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.autocast):
            loss = diffusion_loss(self.net, self.schedule, self.cfg.diffusion, batch.x0, batch.t, batch.noise, batch.y)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def update(self, step: int, loss: torch.Tensor) -> None:
        """The rest of a step, on the gradients :meth:`forward_backward` left: the learning rate of
        step ``step``, gradient clipping, the divergence watch, AdamW and the EMA."""
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.cfg, self.total_steps)
        self.scaler.unscale_(self.opt)  # fp16: the true gradients, for clipping and the watch
        clip = self.cfg.train.grad_clip or math.inf  # the norm is computed either way: the watch reads it
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.watch(loss, grad_norm)
        self.scaler.step(self.opt)  # fp16: skips a step whose gradients overflowed, and lowers the scale
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.ema.updates += 1

    def watch(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember, on the device, the first step whose loss or gradient norm is not finite (in
        fp16 an overflowing gradient is the loss scaler's business: it skips that step)."""
        self.step_number += 1
        bad = ~torch.isfinite(loss)
        if not self.scaler.is_enabled():
            bad |= ~torch.isfinite(grad_norm)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.step_number, self.first_bad))

    def first_non_finite(self, step: int, *, state: bool = False) -> int:
        """The first step so far whose loss or gradient was not finite (a sync), or, with
        ``state``, ``step`` if any weight, EMA weight or optimizer state is not finite; else -1."""
        first = int(self.first_bad)
        if first < 0 and state:
            tensors = [*self.model.parameters(), *self.ema.parameters()]
            tensors += [v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)]
            if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                first = step
        return first

    # ---------------------------------------------------------------------------- state

    def checkpoint_meta(self) -> dict:
        """What a checkpoint records of the learner besides its tensors."""
        meta = {"ema_updates": self.ema.updates, "compiled": self.compiled}  # a resumed run compiles as this one did
        if self.scaler.is_enabled():
            meta["grad_scaler"] = self.scaler.state_dict()
        return meta

    def snapshot(self, extra: Sequence[torch.Tensor] = ()) -> Snapshot:
        """Everything a training step changes, copied: weights, EMA, optimizer and loss-scaler
        state, the divergence watch, the random states, and the ``extra`` tensors (a device step's)."""
        values = [(x, x.detach().clone()) for x in self._state_tensors(extra)]
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return Snapshot(values, torch.get_rng_state(), cuda_rng, self.ema.updates, self.scaler.state_dict())

    def restore_snapshot(self, snap: Snapshot, extra: Sequence[torch.Tensor] = ()) -> None:
        """Put a :meth:`snapshot` back, in place (a captured CUDA graph holds these very tensors);
        optimizer state created since is reset to AdamW's initial zeros."""
        kept = {id(x) for x, _ in snap.values}
        with torch.no_grad():
            for x, value in snap.values:
                x.copy_(value)
            for x in self._state_tensors(extra):
                if id(x) not in kept:
                    x.zero_()
        torch.set_rng_state(snap.cpu_rng)
        if snap.cuda_rng is not None:
            torch.cuda.set_rng_state(snap.cuda_rng, self.device)
        self.ema.updates = snap.ema_updates
        self.scaler.load_state_dict(snap.scaler)

    def _state_tensors(self, extra: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        opt_state = [v for state in self.opt.state.values() for v in state.values() if torch.is_tensor(v)]
        return [
            *self.model.parameters(),
            *self.model.buffers(),
            *self.ema.parameters(),
            *self.ema.buffers(),
            *opt_state,
            self.step_number,
            self.first_bad,
            *extra,
        ]

    def weights_digest(self) -> str:
        """sha256 of the trained (not averaged) weights, to check that every rank holds the same."""
        h = hashlib.sha256()
        for name, value in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
