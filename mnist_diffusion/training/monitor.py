"""What watches a run as it trains: the :class:`Monitor` the trainer calls after every step
(mnist_diffusion/monitors/ has the progress grids, the FIDs and TensorBoard)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer import Trainer


class Monitor:
    """Something that watches a run as it trains (samples or scores it every N steps, writes
    TensorBoard events): called after every optimizer step, on every rank, with the step's 1-based
    number. It must leave the trainer's state and random number generators as it found them, so a
    run with monitors trains the same weights as one without."""

    every: int = 1  # its cost comes as one event after every `every`-th step

    def after_step(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        """Figures to log for this step (a metrics.jsonl line; the first is also shown in the
        progress bar), or None."""
        return None

    def seconds_per_step(self, trainer: Trainer) -> float:
        """The seconds it adds to an average optimizer step, measured once as a time budget plans
        (on the budget's clock), so the plan leaves time for it."""
        return 0.0

    def close(self) -> None:
        """The run stopped (finished, interrupted or failed)."""
