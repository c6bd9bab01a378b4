"""The resume rules: what ``train --resume RUN`` does to a run on disk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import RunConfig, validate
from ..errors import UserError
from ..runs.checkpoint import Checkpoint, read_checkpoint
from ..runs.store import WEIGHTS, finished_record, is_finished, load_config


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


def plan_resume(run_dir: Path, *, epochs: int | None = None, steps: int | None = None,
                max_steps: int | None = None) -> ResumePlan:  # fmt: skip
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
