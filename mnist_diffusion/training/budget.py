"""`train --time-budget`: how many steps fit a wall-clock budget on this machine.

A budget plans in two steps, both recorded as ``--steps N`` so the run repeats bit for bit on any
machine without a budget:

1. Before the loop: the pace of a few scratch steps (put back afterwards) and the measured cost
   of each monitor give the steps that fit what is left once the planning itself is paid.
2. Once, within warm-up (where the learning rate does not depend on the plan): the loop's own
   pace, without the monitors' time, gives a better plan.

Then the run stops where the budget is spent, if that comes first. :class:`TimeBudget` holds the
clock (injectable, for the tests) and the arithmetic; the trainer applies the step counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..runs.store import update_run_info
from ..runtime import broadcast_object, compile_by_default, sync

if TYPE_CHECKING:
    from .log import RunLog
    from .trainer import Trainer

BUDGET_MARGIN = 0.03  # share of a time budget left for checkpoints and logging
REPLAN_AFTER = 200  # steps after which a time-budget run plans again from its own pace (within warm-up)
SCRATCH_STEPS = 12  # steps timed to plan from (the first two untimed: caches warm up)

Events = Sequence[tuple[int, float]]  # (every, seconds): a monitor's cost, once after every `every`-th step


class TimeBudget:
    """``seconds`` of wall time on ``clock``, counted from :meth:`start` (before any planning)."""

    def __init__(
        self, seconds: float, *, clock: Callable[[], float] = time.perf_counter, replan_after: int = REPLAN_AFTER
    ):
        self.seconds, self.clock, self.replan_after = seconds, clock, replan_after
        self.started = 0.0
        self.events: list[tuple[int, float]] = []  # the monitors' measured costs, set by :meth:`plan`
        self.planning_seconds = 0.0  # of the budget, spent measuring the pace and the monitors
        self.replan_at = -1  # the step at which to plan again from the loop's pace (replan_step), or -1
        self.loop_started, self.watched = 0.0, 0.0  # on the clock: the loop's start, its time in the monitors
        self._halfway = (-1, 0.0)  # (step, seconds of loop time without the monitors), for loop_pace

    def start(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def spent(self) -> bool:
        """Whether the budget has run out."""
        return self.elapsed() >= self.seconds

    def step_seconds(self, advance: Callable[[int], None], first: int) -> float:
        """Seconds per step of ``advance(step)`` for steps ``first``, ``first + 1``, ...: the median
        of SCRATCH_STEPS, the first two untimed. ``advance`` must wait for its step to end."""
        times = []
        for i in range(SCRATCH_STEPS):
            start = self.clock()
            advance(first + i)
            times.append(self.clock() - start)
        return statistics.median(times[2:])

    @property
    def monitor_seconds(self) -> float:
        """What the monitors add to an average step, as measured."""
        return sum(cost / every for every, cost in self.events)

    def plan(self, step_seconds: float, events: Events) -> int:
        """The steps from step 0 that fit what is left of the budget, at ``step_seconds`` a step
        and with the monitors' ``events``."""
        self.events = list(events)
        self.planning_seconds = self.elapsed()
        left = self.seconds * (1 - BUDGET_MARGIN) - self.planning_seconds
        return steps_that_fit(0, left, step_seconds, self.events)

    def replan_step(self, warmup_steps: int, guide_step: int, stop_step: int) -> int:
        """The step at which to plan again from the loop's own pace (which the scratch steps, without
        checkpoints, logging and a warm machine's slow-down, overrate), or -1. Only within warm-up,
        where the learning rate does not depend on the plan, and before the guide's step, so the
        new plan still trains as ``--steps N`` would, bit for bit."""
        at = min(self.replan_after, warmup_steps)
        before_guide = guide_step < 0 or at < guide_step
        return at if 0 < at < stop_step and before_guide else -1

    def begin_loop(self) -> None:
        self.loop_started, self.watched = self.clock(), 0.0

    def after_step(self, step: int) -> tuple[int, float] | None:
        """Once the loop reaches :attr:`replan_at`: the steps that fit after ``step`` at the loop's
        own pace (:meth:`replan`), and that pace; else None. Halfway there, notes the time."""
        loop_seconds = self.clock() - self.loop_started - self.watched  # the steps' own time
        if step == self.replan_at // 2:
            self._halfway = (step, loop_seconds)
        return self.replan(step, loop_seconds) if step == self.replan_at else None

    def replan(self, step: int, loop_seconds: float) -> tuple[int, float]:
        """The steps that fit after ``step``, from the loop's pace (its ``loop_seconds`` without
        the monitors, :func:`loop_pace`), and that pace in seconds per step."""
        pace = loop_pace(step, loop_seconds, *self._halfway)
        due = sum(cost for every, cost in self.events if step % every == 0)  # this step's, run after the plan
        left = self.seconds * (1 - BUDGET_MARGIN) - self.elapsed() - due
        return step + steps_that_fit(step, left, pace, self.events), pace

    def record(self, planned: int, seconds_per_step: float, images_per_step: int, measured_over: int) -> dict:
        """What run.json records of a plan of ``planned`` steps at ``seconds_per_step`` (without the
        monitors); ``measured_over`` is the number of the run's own steps that pace comes from (0:
        the scratch steps)."""
        return {
            "seconds": self.seconds,
            "planned_steps": planned,
            "images_per_sec": round(images_per_step / (seconds_per_step + self.monitor_seconds), 1),
            "measured_over_steps": measured_over,
            "monitor_seconds_per_step": round(self.monitor_seconds, 6),
            "planning_seconds": round(self.planning_seconds, 3),
        }

    def describe(self, planned: int, seconds_per_step: float, images_per_step: int, measured_over: int) -> str:
        """A plan in words, such as "time budget 10 min: 4,685 steps at 425 images/s (watching the
        run takes 4% of it)"."""
        from .speed import duration

        rate = seconds_per_step + self.monitor_seconds
        share = self.monitor_seconds / rate
        watching = f" (watching the run takes {share:.0%} of it)" if share >= 0.005 else ""
        pace = f"{planned:,} steps at {images_per_step / rate:,.0f} images/s{watching}"
        if measured_over:
            return f"time budget: {pace} over the first {measured_over} steps"
        measuring = f", after {duration(self.planning_seconds)} of measuring" if self.planning_seconds >= 1 else ""
        return f"time budget {duration(self.seconds)}: {pace}{measuring}"


class BudgetKeeper:
    """A time budget applied to a training run: its plan made before the loop and made again
    once within warm-up (recorded as ``--steps N`` in config.json and in run.json), and the run
    ended where the budget runs out."""

    def __init__(self, budget: TimeBudget, trainer: Trainer):
        self.budget, self.trainer = budget, trainer

    def plan(self) -> None:
        """Plan the steps that fit the time budget at this machine's pace, measured on scratch
        steps put back afterwards (so the run trains as ``--steps N`` would, bit for bit), with
        the monitors' measured cost. The measuring is taken from the budget."""
        t, budget = self.trainer, self.budget
        budget.start()
        if t.start_step:
            return  # a resumed run keeps its plan, and stops when the budget is spent
        events = [(m.every, m.seconds_per_step(t) * m.every) for m in t.monitors] if t.info.is_main else []
        extra = t.device_step.buffers() if t.device_step else []
        saved = t.learner.snapshot(extra)
        step_seconds = budget.step_seconds(lambda step: (t.advance(step), sync(t.device)), t.start_step)
        t.learner.restore_snapshot(saved, extra)
        self._set_plan(budget.plan(step_seconds, events), step_seconds, measured_over=0)
        budget.replan_at = budget.replan_step(t.cfg.train.warmup_steps, t.plan.guide_step, t.plan.stop_step)

    def after_step(self, step: int, log: RunLog) -> None:
        """Within warm-up, plan again once from the loop's own pace; end the run where the budget
        runs out."""
        t = self.trainer
        if (replanned := self.budget.after_step(step)) is not None:
            planned, pace = broadcast_object(replanned, t.info)  # rank 0's measurement decides for all
            behind = t.plan.guide_step >= 0 and round(t.cfg.train.guide_at * planned) <= step
            if planned != t.plan.total_steps and not behind:  # else: stop on time
                self._set_plan(planned, pace, measured_over=step)
                log.set_stop(t.plan.stop_step)
        if step < t.plan.stop_step and t.agree(self.budget.spent(), step):
            t.record_plan(max_steps=step)
            t.log(f"time budget spent: the run ends at step {step:,} of the {t.plan.total_steps:,} planned")

    def _set_plan(self, planned: int, seconds_per_step: float, measured_over: int) -> None:
        """Make ``planned`` (rank 0's) the run's steps, recorded in config.json and run.json."""
        t = self.trainer
        planned, seconds_per_step = broadcast_object((planned, seconds_per_step), t.info)
        t.record_plan(steps=planned)
        images = t.cfg.train.batch_size * t.info.world_size
        if t.info.is_main:
            update_run_info(t.run_dir, time_budget=self.budget.record(planned, seconds_per_step, images, measured_over))
        again = " on any machine" if not measured_over else ""
        t.log(
            f"{self.budget.describe(planned, seconds_per_step, images, measured_over)}; `mnistdiff train "
            f"--steps {planned}{self._compile_flag()}` trains this plan again{again}"
        )

    def _compile_flag(self) -> str:
        """The flag a `train --steps N` that repeats this plan needs to compile as this run does:
        "" where the default for N steps already agrees here, else " --compile" or " --no-compile"."""
        t = self.trainer
        if t.learner.compiled == bool(compile_by_default(t.device, t.learner.autocast, t.plan.total_steps)):
            return ""
        return " --compile" if t.learner.compiled else " --no-compile"


def steps_that_fit(first: int, seconds: float, step_seconds: float, events: Events) -> int:
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
