"""What a run says as it trains: the progress bar, a metrics.jsonl line every LOG_EVERY steps
(and one for each monitor's figures), and after the first steps how long the rest will take."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .speed import duration

ESTIMATE_AFTER = 12  # steps after which `train` says how long the rest will take


class RunLog:
    """The log of one training loop. ``write`` appends a record to metrics.jsonl (a no-op on
    ranks other than the first); ``loss_sum`` is the device scalar the steps' losses are added to."""

    def __init__(
        self,
        *,
        name: str,
        images_per_step: int,
        ranks: int,
        start_step: int,
        stop_step: int,
        steps_per_epoch: int,
        loss_sum: torch.Tensor,
        write: Callable[[dict[str, Any]], None],
        say: Callable[[str], None],
        progress: bool,
        speed: Callable[[float], str],
        hint: bool,
    ):
        self.images_per_step, self.ranks = images_per_step, ranks  # images_per_step: of all ranks together
        self.start_step, self.steps_per_epoch = start_step, steps_per_epoch
        self.write, self.say = write, say
        self.speed, self.hint = speed, hint  # images/s of one rank in words; whether to suggest a time budget
        self.bar = tqdm(
            total=stop_step * images_per_step,
            initial=start_step * images_per_step,
            unit="img",
            unit_scale=True,
            desc=f"train {name}",
            disable=not progress,
            dynamic_ncols=True,
        )
        self.loss_sum, self.steps, self.start = loss_sum, 0, time.perf_counter()  # the window since the last line
        self.shown: dict[str, str] = {}  # what the bar shows beside the images/s
        self._pace_start = 0.0

    def add(self, loss: torch.Tensor | None) -> None:
        """Count a step, and add its loss (None: the device step added it to ``loss_sum`` itself)."""
        if loss is not None:
            self.loss_sum += loss
        self.steps += 1
        self.bar.update(self.images_per_step)

    def set_stop(self, stop_step: int) -> None:
        self.bar.total = stop_step * self.images_per_step

    def line(self, step: int, lr: float) -> float:
        """A metrics.jsonl line for the steps since the last one (a sync); returns their mean loss."""
        loss, seconds = self.loss_sum.item() / self.steps, time.perf_counter() - self.start
        record = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": loss,
            "lr": lr,
            "images_per_sec": self.steps * self.images_per_step / max(seconds, 1e-9),
        }
        self.loss_sum.zero_()
        self.steps, self.start = 0, time.perf_counter()
        self.write(record)
        self.shown.update(loss=f"{loss:.4f}", epoch=f"{record['epoch']:.2f}")
        self.bar.set_postfix(self.shown)
        return loss

    def extra(self, step: int, record: dict[str, float] | None) -> None:
        """A monitor's figures of ``step``: a metrics.jsonl line, and its first in the progress bar."""
        if not record:
            return
        self.write({"step": step, **record})
        name, value = next(iter(record.items()))  # the headline (FID), not its cost
        self.shown[name] = f"{value:.4g}"
        self.bar.set_postfix(self.shown)

    def estimate(self, step: int, stop_step: int) -> None:
        """After the first steps, say how long the rest will take at this pace, on this machine
        (and for a long run without a budget, that ``--time-budget`` exists)."""
        done = step - self.start_step
        if done == 2:
            self._pace_start = time.perf_counter()  # the first steps warm caches up: time from here
        if done != ESTIMATE_AFTER or stop_step - step < ESTIMATE_AFTER:
            return
        seconds_per_step = (time.perf_counter() - self._pace_start) / (ESTIMATE_AFTER - 2)
        left = (stop_step - step) * seconds_per_step
        speed = self.speed(self.images_per_step / self.ranks / seconds_per_step)
        more = "; --time-budget 10m for a shorter run" if left > 900 and self.hint else ""
        self.say(f"{stop_step - step:,} steps to go: about {duration(left)} at {speed}{more}")

    def close(self) -> None:
        self.bar.close()
