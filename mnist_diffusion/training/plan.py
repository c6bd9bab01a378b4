"""The plan of a run: which optimizer steps it takes and what is due after each (:class:`StepPlan`),
and the resume rules, what ``train --resume RUN`` does to a run on disk (:func:`plan_resume`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import RunConfig, validate
from ..data.clusters import save_clusters
from ..errors import UserError
from ..io import copy_file, fsync_dir
from ..runs import lock
from ..runs.checkpoint import Checkpoint, read_checkpoint
from ..runs.folder import NewRun, reserve_run
from ..runs.store import (
    GUIDE,
    WEIGHTS,
    finished_record,
    is_finished,
    keep_metrics_until,
    load_config,
    save_config,
    save_run_info,
)
from ..runtime import describe_machine

LOG_EVERY = 50  # optimizer steps between metrics.jsonl lines (and loss read-backs on a GPU)
CHECKPOINT_EVERY = 500  # optimizer steps between checkpoints, besides every epoch's end


@dataclass(frozen=True)
class Due:
    """What is due after an optimizer step."""

    last: bool  # the plan's last step: the run finishes after it
    check: bool  # read the divergence watch
    log: bool  # a metrics.jsonl line
    guide: bool  # keep the EMA weights as the autoguidance guide
    checkpoint: bool  # save a checkpoint


@dataclass(frozen=True)
class StepPlan:
    """Which steps a run takes: ``total_steps`` planned (the learning rate and the guide follow
    them), stopping after ``stop_step`` (``max_steps``, or a spent time budget, can end it first).
    :meth:`due` says what comes after each step."""

    steps_per_epoch: int
    total_steps: int
    stop_step: int
    guide_step: int  # the step whose EMA weights become the guide, or -1
    check_every: int  # steps between reads of the divergence watch besides the save points

    @classmethod
    def of(cls, cfg: RunConfig, steps_per_epoch: int, check_every: int) -> StepPlan:
        """The plan of ``cfg``: ``steps``, or epochs x steps per epoch, stopped at ``max_steps``."""
        t = cfg.train
        total = t.steps or t.epochs * steps_per_epoch
        stop = min(total, t.max_steps) if t.max_steps else total
        # Runs without digit labels keep their EMA weights at this step as the autoguidance guide.
        guided = t.guide_at > 0 and (t.clusters or not cfg.model.num_classes)
        guide = max(1, round(t.guide_at * total)) if guided else -1
        return cls(steps_per_epoch, total, stop, guide, check_every)

    def due(self, step: int) -> Due:
        """What is due after optimizer step ``step`` (1-based)."""
        last = step == self.stop_step
        log = step % LOG_EVERY == 0 or last
        checkpoint = step % self.steps_per_epoch == 0 or step % CHECKPOINT_EVERY == 0 or last
        return Due(last, log or step % self.check_every == 0, log, step == self.guide_step, checkpoint)


@dataclass(frozen=True)
class ResumePlan:
    """What ``train --resume RUN`` does (see :func:`plan_resume`)."""

    run_dir: Path  # the run resumed
    cfg: RunConfig  # the config to train with: the run's own, with the budget asked for
    action: Literal["continue", "extend", "finished"]
    checkpoint: Checkpoint | None  # its checkpoint, verified (None when finished: nothing to load)

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint is not None else -1


def plan_resume(
    run_dir: Path, *, epochs: int | None = None, steps: int | None = None, max_steps: int | None = None
) -> ResumePlan:
    """The rules of ``train --resume``, one each:

    - flags not given keep the run's saved values;
    - the same plan (no budget flag, or the saved values): an interrupted run continues in place
      to the end its config plans; a finished run is left as it is ("finished", nothing to do), and
      one whose final weights were removed or changed since is refused;
    - another budget (``--epochs``, ``--steps``, ``--max-steps``): a new run folder that starts from this run's
      checkpoint and records it as its parent ("extend"), so every folder keeps the result it was
      created for.
    """
    saved = load_config(run_dir)
    budget = {k: v for k, v in (("epochs", epochs), ("steps", steps), ("max_steps", max_steps)) if v is not None}
    try:
        cfg = validate(dataclasses.replace(saved, train=dataclasses.replace(saved.train, **budget)))
    except ValueError as e:
        raise UserError(str(e)) from None
    same_plan = cfg.train == saved.train
    if same_plan and is_finished(run_dir):
        return ResumePlan(run_dir, cfg, "finished", None)
    record = finished_record(run_dir)
    if same_plan and record is not None:  # finished, but its final weights are gone or were changed
        raise UserError(
            f"run {run_dir.name} finished its plan at step {record['step']}, but its {WEIGHTS} is missing or not "
            "the weights it finished with; nothing was changed. A longer budget (--epochs, --steps or --max-steps) "
            "trains a new run from its checkpoint"
        )
    return ResumePlan(run_dir, cfg, "continue" if same_plan else "extend", read_checkpoint(run_dir, cfg))


class RunFolder:
    """The folder a training writes (:func:`open_run_folder`): a resumed run's own, or a new run's,
    hidden until :meth:`publish` (after its first checkpoint). Its lock is held until :meth:`close`."""

    def __init__(self, path: Path, new: NewRun | None):
        self.path, self._new, self._published = path, new, False

    @property
    def name(self) -> str:
        """The folder's name (a new run's as it will be published)."""
        return self._new.final.name if self._new is not None else self.path.name

    def publish(self) -> Path:
        """A new run's folder under its real name, with ``latest`` pointing at it."""
        if self._new is not None and not self._published:
            self.path, self._published = self._new.publish(), True
        return self.path

    def close(self) -> None:
        """A new run never published is removed (the artifacts folder is as it was before); a
        published one's lock is released. A resumed run's lock is its resumer's."""
        if self._new is not None and not self._published:
            self._new.discard()
        elif self._published:
            lock.release(self.path)
        self._new = None


def open_run_folder(
    artifacts_dir: Path,
    run_name: str | None,
    cfg: RunConfig,
    resume: ResumePlan | None,
    *,
    clusters: torch.Tensor | None,
    device: torch.device | None = None,
) -> RunFolder:
    """The :class:`RunFolder` a training writes (rank 0 alone calls this):

    - an interrupted run (``continue``) trains in its own folder: temporary files of a killed
      write are removed, and metrics.jsonl is cut back to the checkpoint's step;
    - anything else is a new run folder (named ``run_name``, else the parent's or the preset's
      name), hidden until published, holding its config, run.json and ``clusters``; a child run
      (``extend``) also gets its parent's guide and its metrics up to the step it starts from,
      and run.json names the parent; run.json records the machine behind ``device``, which trains it.
    """
    if resume is not None and resume.action == "continue":
        for junk in resume.run_dir.glob(".*.tmp"):  # left by a process killed inside a write
            junk.unlink(missing_ok=True)
        keep_metrics_until(resume.run_dir, resume.step)  # the steps after it are replayed
        return RunFolder(resume.run_dir, None)
    name = run_name or (resume.run_dir.name.split("-", 1)[-1] if resume is not None else cfg.preset)
    new = reserve_run(artifacts_dir, name)
    try:
        save_config(new.path, cfg)
        if clusters is not None:
            save_clusters(new.path, clusters, cfg.train.clusters)
        parent = None
        if resume is not None:  # extend: start from the parent's state, keep its history
            parent = {"run": resume.run_dir.name, "step": resume.step}
            if (resume.run_dir / GUIDE).is_file():
                copy_file(resume.run_dir / GUIDE, new.path / GUIDE)
            keep_metrics_until(new.path, resume.step, source=resume.run_dir)
        save_run_info(new.path, parent, describe_machine(device).to_dict() if device is not None else None)
        fsync_dir(new.path)
    except BaseException:
        new.discard()
        raise
    return RunFolder(new.path, new)
