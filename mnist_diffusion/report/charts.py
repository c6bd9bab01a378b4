"""The report's charts, drawn with matplotlib as PNG bytes (the same records, the same bytes):
training curves over the steps, and the class histogram of an evaluation."""

from __future__ import annotations

import math
from typing import Any

from matplotlib import ticker

from ..pictures.figures import figure_png, plt

# (metrics.jsonl field, axis label, log scale): the panels of the training curves, top to bottom
CURVES = [
    ("loss", "training loss\n(MSE, log)", True),
    ("lr", "learning rate", False),
    ("images_per_sec", "images/s", False),
    ("fid", "FID while training\n(fixed seed)", False),
]


def number(value: Any) -> float | None:
    """A finite number as a float; anything else (bools, strings, NaN, missing) as None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def points(records: list[dict[str, Any]], field: str, *, positive: bool = False) -> tuple[list[int], list[float]]:
    """The (step, value) pairs of ``field`` in metrics records whose step is an integer and value
    a finite number (positive, for a log scale)."""
    steps, values = [], []
    for r in records:
        step, value = r.get("step"), number(r.get(field))
        if isinstance(step, int) and not isinstance(step, bool) and value is not None and (value > 0 or not positive):
            steps.append(step)
            values.append(value)
    return steps, values


def round_off(value: float) -> float:
    """``value`` to 6 significant digits: 3 * 0.1 is 0.3, not 0.30000000000000004."""
    return float(f"{value:.6g}")


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values between ``low`` and ``high`` (0 < low <= high) to label a log axis with, at
    most ``most``: the first of powers of ten, 1-2-5 times them, 1-2-3-5 times them or 1 to 9 times
    them that puts at least 4 in the range (or 3 of the one before, where this gives too many),
    else evenly spaced round values (a narrow range), else ``low`` alone."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    coarser: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [round_off(m * 10.0**e) for e in decades for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= 4:
            if len(ticks) > most and len(coarser) >= 3:
                return coarser  # three evenly spaced rather than more, unevenly thinned
            return ticks[:: math.ceil(len(ticks) / most)]
        coarser = ticks
    even = [round_off(t) for t in ticker.MaxNLocator(4, steps=[1, 2, 5, 10]).tick_values(low, high)]
    even = sorted({t for t in even if low <= t <= high})
    return even or [round_off(low)]


def curves_figure(records: list[dict[str, Any]]):
    """The figure of :func:`training_curves`, or None when the records hold no curve."""
    panels = [(label, log, *points(records, field, positive=log)) for field, label, log in CURVES]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    height = 1.7 * len(panels) + 0.5
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.2, height), sharex=True, squeeze=False)
    fig.subplots_adjust(left=0.16, right=0.98, top=1 - 0.1 / height, bottom=0.5 / height, hspace=0.15)
    for ax, (label, log, steps, values) in zip(axes[:, 0], panels, strict=True):
        ax.plot(steps, values, color="tab:blue", lw=1.2, marker="o" if len(steps) < 30 else None, ms=3)
        if log:
            ax.set_yscale("log")
            # A few round values labelled (0.03, 0.05, 0.1, 0.2), not every minor tick: they would overlap.
            ax.yaxis.set_major_locator(ticker.FixedLocator(log_ticks(min(values), max(values))))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.4g"))  # 0.2948, not 2.948 x 10^-1
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(which="both", labelsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[-1, 0].set_xlabel("optimizer step", fontsize=9)
    fig.align_ylabels(axes[:, 0])
    return fig


def training_curves(records: list[dict[str, Any]]) -> bytes | None:
    """One panel per figure of :data:`CURVES` that the records hold, against the optimizer step;
    None when they hold none."""
    fig = curves_figure(records)
    return None if fig is None else figure_png(fig, dpi=100, tight=False)  # margins set: a tight crop draws twice


def histogram_figure(model: list[int], real: list[int] | None):
    """The figure of :func:`histogram_chart`."""
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.17)
    digits = range(len(model))
    width = 0.4 if real else 0.7
    ax.bar([d - (width / 2 if real else 0) for d in digits], model, width, label="samples", color="tab:blue")
    if real:
        ax.bar([d + width / 2 for d in digits], real, width, label="real data (the floor)", color="tab:gray")
    ax.set_xticks(list(digits))
    ax.set_xlabel("digit, as the feature net reads it", fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.tick_params(labelsize=8)
    # Above the axes, where no bar is: inside, it would hide the tallest bars of some digits.
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
    ax.grid(alpha=0.3, axis="y")
    return fig


def histogram_chart(model: list[int], real: list[int] | None) -> bytes:
    """Bars of how many samples the feature net reads as each digit 0-9, beside real data's."""
    return figure_png(histogram_figure(model, real), dpi=100, tight=False)
