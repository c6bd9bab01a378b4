"""The training loop: batches indexed from one uint8 tensor on the device, the diffusion loss,
AdamW with warm-up and cosine decay, an EMA of the weights, and resumable checkpoints
(safetensors + JSON) that make 8 steps + resume bit-identical to 16 steps straight.

Nothing non-finite is ever written: every step records on the device whether its loss or gradient
norm was finite, and every save first checks that flag and the weights, EMA and optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data.clusters import load_clusters, pixel_clusters, save_clusters
from ..data.mnist import ensure_mnist, load_mnist
from ..diffusion import pixels_to_x0
from ..diffusion.losses import diffusion_loss
from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..io import copy_file, fsync_dir, save_tensors
from ..nets.unet import build_model
from ..pictures.figures import loss_figure
from ..runs import lock
from ..runs.checkpoint import restore, save_checkpoint
from ..runs.store import (
    GUIDE,
    WEIGHTS,
    NewRun,
    append_metrics,
    keep_metrics_until,
    read_metrics,
    reserve_run,
    save_config,
    save_run_info,
    update_run_info,
    weights_metadata,
    write_finished,
    write_manifest,
)
from ..runtime import (
    DistInfo,
    EagerFallback,
    autocast,
    autocast_dtype,
    broadcast_object,
    compile_by_default,
    compile_network,
    describe_machine,
    init_distributed,
    matmul_rate,
    precision_name,
    setup_device,
    sync,
)
from .graphs import DeviceStep, GraphStep
from .plan import ResumePlan
from .recipe import lr_at, make_ema, make_optimizer
from .speed import describe_speed, duration, step_flops_per_image

LOG_EVERY = 50  # optimizer steps between metrics.jsonl lines (and loss read-backs on a GPU)
CHECKPOINT_EVERY = 500  # optimizer steps between checkpoints, besides every epoch's end
ESTIMATE_AFTER = 12  # steps after which `train` says how long the rest will take
BUDGET_MARGIN = 0.03  # share of a time budget left for checkpoints and logging
REPLAN_AFTER = 200  # steps after which a time-budget run plans again from its own pace (within warm-up)


class TrainingDiverged(UserError):
    pass


class _Window:
    """The steps since the last metrics line: their summed loss (on the device) and their time."""

    def __init__(self, loss: torch.Tensor):
        self.loss, self.steps, self.last_steps, self.start = loss, 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor | None) -> None:
        """Count a step, and add its loss (None: the device step added it to the same tensor)."""
        if loss is not None:
            self.loss += loss
        self.steps += 1

    def take(self) -> tuple[float, float]:
        """The mean loss and the seconds of the window (a sync), and a fresh window."""
        loss, seconds = self.loss.item() / self.steps, time.perf_counter() - self.start
        self.loss.zero_()
        self.last_steps, self.steps, self.start = self.steps, 0, time.perf_counter()
        return loss, seconds


@dataclass
class Snapshot:
    """A copy of a trainer's state (Trainer.snapshot): each tensor with its value, and the rest."""

    values: list[tuple[torch.Tensor, torch.Tensor]]
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    ema_updates: int
    scaler: dict


class Monitor(Protocol):
    """Something that watches a run as it trains (samples or scores it every N steps, writes
    TensorBoard events): called after every optimizer step, on every rank, with the step's 1-based
    number. It must leave the trainer's state and random number generators as it found them, so a
    run with monitors trains the same weights as one without."""

    def after_step(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        """Figures to log for this step (a metrics.jsonl line; the first is also shown in the
        progress bar), or None."""

    def close(self) -> None:
        """The run stopped (finished, interrupted or failed)."""

    # Optional: ``seconds_per_step(trainer) -> float``, the seconds the monitor adds to an average
    # optimizer step, measured once as a time budget plans (on its clock), so the plan leaves time
    # for it; with an ``every`` attribute, that cost comes as one event every ``every`` steps, and
    # the plan counts the events its steps reach. A monitor without it is taken to cost nothing.


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    interrupted: bool
    seconds: float


@dataclass(frozen=True)
class Batch:
    """One training batch: ``x0`` images in [-1, 1] (B, 1, 28, 28), labels ``y`` (B,) or None,
    timesteps ``t`` (B,) and the noise ``noise`` like x0."""

    x0: torch.Tensor
    y: torch.Tensor | None
    t: torch.Tensor
    noise: torch.Tensor


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Noise and timesteps of one step come from their own seed, so resuming needs no RNG
    state beyond the step number."""
    from ..seeds import derive_seed

    return torch.Generator(device=device).manual_seed(derive_seed(seed * 1_000_003, step * 1_009, rank))


def _epoch_order(seed: int, epoch: int, n: int, info: DistInfo, device: torch.device) -> torch.Tensor:
    """This rank's disjoint shard of a fresh permutation of the n training images."""
    from ..seeds import derive_seed

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed * 7_919, epoch)))
    shard = n // info.world_size
    return perm[info.rank * shard : (info.rank + 1) * shard].to(device)


# ------------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run: owns the model, EMA, optimizer, data and run folder."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        data_dir: Path,
        artifacts_dir: Path,
        run_name: str | None,
        device: str,
        resume: ResumePlan | None = None,
        compile: bool | None = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        stop: threading.Event | None = None,
        on_step: Callable[[int], None] | None = None,
        on_finish: Callable[[Path, nn.Module, bool], None] | None = None,
        monitors: Sequence[Monitor] = (),
        time_budget: float | None = None,
        cuda_graphs: bool | None = None,
    ):
        self.info = init_distributed(device)
        self.device = setup_device(device, self.info)
        if cuda_graphs and self.device.type != "cuda":
            raise UserError(f"--cuda-graphs needs a CUDA GPU (this run is on {self.device.type})")
        self.cfg = resume.cfg if resume is not None else cfg
        self.log = log if self.info.is_main else (lambda _msg: None)
        self.progress = progress and self.info.is_main
        self.stop = stop or threading.Event()
        self.on_step = on_step  # called after every step with its (1-based) number
        self.on_finish = on_finish  # (run_dir, EMA network, progress) at the end, before the weights: the grid
        self.monitors = list(monitors)  # watch the run as it trains (see Monitor)
        self.time_budget = time_budget  # seconds to plan and train in: plan the steps to fit, and stop on time
        self._monitor_costs: list[tuple[int, float]] = []  # the monitors' (every, seconds an event), for a budget
        self._planning_seconds = 0.0  # of a budget's, spent measuring the pace and the monitors
        if resume is not None and resume.checkpoint is None:
            raise UserError(f"run {resume.run_dir.name} has finished its plan: there is nothing to resume")
        self.start_step = resume.step if resume is not None else 0
        self._saved_step = self.start_step  # the step of the run folder's checkpoint
        self.prior_seconds = float(resume.checkpoint.meta.get("train_seconds", 0.0)) if resume is not None else 0.0

        # Everything is built and checked before anything is written: a run folder appears only
        # once its first checkpoint is in it (_open_run_dir, then publish in run()).
        self._resumed = resume.run_dir if resume is not None else None
        self._new_run: NewRun | None = None  # the hidden folder of a new run, until it is published
        self._published: Path | None = None  # the new run's folder once published (its lock is ours)
        self._unpublished = resume is None or resume.action != "continue"  # on every rank, till _publish
        self.run_dir = resume.run_dir if resume is not None else Path(artifacts_dir)  # until _open_run_dir
        images, labels = self._load_data(data_dir)
        self._plan(len(images), resume)
        self._clusters = None
        if self.cfg.train.clusters:  # self-labels instead of the digits (clusters.py)
            labels = self._cluster_labels(images, resume)
        self.images, self.labels = images.to(self.device), labels.to(self.device)  # (N, 28, 28) uint8, (N,)
        self._build(compile, resume)
        if resume is not None:
            self._restore(resume)
        # The step as device operations (training/graphs.py), captured as a CUDA graph where asked.
        self._device_step = DeviceStep(self) if self.cfg.train.step_on_device else None
        self._graph: GraphStep | None = None
        self._device_at: int | None = None  # the step the device step's buffers point at
        if cuda_graphs is None:  # a run whose step is on the device replays it as a graph wherever it can
            cuda_graphs = self.device.type == "cuda"
        eager_only = self.info.enabled or self.cfg.model.dropout or self.autocast == torch.float16
        if cuda_graphs and self._device_step is not None and eager_only:
            self.log("CUDA graphs are not used under torchrun, with dropout or in fp16: eager steps instead")
            cuda_graphs = False
        self.cuda_graphs = cuda_graphs and self._device_step is not None
        self.run_dir = self._open_run_dir(artifacts_dir, run_name, resume)

    # ---------------------------------------------------------------------------- set-up steps

    def _load_data(self, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training set: uint8 images (N, 28, 28) and labels (N,), fetched if missing."""
        if self.info.is_main:
            ensure_mnist(data_dir, log=self.log)
        if self.info.enabled:
            dist.barrier()
        return load_mnist(data_dir, "train")

    def _plan(self, n_images: int, resume: ResumePlan | None) -> None:
        """Steps per epoch, and the plan's steps (:meth:`_plan_steps`)."""
        t = self.cfg.train
        self.steps_per_epoch = (n_images // self.info.world_size) // t.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"batch size {t.batch_size} is larger than the {n_images} training images")
        self._plan_steps()
        if resume is not None and resume.action == "extend" and self.start_step >= self.stop_step:
            raise UserError(
                f"run {resume.run_dir.name} is at step {self.start_step}, and the budget asked for ends at step "
                f"{self.stop_step}: give a larger --epochs, --steps or --max-steps to train it further"
            )

    def _plan_steps(self) -> None:
        """The planned total (which the learning rate follows), where to stop, and the step whose
        EMA weights become the autoguidance guide."""
        t = self.cfg.train
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, t.max_steps) if t.max_steps else self.total_steps
        # Runs without digit labels keep their EMA weights at this step as the autoguidance guide.
        guided = t.guide_at > 0 and (t.clusters or not self.cfg.model.num_classes)
        self.guide_step = max(1, round(t.guide_at * self.total_steps)) if guided else -1

    def _open_run_dir(self, artifacts_dir: Path, run_name: str | None, resume: ResumePlan | None) -> Path:
        """The resumed run's folder, or a new run's hidden folder with its config, run.json and
        clusters (rank 0 makes it, the others learn its name): published by :meth:`_publish`
        once its first checkpoint is in it."""
        run_dir = None
        if self.info.is_main:
            if resume is not None and resume.action == "continue":
                run_dir = resume.run_dir
                for junk in run_dir.glob(".*.tmp"):  # left by a process killed inside a write
                    junk.unlink(missing_ok=True)
                keep_metrics_until(run_dir, self.start_step)  # the steps after it are replayed
            else:
                name = run_name or (resume.run_dir.name.split("-", 1)[-1] if resume is not None else self.cfg.preset)
                self._new_run = reserve_run(artifacts_dir, name)
                try:
                    run_dir = self._new_run.path
                    save_config(run_dir, self.cfg)
                    if self._clusters is not None:
                        save_clusters(run_dir, self._clusters, self.cfg.train.clusters)
                    parent = None
                    if resume is not None:  # extend: start from the parent's state, keep its history
                        parent = {"run": resume.run_dir.name, "step": self.start_step}
                        if (resume.run_dir / GUIDE).is_file():
                            copy_file(resume.run_dir / GUIDE, run_dir / GUIDE)
                        keep_metrics_until(run_dir, self.start_step, source=resume.run_dir)
                    save_run_info(run_dir, parent)
                    fsync_dir(run_dir)
                except BaseException:
                    self.abandon()
                    raise
        return Path(broadcast_object(str(run_dir), self.info))

    def _publish(self) -> None:
        """Give a new run's folder its real name and point ``latest`` at it (rank 0; every rank
        learns the name)."""
        final = None
        if self.info.is_main and self._new_run is not None:
            final = self._published = self._new_run.publish()
            self._new_run = None
            if self._resumed is not None:
                self.log(f"{self._resumed.name} continues as {final.name} (from step {self.start_step})")
        self.run_dir = Path(broadcast_object(str(final or self.run_dir), self.info))
        self._unpublished = False

    @property
    def _run_name(self) -> str:
        """The run folder's name (a new run's as it will be published)."""
        return self._new_run.final.name if self._new_run is not None else self.run_dir.name

    def abandon(self) -> None:
        """A new run that failed before its folder was published: remove it, so the artifacts
        folder is as it was before."""
        if self._new_run is not None:
            self._new_run.discard()
            self._new_run = None

    def close(self) -> None:
        """Remove a new run's folder that was never published, and release its lock."""
        self.abandon()
        if self._published is not None:
            lock.release(self._published)
            self._published = None

    def _cluster_labels(self, images: torch.Tensor, resume: ResumePlan | None) -> torch.Tensor:
        """Each training image's k-means cluster [N]: a new run's main process computes them (every
        other rank receives them; _open_run_dir saves them in the run), a resumed run reads its own."""
        k = self.cfg.train.clusters
        if len(images) < k:
            raise UserError(f"{k} clusters need at least {k} training images (got {len(images)})")
        if resume is not None:
            assign = load_clusters(resume.run_dir, k)[0]
            if len(assign) != len(images):
                raise UserError(f"run {resume.run_dir.name} was clustered on {len(assign)} training images, "
                                f"the data has {len(images)}")  # fmt: skip
            if resume.action == "extend":
                self._clusters = assign  # the child keeps its parent's clusters
            return assign
        assign = None
        if self.info.is_main:
            start = time.perf_counter()
            assign = pixel_clusters(images, k, seed=self.cfg.train.seed)
            seconds = time.perf_counter() - start
            self.log(f"self-labels: {k} k-means clusters of the pixels in {seconds:.1f} s (no digit labels)")
        self._clusters = broadcast_object(assign, self.info)
        return self._clusters

    def _build(self, compile: bool | None, resume: ResumePlan | None) -> None:
        """Precision, schedule, model, EMA, optimizer, and the on-device divergence watch."""
        cfg = self.cfg
        self.autocast = autocast_dtype(cfg.train.precision, self.device)
        if self.autocast == torch.bfloat16 and self.device.type == "cpu":
            self.log("bf16 autocast: this CPU has bf16 units (--precision fp32 turns it off)")
        if self.progress:  # what this machine is and can do, for the estimate that follows the first steps
            rate = matmul_rate(self.device, self.autocast or torch.float32)
            self.log(f"{describe_machine(self.device).line()}; {precision_name(self.autocast)} matrix rate "
                     f"{rate:.0f} GFLOP/s; a training step is {step_flops_per_image(cfg) / 1e6:.0f} MFLOP per image")
        # fp16 needs its loss scaled so small gradients survive; bf16 and fp32 do not (a no-op then).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast == torch.float16)
        torch.manual_seed(cfg.train.seed)
        self.schedule = Schedule(cfg.diffusion, self.device)
        ab = self.schedule.final_alpha_bar
        if ab > 1e-3:
            self.log(
                f"warning: this schedule ends at alpha_bar_T = {ab:.3g} (sqrt = {math.sqrt(ab):.2f}): x_T still holds "
                "part of the digit, but sampling starts from pure noise. The cosine schedule ends at pure noise."
            )
        self.model = build_model(cfg.model).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model, cfg)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.net = DistributedDataParallel(self.model) if self.info.enabled else self.model
        self.compiled = self._compile_choice(compile, resume)
        if self.compiled:
            compiled = compile_network(self.net, self.device, self.autocast)
            self.net = EagerFallback(self.net, compiled, self.log, required=compile is True)
        # The first step (1-based) whose loss or gradient norm was not finite, or -1: kept on the
        # device and read only at check points, so a GPU step needs no extra sync.
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its batch order), see batch_for
        self._shown: dict[str, str] = {}  # what the progress bar shows beside the images/s
        self._step_number = torch.full((), self.start_step, dtype=torch.long, device=self.device)

    def _compile_choice(self, compile: bool | None, resume: ResumePlan | None) -> bool:
        """``--compile``/``--no-compile`` as given; left out (None), as the run it resumes did, or
        where it pays (:func:`compile_by_default`; a time budget's steps are not planned yet: eager)."""
        if compile is not None:
            return compile
        if resume is not None and resume.checkpoint is not None:
            return bool(resume.checkpoint.meta.get("compiled", False))
        why = None if self.time_budget else compile_by_default(self.device, self.autocast, self.total_steps)
        if why:
            self.log(f"torch.compile: {why}")
        return why is not None

    def _restore(self, resume: ResumePlan) -> None:
        ckpt = resume.checkpoint
        if ckpt.meta["world_size"] != self.info.world_size:
            raise UserError(
                f"run {resume.run_dir.name} was trained by {ckpt.meta['world_size']} process(es); resume it with "
                f"as many (this is {self.info.world_size})"
            )
        restore(ckpt, model=self.model, ema=self.ema, opt=self.opt, device=self.device)
        self.ema.updates = ckpt.meta["ema_updates"]
        if self.scaler.is_enabled() and isinstance(ckpt.meta.get("grad_scaler"), dict):
            self.scaler.load_state_dict(ckpt.meta["grad_scaler"])
        self.log(f"resuming {resume.run_dir.name} from step {self.start_step}")

    # ---------------------------------------------------------------------------- one step

    def make_batch(self, order: torch.Tensor, pos: int, step: int) -> Batch:
        """Batch ``pos`` of an epoch's ``order``, with the timesteps, noise and label dropout of
        optimizer step ``step`` (from that step's own seed)."""
        cfg = self.cfg
        b = cfg.train.batch_size
        idx = order[pos * b : (pos + 1) * b]
        x0 = pixels_to_x0(self.images[idx])  # (B, 1, 28, 28) in [-1, 1]
        if self.device.type == "cuda":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        g = _step_generator(cfg.train.seed, step, self.info.rank, self.device)
        t = torch.randint(0, cfg.diffusion.timesteps, (b,), generator=g, device=self.device)
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        y = None
        if cfg.model.num_classes:
            y = self.labels[idx]
            drop = torch.rand(b, generator=g, device=self.device) < cfg.train.label_dropout
            y = torch.where(drop, torch.full_like(y, cfg.model.num_classes), y)  # classifier-free guidance
        return Batch(x0, y, t, noise)

    def advance(self, step: int) -> torch.Tensor | None:
        """Take optimizer step ``step`` (0-based) the way this run takes its steps: the eager
        recipe (returns the loss), or the step on the device, replayed as a CUDA graph where one
        was captured (its loss goes to the device step's accumulator: returns None)."""
        if self._device_step is None:
            return self.step(self.batch_for(step), step)
        if self._device_at != step or step % self.steps_per_epoch == 0:  # a jump, or a new epoch's order
            self._point_device_step(step)
        self._device_step.prepare(step)
        (self._graph or self._device_step)()
        self._device_at = step + 1
        self.ema.updates += 1
        return None

    def _point_device_step(self, step: int) -> None:
        """Set the device step's buffers to step ``step`` and its epoch's batch order."""
        self.batch_for(step)  # makes the epoch's order
        self._device_step.set(step, self._order[1])
        self._device_at = step

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
        self._step_number += 1
        bad = ~torch.isfinite(loss)
        if not self.scaler.is_enabled():
            bad |= ~torch.isfinite(grad_norm)
        self._first_bad.copy_(torch.where(bad & (self._first_bad < 0), self._step_number, self._first_bad))

    def check_finite(self, step: int, *, state: bool = False) -> None:
        """Raise TrainingDiverged if a step so far had a non-finite loss or gradient, or (``state``)
        any weight, EMA weight or optimizer state is not finite. Called before every write."""
        first = int(self._first_bad)
        if first < 0 and state:
            tensors = [*self.model.parameters(), *self.ema.parameters()]
            tensors += [v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)]
            if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                first = step
        if first >= 0:
            if self._unpublished:
                kept = "nothing of this run was saved"
            else:
                kept = f"the last good checkpoint (step {self._saved_step}) stays in {self.run_dir}"
            raise TrainingDiverged(
                f"training diverged: the loss or its gradients became NaN or infinite at step {first}. Nothing "
                f"after that was saved; {kept} (try a lower --lr)"
            )

    @property
    def check_every(self) -> int:
        """Steps between reads of the divergence flag besides the save points: every step on the
        CPU, where a read costs nothing; every LOG_EVERY steps on a GPU, where it is a sync."""
        return 1 if self.device.type == "cpu" else LOG_EVERY

    # ---------------------------------------------------------------------------- saving

    def _save_checkpoint(self, step: int, loss: float | None, seconds: float) -> None:
        self.check_finite(step, state=True)
        if not self.info.is_main:
            return
        meta = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "stop_step": self.stop_step,
            "loss": loss,
            "ema_updates": self.ema.updates,
            "world_size": self.info.world_size,
            "train_seconds": seconds,
            "compiled": self.compiled,  # a resumed run compiles as this one did (the same floats)
        }
        if self.scaler.is_enabled():
            meta["grad_scaler"] = self.scaler.state_dict()
        save_checkpoint(self.run_dir, self.cfg, model=self.model, ema=self.ema, opt=self.opt, meta=meta,
                        device=self.device)  # fmt: skip
        write_manifest(self.run_dir)
        self._saved_step = step

    def _save_guide(self, step: int) -> None:
        """The EMA weights now, as the weak model of autoguidance."""
        self.check_finite(step, state=True)
        if self.info.is_main:
            save_tensors(self.run_dir / GUIDE, self.ema.module.state_dict(), weights_metadata(self.cfg))

    # ---------------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        """Train from the start (or the checkpoint's) step to the planned stop, logging every
        LOG_EVERY steps, saving the guide and the checkpoints on their steps, and stopping early,
        with a checkpoint, when ``stop`` is set (Ctrl-C). With a time budget, first plan the steps
        to fit it (:meth:`_fit_budget`), and end the run where the budget runs out."""
        self.model.train()
        if self.cuda_graphs and self._graph is None:
            self._point_device_step(self.start_step)
            self._graph = GraphStep(self._device_step)
            self.log("CUDA graphs: the training step is captured once and replayed")
        replan_at, halfway, halfway_seconds, watched = -1, -1, 0.0, 0.0  # watched: seconds in the monitors
        clock = time.perf_counter()  # a time budget's clock: its planning (the timed steps and monitors) counts
        if self.time_budget and self.start_step == 0:
            self._fit_budget(clock)
            replan_at = self._replan_step()
            halfway = replan_at // 2
        b = self.cfg.train.batch_size * self.info.world_size
        bar = tqdm(total=self.stop_step * b, initial=self.start_step * b, unit="img", unit_scale=True,
                   desc=f"train {self._run_name}", disable=not self.progress, dynamic_ncols=True)  # fmt: skip
        if self._unpublished:  # a new run (or child): its first checkpoint, then its folder appears, resumable
            self._save_checkpoint(self.start_step, None, self.prior_seconds)
            self._publish()
        window = _Window(self._device_step.loss_sum if self._device_step else torch.zeros((), device=self.device))
        step, loss, interrupted, started = self.start_step, None, False, time.perf_counter()
        planning = started - clock
        try:
            while step < self.stop_step and not interrupted:
                window.add(self.advance(step))
                step += 1
                bar.update(b)
                if step == halfway:
                    halfway_seconds = time.perf_counter() - started - watched
                if step == replan_at:
                    elapsed = time.perf_counter() - started
                    pace = loop_pace(step, elapsed - watched, halfway, halfway_seconds)  # the steps' own pace
                    self._replan(step, planning + elapsed, pace)
                    bar.total = self.stop_step * b
                self._estimate(step, started)
                if step < self.stop_step and self._agree(self._out_of_time(clock), step):
                    self._end_early(step)  # the budget is spent: this is the last step
                last = step == self.stop_step
                if step % self.check_every == 0 or step % LOG_EVERY == 0 or last:
                    self.check_finite(step)
                if step % LOG_EVERY == 0 or last:
                    loss = self._log(step, window, b, bar)
                if step == self.guide_step:  # the weak model of autoguidance
                    self._save_guide(step)
                if self.on_step is not None:
                    self.on_step(step)
                watch_start = time.perf_counter()
                for monitor in self.monitors:
                    self._log_extra(step, monitor.after_step(self, step), bar)
                watched += time.perf_counter() - watch_start
                seconds = self.prior_seconds + time.perf_counter() - started
                interrupted = not last and self._agree(self.stop.is_set(), step)
                if step % self.steps_per_epoch == 0 or step % CHECKPOINT_EVERY == 0 or last or interrupted:
                    self._save_checkpoint(step, loss, seconds)
        finally:
            bar.close()
            for monitor in self.monitors:
                monitor.close()
        seconds = self.prior_seconds + time.perf_counter() - started
        if not interrupted:
            self._finish(step, loss, seconds)
        return TrainResult(self.run_dir, step, loss, interrupted, seconds)

    # ---------------------------------------------------------------------------- time

    def _fit_budget(self, clock: float) -> None:
        """Plan the steps that fit the time budget at this machine's pace, measured on a scratch
        copy of the run's first steps (so the run trains as ``--steps N`` would, bit for bit), and
        record the plan in config.json and run.json. The budget's ``clock`` started before: the
        measuring (a FID of ``--eval-every``, say) is taken from the budget, not added to it."""
        self._monitor_costs = self._measure_monitors()
        step_seconds = self._scratch_seconds_per_step()
        self._planning_seconds = time.perf_counter() - clock
        left = self.time_budget * (1 - BUDGET_MARGIN) - self._planning_seconds
        planned = steps_that_fit(0, left, step_seconds, self._monitor_costs)
        rate = step_seconds + self._monitor_seconds
        self._set_plan(broadcast_object(planned, self.info), rate, measured_over=0)  # rank 0's pace decides
        watching = self._describe_monitor_cost(rate)
        measuring = f", after {duration(self._planning_seconds)} of measuring" if self._planning_seconds >= 1 else ""
        self.log(f"time budget {duration(self.time_budget)}: {self.total_steps:,} steps at "
                 f"{self._budget_images_per_sec:,.0f} images/s{watching}{measuring}; `mnistdiff train --steps "
                 f"{self.total_steps}{self._compile_flag()}` trains this plan again on any machine")  # fmt: skip

    def _compile_flag(self) -> str:
        """The flag a `train --steps N` that repeats this plan needs to compile as this run does:
        "" where the default for N steps already agrees here, else " --compile" or " --no-compile"."""
        if self.compiled == bool(compile_by_default(self.device, self.autocast, self.total_steps)):
            return ""
        return " --compile" if self.compiled else " --no-compile"

    def _measure_monitors(self) -> list[tuple[int, float]]:
        """What the monitors (progress grids, FIDs) cost, each measured once: (every, seconds an
        event) each, every 1 for one without ``every`` (rank 0 alone samples; the other ranks
        wait for it at the next step's collective)."""
        if not self.info.is_main:
            return []
        costs = []
        for monitor in self.monitors:
            if (seconds_per_step := getattr(monitor, "seconds_per_step", None)) is not None:
                every = getattr(monitor, "every", 1)
                costs.append((every, seconds_per_step(self) * every))
        return costs

    @property
    def _monitor_seconds(self) -> float:
        """What the monitors add to an average step, as measured for a budget (0 without one)."""
        return sum(cost / every for every, cost in self._monitor_costs)

    def _describe_monitor_cost(self, seconds_per_step: float) -> str:
        """ " (watching the run takes 4% of it)", or "" when the monitors cost next to nothing."""
        share = self._monitor_seconds / seconds_per_step
        return f" (watching the run takes {share:.0%} of it)" if share >= 0.005 else ""

    def _replan_step(self) -> int:
        """The step at which a time-budget run plans again from the pace of its own loop (which
        the scratch steps, without checkpoints, logging and a warm machine's slow-down, overrate),
        or -1. Only within warm-up, where the learning rate does not depend on the plan, and before
        the guide's step, so the new plan still trains as ``--steps N`` would, bit for bit."""
        at = min(REPLAN_AFTER, self.cfg.train.warmup_steps)
        before_guide = self.guide_step < 0 or at < self.guide_step
        return at if 0 < at < self.stop_step and before_guide else -1

    def _replan(self, step: int, elapsed: float, pace: float) -> None:
        """Plan the steps again, ``elapsed`` seconds into the budget (planning included), from the
        steps' own ``pace`` in the loop (seconds per step without the monitors, :func:`loop_pace`)
        and the monitors' measured cost."""
        rate = pace + self._monitor_seconds
        due = sum(cost for every, cost in self._monitor_costs if step % every == 0)  # this step's, run after the plan
        left = self.time_budget * (1 - BUDGET_MARGIN) - elapsed - due
        planned = step + steps_that_fit(step, left, pace, self._monitor_costs)
        guided = self.guide_step >= 0
        planned = broadcast_object(planned, self.info)  # rank 0's measurement decides for all
        if planned == self.total_steps or (guided and round(self.cfg.train.guide_at * planned) <= step):
            return  # the same plan, or one whose guide would lie behind us: stop on time instead
        self._set_plan(planned, rate, measured_over=step)
        self.log(f"time budget: {planned:,} steps at {self._budget_images_per_sec:,.0f} images/s"
                 f"{self._describe_monitor_cost(rate)} over the first {step} steps; `mnistdiff train --steps "
                 f"{planned}{self._compile_flag()}` trains this plan again")  # fmt: skip

    def _set_plan(self, planned: int, seconds_per_step: float, measured_over: int) -> None:
        """Make ``planned`` the run's steps and record it in config.json and run.json;
        ``measured_over`` is the number of the run's own steps the pace comes from (0: scratch steps)."""
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, steps=planned))
        self._plan_steps()
        self._budget_images_per_sec = self.cfg.train.batch_size * self.info.world_size / seconds_per_step
        if self.info.is_main:
            save_config(self.run_dir, self.cfg)
            plan = {"seconds": self.time_budget, "planned_steps": planned,
                    "images_per_sec": round(self._budget_images_per_sec, 1), "measured_over_steps": measured_over,
                    "monitor_seconds_per_step": round(self._monitor_seconds, 6),
                    "planning_seconds": round(self._planning_seconds, 3)}  # fmt: skip
            update_run_info(self.run_dir, time_budget=plan)

    def _scratch_seconds_per_step(self, steps: int = 12) -> float:
        """Seconds per optimizer step of this run on this machine: ``steps`` of its own first steps
        (the first two untimed), after which everything is put back as it was (:meth:`snapshot`)."""
        saved = self.snapshot()
        times = []
        for i in range(steps):
            start = time.perf_counter()
            self.advance(self.start_step + i)
            sync(self.device)
            times.append(time.perf_counter() - start)
        self.restore_snapshot(saved)
        return statistics.median(times[2:])

    def snapshot(self) -> Snapshot:
        """Everything a training step changes, copied: weights, EMA, optimizer and loss-scaler
        state, the step's device buffers, the divergence watch, the random states."""
        values = [(x, x.detach().clone()) for x in self._state_tensors()]
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return Snapshot(values, torch.get_rng_state(), cuda_rng, self.ema.updates, self.scaler.state_dict())

    def restore_snapshot(self, snap: Snapshot) -> None:
        """Put a :meth:`snapshot` back, in place (a captured CUDA graph holds these very tensors);
        optimizer state created since is reset to AdamW's initial zeros."""
        kept = {id(x) for x, _ in snap.values}
        with torch.no_grad():
            for x, value in snap.values:
                x.copy_(value)
            for x in self._state_tensors():
                if id(x) not in kept:
                    x.zero_()
        torch.set_rng_state(snap.cpu_rng)
        if snap.cuda_rng is not None:
            torch.cuda.set_rng_state(snap.cuda_rng, self.device)
        self.ema.updates = snap.ema_updates
        self.scaler.load_state_dict(snap.scaler)

    def _state_tensors(self) -> list[torch.Tensor]:
        opt_state = [v for state in self.opt.state.values() for v in state.values() if torch.is_tensor(v)]
        own = [self._step_number, self._first_bad]
        if self._device_step is not None:
            d = self._device_step
            own += [d.step, d.order, d.loss_sum, d.ema_weight, d.lr]
        return [*self.model.parameters(), *self.model.buffers(), *self.ema.parameters(), *self.ema.buffers(),
                *opt_state, *own]  # fmt: skip

    def _out_of_time(self, clock: float) -> bool:
        """The time budget, counted from ``clock`` (before its planning), is spent."""
        return bool(self.time_budget) and time.perf_counter() - clock >= self.time_budget

    def _end_early(self, step: int) -> None:
        """The time budget ran out: end the run after ``step``, recorded as its max_steps, so the
        plan and where it stopped both stay in config.json."""
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, max_steps=step))
        self._plan_steps()
        if self.info.is_main:
            save_config(self.run_dir, self.cfg)
        self.log(f"time budget spent: the run ends at step {step:,} of the {self.total_steps:,} planned")

    def _estimate(self, step: int, started: float) -> None:
        """After the first steps, say how long the rest will take at this pace, on this machine."""
        done = step - self.start_step
        if done == 2:
            self._pace_start = time.perf_counter()  # the first steps warm caches up: time from here
        if done != ESTIMATE_AFTER or self.stop_step - step < ESTIMATE_AFTER:
            return
        seconds_per_step = (time.perf_counter() - self._pace_start) / (ESTIMATE_AFTER - 2)
        images_per_sec = self.cfg.train.batch_size * self.info.world_size / seconds_per_step
        left = (self.stop_step - step) * seconds_per_step
        speed = describe_speed(images_per_sec / self.info.world_size, step_flops_per_image(self.cfg),
                               matmul_rate(self.device, self.autocast or torch.float32))  # fmt: skip
        hint = "; --time-budget 10m for a shorter run" if left > 900 and not self.time_budget else ""
        self.log(f"{self.stop_step - step:,} steps to go: about {duration(left)} at {speed}{hint}")

    def _agree(self, flag: bool, step: int) -> bool:
        """``flag`` on any rank, for every rank. Under torchrun the ranks agree every LOG_EVERY
        steps (a collective each step would stall the GPU); alone, at every step."""
        if not self.info.enabled:
            return flag
        if step % LOG_EVERY:
            return False
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item())

    def batch_for(self, step: int) -> Batch:
        """The batch of optimizer step ``step`` (0-based): its place in its epoch's order."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(self.cfg.train.seed, epoch, len(self.images), self.info, self.device))
        return self.make_batch(self._order[1], pos, step)

    def _log_extra(self, step: int, record: dict[str, float] | None, bar) -> None:
        """A monitor's figures of ``step``: a metrics.jsonl line, and its first in the progress bar."""
        if not record:
            return
        if self.info.is_main:
            append_metrics(self.run_dir, {"step": step, **record})
        name, value = next(iter(record.items()))  # the headline (FID), not its cost
        self._shown[name] = f"{value:.4g}"
        bar.set_postfix(self._shown)

    def _log(self, step: int, window: _Window, images_per_step: int, bar) -> float:
        """A metrics.jsonl line for the steps since the last one; returns their mean loss."""
        loss, seconds = window.take()
        record = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": loss,
            "lr": float(self.opt.param_groups[0]["lr"]),  # a tensor for the step on the device
            "images_per_sec": window.last_steps * images_per_step / max(seconds, 1e-9),
        }
        if self.info.is_main:
            append_metrics(self.run_dir, record)
        self._shown.update(loss=f"{loss:.4f}", epoch=f"{record['epoch']:.2f}")
        bar.set_postfix(self._shown)
        return loss

    def _weights_digest(self) -> str:
        h = hashlib.sha256()
        for name, value in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _finish(self, step: int, loss: float | None, seconds: float) -> None:
        """Loss curve, ``on_finish`` (the sample grid), the final weights and last the manifest (rank 0), so a run
        whose manifest lists its weights is complete, and one killed before is finished again by
        ``--resume``, to the same bytes."""
        self.check_finite(step, state=True)
        digests = [self._weights_digest()]
        if self.info.enabled:  # every rank's weights, so anyone can check they stayed in sync
            digests = [None] * self.info.world_size
            dist.all_gather_object(digests, self._weights_digest())
        if not self.info.is_main:
            return
        keep_metrics_until(self.run_dir, step)  # a finish redone after a crash logs "done" once
        append_metrics(
            self.run_dir,
            {"step": step, "train_seconds": round(seconds, 2), "done": True, "rank_weight_sha256": digests},
        )
        loss_figure(read_metrics(self.run_dir), self.run_dir / "loss.png", f"{self.run_dir.name}: training loss")
        if self.on_finish is not None:
            self.on_finish(self.run_dir, self.ema.module, self.progress)
        save_tensors(self.run_dir / WEIGHTS, self.ema.module.state_dict(), weights_metadata(self.cfg))
        write_manifest(self.run_dir)
        write_finished(self.run_dir, step)  # last, and outside the manifest: a finished run stays finished
        self.log(f"done: {step} steps in {seconds / 60:.1f} min; weights and pictures in {self.run_dir}")


def steps_that_fit(first: int, seconds: float, step_seconds: float, events: Sequence[tuple[int, float]]) -> int:
    """The most steps after step ``first`` that fit in ``seconds`` (at least 1): each step takes
    ``step_seconds``, and each (every, cost) of ``events`` costs ``cost`` after every step whose
    number is a multiple of ``every``, as many times as the steps reach one."""

    def seconds_of(n: int) -> float:
        return n * step_seconds + sum(((first + n) // every - first // every) * cost for every, cost in events)

    lo, hi = 0, int(seconds / step_seconds) + 1  # seconds_of(hi) > seconds: the steps alone overrun
    while hi - lo > 1:  # seconds_of only grows with n: the last n that fits, by bisection
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if seconds_of(mid) <= seconds else (lo, mid)
    return max(1, lo)


def loop_pace(step: int, elapsed: float, halfway: int, halfway_elapsed: float) -> float:
    """Seconds per step of a loop at ``step`` after ``elapsed`` seconds (``halfway_elapsed`` at
    step ``halfway``): the slower of its whole mean and its second half's. A machine that slows
    down as it stays busy (a shared host, a CPU leaving its boost clock) shows it in the second
    half; the first steps' fast pace would plan steps the budget cannot hold, and a run the
    budget stops early ends off its plan (its learning rate above the plan's last), while one
    planned a little short only leaves a little time unused."""
    mean = elapsed / step
    if not 0 < halfway < step:
        return mean
    return max(mean, (elapsed - halfway_elapsed) / (step - halfway))


def train(cfg: RunConfig, **kwargs) -> TrainResult:
    """Train a model (or resume one with ``resume=plan_resume(RUN)``); see :class:`Trainer` for
    the options. Under torchrun, leaves the process group it joined, so no rank exits with it
    still running."""
    resume = kwargs.get("resume")
    with contextlib.ExitStack() as stack:
        if resume is not None and int(os.environ.get("RANK", "0")) == 0:
            stack.enter_context(lock.run_lock(resume.run_dir))  # one writer per run (re-entrant for the CLI's)
        trainer = Trainer(cfg, **kwargs)
        stack.callback(trainer.close)  # a new run that failed before its folder was published leaves none
        try:
            return trainer.run()
        finally:
            if trainer.info.enabled and dist.is_initialized():
                dist.destroy_process_group()
