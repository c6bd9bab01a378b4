"""`train --tensorboard`: the run's figures as TensorBoard events in ``tensorboard/`` of the run
folder (`tensorboard --logdir artifacts/runs`). TensorBoard is an optional extra:
``pip install tensorboard`` (in a checkout, ``pip install -e '.[tensorboard]'``)."""

from __future__ import annotations

import math

from ..errors import UserError
from ..pictures.grids import tile
from ..runs.store import METRICS, read_metrics
from ..training.monitor import Monitor
from ..training.trainer import Trainer
from .progress import GRID_ROW, SampleMonitor

TENSORBOARD = "tensorboard"  # the folder of the event files in a run folder
_NOT_SCALARS = ("step", "epoch", "fid_n", "done")  # metrics.jsonl fields that are not curves


def require_tensorboard() -> None:
    """A one-line UserError naming the extra to install when TensorBoard is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(in a checkout: pip install -e '.[tensorboard]')"
        ) from None


class TensorBoardMonitor(Monitor):
    """Writes every figure of ``metrics.jsonl`` (loss, learning rate, images/s, FID and its cost) as
    a scalar at its step, and the grids of ``grids`` as images. Give it last in the list of
    monitors: it reads the lines the others logged for the same step. A resumed run drops the
    events of the steps after its checkpoint (``purge_step``), which it replays."""

    def __init__(self, grids: SampleMonitor | None = None):
        require_tensorboard()
        self.grids = grids
        self.writer = None
        self._done = 0  # the step up to which metrics.jsonl is written out
        self._size = -1  # metrics.jsonl's size when last read

    def after_step(self, trainer: Trainer, step: int) -> None:
        if not trainer.info.is_main:
            return None
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = trainer.start_step + 1 if trainer.start_step else None
            self.writer = SummaryWriter(str(trainer.run_dir / TENSORBOARD), purge_step=purge, flush_secs=10)
            self._done = trainer.start_step
        path = trainer.run_dir / METRICS
        size = path.stat().st_size if path.is_file() else 0
        if size != self._size:
            self._size = size
            for record in read_metrics(trainer.run_dir):
                if isinstance(record.get("step"), int) and self._done < record["step"] <= step:
                    self._scalars(record)
            self._done = step
        if self.grids is not None and self.grids.last is not None and self.grids.last[0] == step:
            grid = tile(self.grids.last[1], nrow=GRID_ROW)  # (H, W) in [0, 1]
            self.writer.add_image("samples", grid.unsqueeze(0), step)  # (1, H, W)
        return None

    def _scalars(self, record: dict) -> None:
        for name, value in record.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if name not in _NOT_SCALARS and number and math.isfinite(value):
                self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
