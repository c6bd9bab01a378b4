"""The training loop: batches indexed from one uint8 tensor on the device, the diffusion loss,
AdamW with warm-up and cosine decay, an EMA of the weights, and resumable checkpoints
(safetensors + JSON) that make 8 steps + resume bit-identical to 16 steps straight."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import __version__
from .artifacts import (
    CHECKPOINT,
    CHECKPOINT_META,
    GUIDE,
    WEIGHTS,
    append_metrics,
    create_run_dir,
    load_config,
    load_tensors_and_metadata,
    read_metrics,
    resolve_run,
    save_config,
    save_tensors,
    set_latest,
    weights_metadata,
    write_manifest,
)
from .clusters import load_clusters, pixel_clusters, save_clusters
from .config import RunConfig
from .data import ensure_mnist, load_mnist
from .errors import UserError
from .generate import default_conditional_nrow, generate, load_run, parse_labels
from .images import loss_figure, save_grid
from .io import atomic_write_json
from .losses import diffusion_loss
from .model import build_model
from .runtime import DistInfo, broadcast_object, configure_cpu_threads, init_distributed, pick_device, use_bf16
from .schedule import Schedule

LOG_EVERY = 50  # optimizer steps between metrics.jsonl lines (and loss read-backs on a GPU)
CHECKPOINT_EVERY = 500  # optimizer steps between checkpoints, besides every epoch's end
END_GRID = 64  # samples in the grid drawn at the end of training, 8 x 8
END_GRID_CONDITIONAL = 80  # conditional runs: a row of 8 for each digit 0-9


class TrainingDiverged(UserError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    interrupted: bool
    seconds: float


def lr_at(step: int, cfg: RunConfig, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% of lr at
    ``total_steps`` (the planned epochs; ``max_steps`` only stops early, so resuming with a
    larger budget replays the same schedule)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(num_updates: int, cfg: RunConfig) -> float:
    """The EMA decay for the next update; with ema_warmup, min(decay, (1 + n) / (10 + n))."""
    decay = cfg.train.ema_decay
    if cfg.train.ema_warmup:
        decay = min(decay, (1 + num_updates) / (10 + num_updates))
    return decay


def fused_adamw(device: torch.device) -> bool:
    """AdamW's fused kernel: on CUDA, and on the CPU from torch 2.4 (there a step of the default
    preset's optimizer takes about 1 ms instead of 4)."""
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and (major, minor) >= (2, 4))


def make_ema(model: nn.Module, cfg: RunConfig) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (torch.optim.swa_utils)."""

    def ema_update(ema_params, params, num_averaged):
        decay = ema_decay_at(ema.updates, cfg)
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.updates = 0  # optimizer steps averaged so far, a Python int so reading it never syncs
    return ema


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Noise and timesteps of one step come from their own seed, so resuming needs no RNG
    state beyond the step number."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 1_009 + rank)


def _epoch_order(seed: int, epoch: int, n: int, info: DistInfo, device: torch.device) -> torch.Tensor:
    """This rank's disjoint shard of a fresh permutation of the n training images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
    shard = n // info.world_size
    return perm[info.rank * shard : (info.rank + 1) * shard].to(device)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = opt.state_dict()
    tensors = {
        f"optim.{idx}.{key}": (value if torch.is_tensor(value) else torch.tensor(value))
        for idx, param_state in state["state"].items()
        for key, value in param_state.items()
    }
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


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
        resume: str | None = None,
        compile: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        stop: threading.Event | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        self.info = init_distributed(device)
        self.device = pick_device(device, self.info.local_rank)
        if self.device.type == "cpu":
            configure_cpu_threads(self.info.world_size)
        self.log = log if self.info.is_main else (lambda _msg: None)
        self.progress = progress and self.info.is_main
        self.stop = stop or threading.Event()
        self.on_step = on_step
        self.start_step = 0

        if resume is not None:
            run_dir = resolve_run(resume, artifacts_dir)
            saved = load_config(run_dir)
            self.cfg = _resume_config(saved, cfg)
        else:
            self.cfg = cfg
            run_dir = None
            if self.info.is_main:
                run_dir = create_run_dir(artifacts_dir, run_name or cfg.preset)
                save_config(run_dir, cfg)
                set_latest(artifacts_dir, run_dir)
            run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, self.info))
        self.run_dir = run_dir
        self.artifacts_dir = artifacts_dir
        cfg = self.cfg

        # Data: the whole training set once, as uint8 on the training device.
        if self.info.is_main:
            ensure_mnist(data_dir, log=self.log)
        if self.info.enabled:
            dist.barrier()
        images, labels = load_mnist(data_dir, "train")
        if cfg.train.clusters:  # self-labels instead of the digits (clusters.py)
            labels = self._cluster_labels(images, resumed=resume is not None)
        self.images, self.labels = images.to(self.device), labels.to(self.device)  # (N, 28, 28) uint8, (N,)
        self.steps_per_epoch = (len(images) // self.info.world_size) // cfg.train.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"batch size {cfg.train.batch_size} is larger than the {len(images)} training images")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, cfg.train.max_steps) if cfg.train.max_steps else self.total_steps
        # Runs without digit labels keep their EMA weights at this step as the autoguidance guide.
        guided = cfg.train.guide_at > 0 and (cfg.train.clusters or not cfg.model.num_classes)
        self.guide_step = max(1, round(cfg.train.guide_at * self.total_steps)) if guided else -1

        self.bf16 = use_bf16(cfg.train.precision, self.device)
        if self.bf16 and self.device.type == "cpu":
            self.log("bf16 autocast: this CPU has bf16 units (--precision fp32 turns it off)")

        # Model, EMA, optimizer.
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
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=fused_adamw(self.device),
        )
        if resume is not None:
            self._load_checkpoint()
        self.net = DistributedDataParallel(self.model) if self.info.enabled else self.model
        if compile:
            self.net = torch.compile(self.net)

    def _cluster_labels(self, images: torch.Tensor, resumed: bool) -> torch.Tensor:
        """Each training image's k-means cluster [N]. A new run's main process computes them and
        saves them in the run; every other rank, and a resumed run, reads them back from there."""
        k = self.cfg.train.clusters
        if len(images) < k:
            raise UserError(f"{k} clusters need at least {k} training images (got {len(images)})")
        if self.info.is_main and not resumed:
            start = time.perf_counter()
            save_clusters(self.run_dir, pixel_clusters(images, k, seed=self.cfg.train.seed), k)
            seconds = time.perf_counter() - start
            self.log(f"self-labels: {k} k-means clusters of the pixels in {seconds:.1f} s (no digit labels)")
        if self.info.enabled:
            dist.barrier()
        assign = load_clusters(self.run_dir, k)[0]
        if len(assign) != len(images):
            raise UserError(
                f"run {self.run_dir.name} was clustered on {len(assign)} training images, the data has {len(images)}"
            )
        return assign

    # ----------------------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, step: int, loss: float | None, seconds: float) -> None:
        if not self.info.is_main:
            return
        opt_tensors, groups = _flatten_optimizer(self.opt)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update(opt_tensors)
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss,
            "ema_updates": self.ema.updates,
            "param_groups": groups,
            "world_size": self.info.world_size,
            "train_seconds": seconds,
            "mnist_diffusion_version": __version__,
        }
        # One file holds tensors and their metadata, so they can never disagree; the JSON beside
        # it is a copy for people and for `mnistdiff runs`.
        save_tensors(self.run_dir / CHECKPOINT, tensors, {"checkpoint": json.dumps(meta)})
        atomic_write_json(self.run_dir / CHECKPOINT_META, meta)
        write_manifest(self.run_dir)

    def _load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise UserError(f"run {self.run_dir.name} has no checkpoint to resume from")
        tensors, metadata = load_tensors_and_metadata(path)
        try:
            meta = json.loads(metadata["checkpoint"])
        except (KeyError, json.JSONDecodeError):
            raise UserError(f"{path} has no readable checkpoint metadata") from None
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        try:
            self.model.load_state_dict(model_state)
            self.ema.load_state_dict(ema_state)
            self.opt.load_state_dict(_unflatten_optimizer(tensors, meta["param_groups"]))
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(
                f"checkpoint of run {self.run_dir.name} does not match its config: {str(e)[:200]}"
            ) from None
        self.ema.updates = int(meta["ema_updates"])
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.start_step = int(meta["step"])
        self.prior_seconds = float(meta.get("train_seconds", 0.0))
        if self.start_step >= self.stop_step:
            raise UserError(
                f"run {self.run_dir.name} is already at step {self.start_step} of its budget of {self.stop_step}; "
                "raise --max-steps or --epochs to continue it"
            )
        self.log(f"resuming {self.run_dir.name} from step {self.start_step}")

    # ----------------------------------------------------------------------------- the loop

    def _batch(self, order: torch.Tensor, pos: int, step: int):
        """Images in [-1, 1] as (B, 1, 28, 28), labels or None, timesteps and noise."""
        cfg = self.cfg
        b = cfg.train.batch_size
        idx = order[pos * b : (pos + 1) * b]
        x0 = self.images[idx].unsqueeze(1).float().div_(127.5).sub_(1.0)  # (B, 1, 28, 28)
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
        return x0, y, t, noise

    def _train_step(self, order, pos, step) -> torch.Tensor:
        x0, y, t, noise = self._batch(order, pos, step)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.cfg, self.total_steps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = diffusion_loss(self.net, self.schedule, self.cfg.diffusion, x0, t, noise, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.ema.update_parameters(self.model)
        self.ema.updates += 1
        return loss.detach()

    def _should_stop(self) -> bool:
        """Ctrl-C on any rank stops every rank at the same step."""
        flag = self.stop.is_set()
        if self.info.enabled:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def run(self) -> TrainResult:
        cfg = self.cfg
        b = cfg.train.batch_size * self.info.world_size
        seconds_before = getattr(self, "prior_seconds", 0.0)
        bar = tqdm(
            total=self.stop_step * b,
            initial=self.start_step * b,
            unit="img",
            unit_scale=True,
            desc=f"train {self.run_dir.name}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        self.model.train()
        order, order_epoch = None, -1
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        loss_value, started = None, time.perf_counter()
        check_every = 1 if self.device.type == "cpu" else LOG_EVERY
        step = self.start_step
        interrupted = False
        try:
            while step < self.stop_step:
                epoch, pos = divmod(step, self.steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = (
                        _epoch_order(cfg.train.seed, epoch, len(self.images), self.info, self.device),
                        epoch,
                    )
                window_loss += self._train_step(order, pos, step)
                window_steps += 1
                step += 1
                bar.update(b)
                last = step == self.stop_step
                if step % check_every == 0 or step % LOG_EVERY == 0 or last:
                    value = window_loss.item() / window_steps
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f"the loss became {value} at step {step}: training stopped. The last good checkpoint is "
                            f"kept in {self.run_dir} (try a lower --lr)"
                        )
                    if step % LOG_EVERY == 0 or last:
                        elapsed = time.perf_counter() - window_start
                        loss_value = value
                        record = {
                            "step": step,
                            "epoch": round(step / self.steps_per_epoch, 4),
                            "loss": value,
                            "lr": self.opt.param_groups[0]["lr"],
                            "images_per_sec": window_steps * b / max(elapsed, 1e-9),
                        }
                        if self.info.is_main:
                            append_metrics(self.run_dir, record)
                        bar.set_postfix(loss=f"{value:.4f}", epoch=f"{record['epoch']:.2f}")
                        window_loss.zero_()
                        window_steps, window_start = 0, time.perf_counter()
                if step == self.guide_step and self.info.is_main:  # the weak model of autoguidance
                    save_tensors(self.run_dir / GUIDE, self.ema.module.state_dict(), weights_metadata(self.cfg))
                if self.on_step is not None:
                    self.on_step(step)
                seconds = seconds_before + time.perf_counter() - started
                if step % self.steps_per_epoch == 0 or step % CHECKPOINT_EVERY == 0 or last:
                    self._save_checkpoint(step, loss_value, seconds)
                # Under torchrun the ranks agree on stopping every LOG_EVERY steps (a collective
                # each step would stall the GPU); alone, the flag is read after every step.
                if not last and (not self.info.enabled or step % LOG_EVERY == 0) and self._should_stop():
                    self._save_checkpoint(step, loss_value, seconds)
                    interrupted = True
                    break
        finally:
            bar.close()
        seconds = seconds_before + time.perf_counter() - started
        if not interrupted:
            self._finish(step, loss_value, seconds)
        return TrainResult(self.run_dir, step, loss_value, interrupted, seconds)

    def _weights_digest(self) -> str:
        h = hashlib.sha256()
        for name, value in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _finish(self, step: int, loss: float | None, seconds: float) -> None:
        """Final weights, loss curve, a sample grid and the manifest (rank 0)."""
        digests = [self._weights_digest()]
        if self.info.enabled:  # every rank's weights, so anyone can check they stayed in sync
            digests = [None] * self.info.world_size
            dist.all_gather_object(digests, self._weights_digest())
        if not self.info.is_main:
            return
        save_tensors(self.run_dir / WEIGHTS, self.ema.module.state_dict(), weights_metadata(self.cfg))
        append_metrics(
            self.run_dir,
            {"step": step, "train_seconds": round(seconds, 2), "done": True, "rank_weight_sha256": digests},
        )
        loss_figure(read_metrics(self.run_dir), self.run_dir / "loss.png", f"{self.run_dir.name}: training loss")
        run = load_run(self.run_dir, self.device)  # the weights just saved, and the guide if there is one
        n = END_GRID_CONDITIONAL if run.conditional else END_GRID
        labels = parse_labels(None, None, n, run.conditional)
        images = generate(run, n, seed=self.cfg.train.seed, labels=labels, precision=self.cfg.train.precision,
                          progress=self.progress)  # fmt: skip
        nrow = default_conditional_nrow(n) if run.conditional else 8
        save_grid(images, self.run_dir / "samples.png", nrow=nrow, scale=2)
        write_manifest(self.run_dir)
        self.log(f"done: {step} steps in {seconds / 60:.1f} min; weights, loss.png and samples.png in {self.run_dir}")


BUDGET_FIELDS = ("epochs", "max_steps")


def _resume_config(saved: RunConfig, requested: RunConfig) -> RunConfig:
    """The saved config with only the budget (epochs, max_steps) taken from the request."""
    train = dataclasses.replace(saved.train, **{f: getattr(requested.train, f) for f in BUDGET_FIELDS})
    return dataclasses.replace(saved, train=train)


def train(cfg: RunConfig, **kwargs) -> TrainResult:
    """Train a model (or resume one with ``resume=RUN``); see :class:`Trainer` for the options.
    Under torchrun, leaves the process group it joined, so no rank exits with it still running."""
    trainer = Trainer(cfg, **kwargs)
    try:
        return trainer.run()
    finally:
        if trainer.info.enabled and dist.is_initialized():
            dist.destroy_process_group()
