"""The training loop. A :class:`Trainer` puts together the batches (batches.py), the learner that
takes a step (learner.py), the plan of what is due after each step (plan.py), and the run folder;
:meth:`Trainer.run` is the loop. Checkpoints are safetensors + JSON, so that 8 steps + resume are
bit-identical to 16 steps straight.

Nothing non-finite is ever written: every step records on the device whether its loss or gradient
norm was finite, and every save first checks that flag and the weights, EMA and optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig
from ..errors import UserError
from ..io import save_tensors
from ..pictures.figures import loss_figure
from ..runs import lock
from ..runs.checkpoint import save_checkpoint
from ..runs.store import (
    GUIDE,
    WEIGHTS,
    append_metrics,
    keep_metrics_until,
    read_metrics,
    save_config,
    weights_metadata,
    write_finished,
    write_manifest,
)
from ..runtime import (
    broadcast_object,
    init_distributed,
    matmul_rate,
    setup_device,
)
from .batches import Batches, cluster_labels, load_training_set, steps_per_epoch
from .budget import BudgetKeeper, TimeBudget
from .graphs import DeviceStep, GraphStep, graphs_wanted
from .learner import Learner
from .log import RunLog
from .monitor import Monitor
from .plan import LOG_EVERY, ResumePlan, StepPlan, open_run_folder
from .speed import describe_speed, machine_line, step_flops_per_image


class TrainingDiverged(UserError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float | None
    interrupted: bool
    seconds: float


class Trainer:
    """One training run: builds and checks everything first, then writes its run folder."""

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
        time_budget: float | TimeBudget | None = None,
        cuda_graphs: bool | None = None,
    ):
        self.info = init_distributed(device)
        self.device = setup_device(device, self.info)
        if cuda_graphs and self.device.type != "cuda":
            raise UserError(f"--cuda-graphs needs a CUDA GPU (this run is on {self.device.type})")
        if resume is not None and resume.checkpoint is None:
            raise UserError(f"run {resume.run_dir.name} has finished its plan: there is nothing to resume")
        self.cfg = resume.cfg if resume is not None else cfg  # as recorded: a budget sets its steps
        self.log = log if self.info.is_main else (lambda _msg: None)
        self.progress = progress and self.info.is_main
        self.stop = stop or threading.Event()
        self.on_step = on_step  # called after every step with its (1-based) number
        self.on_finish = on_finish  # (run_dir, EMA network, progress) at the end, before the weights: the grid
        self.monitors = list(monitors)  # watch the run as it trains (see Monitor)
        self.budget = TimeBudget(time_budget) if isinstance(time_budget, int | float) else time_budget
        self.keeper = BudgetKeeper(self.budget, self) if self.budget is not None else None  # applies the budget
        self.start_step = resume.step if resume is not None else 0
        self.prior_seconds = float(resume.checkpoint.meta.get("train_seconds", 0.0)) if resume is not None else 0.0

        # Everything is built and checked before anything is written (the run folder comes last).
        images, labels = load_training_set(data_dir, self.info, self.log)
        spe = steps_per_epoch(len(images), self.cfg.train.batch_size, self.info)
        self.plan = StepPlan.of(self.cfg, spe, self.check_every)
        if resume is not None and resume.action == "extend" and self.start_step >= self.plan.stop_step:
            raise UserError(
                f"run {resume.run_dir.name} is at step {self.start_step}, and the budget asked for ends "
                f"at step {self.plan.stop_step}: give a larger --epochs, --steps or --max-steps to train "
                "it further"
            )
        clusters = None
        if self.cfg.train.clusters:  # self-labels instead of the digits (data/clusters.py)
            saved_in = resume.run_dir if resume is not None else None
            labels = clusters = cluster_labels(images, self.cfg, self.info, self.log, saved_in=saved_in)
        self.batches = Batches(images, labels, self.cfg, self.info, self.device)
        if self.progress:  # before the network's random weights: measuring the machine draws random numbers
            self.log(machine_line(self.cfg, self.device))
        if compile is None and resume is not None:  # a resumed run compiles as the run did
            compile = bool(resume.checkpoint.meta.get("compiled", False))
        elif compile is None and self.budget is not None:  # its steps are not planned yet: eager
            compile = False
        self.learner = Learner(
            self.cfg,
            self.device,
            self.info,
            total_steps=self.plan.total_steps,
            start_step=self.start_step,
            compile=compile,
            log=self.log,
        )
        if resume is not None:
            self.learner.restore(resume.checkpoint, self.info.world_size)
            self.log(f"resuming {resume.run_dir.name} from step {self.start_step}")
        self.device_step = DeviceStep(self.learner, self.batches) if self.cfg.train.step_on_device else None
        self._graph: GraphStep | None = None
        self._device_at: int | None = None  # the step the device step's buffers point at
        self.cuda_graphs = self.device_step is not None and graphs_wanted(cuda_graphs, self.learner, self.log)
        self._saved_step = self.start_step  # the step of the run folder's checkpoint
        self._resumed = resume.run_dir if resume is not None else None
        self._unpublished = resume is None or resume.action != "continue"  # on every rank, till _publish
        self.folder = (
            open_run_folder(artifacts_dir, run_name, self.cfg, resume, clusters=clusters, device=self.device)
            if (self.info.is_main)
            else None
        )
        self.run_dir = Path(broadcast_object(str(self.folder.path) if self.folder else None, self.info))

    @property
    def check_every(self) -> int:
        """Steps between reads of the divergence flag besides the save points: every step on the
        CPU, where a read costs nothing; every LOG_EVERY steps on a GPU, where it is a sync."""
        return 1 if self.device.type == "cpu" else LOG_EVERY

    # ---------------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        """Train from the start (or the checkpoint's) step to the plan's stop, doing after each
        step what the plan says is due, and stopping early, with a checkpoint, when ``stop`` is set
        (Ctrl-C). With a time budget, first plan the steps to fit it, and end where it runs out."""
        self.learner.model.train()
        if self.cuda_graphs and self._graph is None:
            self._point_device_step(self.start_step)
            self._graph = GraphStep(self.device_step)
            self.log("CUDA graphs: the training step is captured once and replayed")
        if self.keeper is not None:
            self.keeper.plan()
        if self._unpublished:  # a new run (or child): its first checkpoint, then its folder appears
            self._save_checkpoint(self.start_step, None, self.prior_seconds)
            self._publish()
        log = self._run_log()
        step, loss, interrupted, started = self.start_step, None, False, time.perf_counter()
        if self.budget is not None:
            self.budget.begin_loop()
        try:
            while step < self.plan.stop_step and not interrupted:
                log.add(self.advance(step))
                step += 1
                if self.keeper is not None:
                    self.keeper.after_step(step, log)
                log.estimate(step, self.plan.stop_step)
                due = self.plan.due(step)
                if due.check:
                    self.check_finite(step)
                if due.log:
                    loss = log.line(step, float(self.learner.opt.param_groups[0]["lr"]))
                if due.guide:  # the weak model of autoguidance
                    self._save_guide(step)
                if self.on_step is not None:
                    self.on_step(step)
                self._watch(step, log)
                interrupted = not due.last and self.agree(self.stop.is_set(), step)
                if due.checkpoint or interrupted:
                    self._save_checkpoint(step, loss, self.prior_seconds + time.perf_counter() - started)
        finally:
            log.close()
            for monitor in self.monitors:
                monitor.close()
        seconds = self.prior_seconds + time.perf_counter() - started
        if not interrupted:
            self._finish(step, loss, seconds)
        return TrainResult(self.run_dir, step, loss, interrupted, seconds)

    def advance(self, step: int) -> torch.Tensor | None:
        """Take optimizer step ``step`` (0-based) the way this run takes its steps: the eager
        recipe (returns the loss), or the step on the device, replayed as a CUDA graph where one
        was captured (its loss goes to the device step's accumulator: returns None)."""
        if self.device_step is None:
            return self.learner.step(self.batches.batch_for(step), step)
        if self._device_at != step or step % self.plan.steps_per_epoch == 0:  # a jump, or a new epoch's order
            self._point_device_step(step)
        self.device_step.prepare(step)
        (self._graph or self.device_step)()
        self._device_at = step + 1
        self.learner.ema.updates += 1
        return None

    def _point_device_step(self, step: int) -> None:
        self.device_step.set(step)
        self._device_at = step

    def _run_log(self) -> RunLog:
        loss_sum = self.device_step.loss_sum if self.device_step else torch.zeros((), device=self.device)
        return RunLog(
            name=self.run_dir.name,
            images_per_step=self.cfg.train.batch_size * self.info.world_size,
            ranks=self.info.world_size,
            start_step=self.start_step,
            stop_step=self.plan.stop_step,
            steps_per_epoch=self.plan.steps_per_epoch,
            loss_sum=loss_sum,
            write=self._write_metrics,
            say=self.log,
            progress=self.progress,
            speed=lambda images_per_sec: describe_speed(
                images_per_sec, step_flops_per_image(self.cfg), self._matmul_rate()
            ),
            hint=self.budget is None,
        )

    def _write_metrics(self, record: dict) -> None:
        if self.info.is_main:
            append_metrics(self.run_dir, record)

    def _matmul_rate(self) -> float:
        return matmul_rate(self.device, self.learner.autocast or torch.float32)

    def _watch(self, step: int, log: RunLog) -> None:
        """The monitors after ``step``, their time kept apart from the steps' for a budget's pace."""
        start = self.budget.clock() if self.budget is not None else 0.0
        for monitor in self.monitors:
            log.extra(step, monitor.after_step(self, step))
        if self.budget is not None:
            self.budget.watched += self.budget.clock() - start

    def agree(self, flag: bool, step: int) -> bool:
        """``flag`` on any rank, for every rank. Under torchrun the ranks agree every LOG_EVERY
        steps (a collective each step would stall the GPU); alone, at every step."""
        if not self.info.enabled:
            return flag
        if step % LOG_EVERY:
            return False
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item())

    # ---------------------------------------------------------------------------- the plan

    def record_plan(self, **train) -> None:
        """A new plan (``steps`` planned, or ``max_steps`` where a budget ends it), in config.json."""
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, **train))
        self.plan = StepPlan.of(self.cfg, self.plan.steps_per_epoch, self.plan.check_every)
        self.learner.total_steps = self.plan.total_steps
        if self.info.is_main:
            save_config(self.run_dir, self.cfg)

    # ---------------------------------------------------------------------------- saving

    def check_finite(self, step: int, *, state: bool = False) -> None:
        """Raise TrainingDiverged if a step so far had a non-finite loss or gradient, or (``state``)
        any weight, EMA weight or optimizer state is not finite. Called before every write."""
        first = self.learner.first_non_finite(step, state=state)
        if first >= 0:
            kept = (
                "nothing of this run was saved"
                if self._unpublished
                else f"the last good checkpoint (step {self._saved_step}) stays in {self.run_dir}"
            )
            raise TrainingDiverged(
                f"training diverged: the loss or its gradients became NaN or infinite at step "
                f"{first}. Nothing after that was saved; {kept} (try a lower --lr)"
            )

    def _save_checkpoint(self, step: int, loss: float | None, seconds: float) -> None:
        self.check_finite(step, state=True)
        self._saved_step = step
        if not self.info.is_main:
            return
        learner, spe = self.learner, self.plan.steps_per_epoch
        meta = {
            "step": step,
            "epoch": step / spe,
            "steps_per_epoch": spe,
            "stop_step": self.plan.stop_step,
            "loss": loss,
            "world_size": self.info.world_size,
            "train_seconds": seconds,
            **learner.checkpoint_meta(),
        }
        save_checkpoint(
            self.run_dir, self.cfg, model=learner.model, ema=learner.ema, opt=learner.opt, meta=meta, device=self.device
        )
        write_manifest(self.run_dir)

    def _save_guide(self, step: int) -> None:
        """The EMA weights now, as the weak model of autoguidance."""
        self.check_finite(step, state=True)
        if self.info.is_main:
            save_tensors(self.run_dir / GUIDE, self.learner.ema.module.state_dict(), weights_metadata(self.cfg))

    def _finish(self, step: int, loss: float | None, seconds: float) -> None:
        """Loss curve, ``on_finish`` (the sample grid), the final weights, the manifest, and last
        ``finished.json`` (rank 0), so a run whose weights are listed there or in the manifest is
        complete, and one killed before is finished again by ``--resume``, to the same bytes."""
        self.check_finite(step, state=True)
        digests = [self.learner.weights_digest()]
        if self.info.enabled:  # every rank's weights, so anyone can check they stayed in sync
            digests = [None] * self.info.world_size
            dist.all_gather_object(digests, self.learner.weights_digest())
        if not self.info.is_main:
            return
        keep_metrics_until(self.run_dir, step)  # a finish redone after a crash logs "done" once
        done = {"step": step, "train_seconds": round(seconds, 2), "done": True, "rank_weight_sha256": digests}
        append_metrics(self.run_dir, done)
        loss_figure(read_metrics(self.run_dir), self.run_dir / "loss.png", f"{self.run_dir.name}: training loss")
        ema = self.learner.ema.module
        if self.on_finish is not None:
            self.on_finish(self.run_dir, ema, self.progress)
        save_tensors(self.run_dir / WEIGHTS, ema.state_dict(), weights_metadata(self.cfg))
        write_manifest(self.run_dir)
        write_finished(self.run_dir, step)  # last, and outside the manifest: a finished run stays finished
        self.log(f"done: {step} steps in {seconds / 60:.1f} min; weights and pictures in {self.run_dir}")

    # ---------------------------------------------------------------------------- the run folder

    def _publish(self) -> None:
        """Give a new run's folder its real name and point ``latest`` at it (rank 0; every rank
        learns the name)."""
        final = self.folder.publish() if self.folder is not None else None
        if final is not None and self._resumed is not None:
            self.log(f"{self._resumed.name} continues as {final.name} (from step {self.start_step})")
        self.run_dir = Path(broadcast_object(str(final or self.run_dir), self.info))
        self._unpublished = False

    def close(self) -> None:
        """Remove a new run's folder that was never published, and release the run's lock."""
        if self.folder is not None:
            self.folder.close()


def train(cfg: RunConfig, **kwargs) -> TrainResult:
    """Train a model (or resume one with ``resume=plan_resume(RUN)``, holding its lock); see
    :class:`Trainer` for the options. Under torchrun, leaves the process group it joined, so no
    rank exits with it still running."""
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
