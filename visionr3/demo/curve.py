"""Accuracy-per-step curves: the demo's (one run) and bench_learning's (arms x seeds), drawn with matplotlib.

Each arm is a list of runs, each run a list of per-step values (``None`` where a step logged none). The plot shows
each arm's mean over its runs, with the spread between the lowest and highest run shaded, so two seeds of two arms
read at a glance: a margin between arms means something only where the shaded bands do not overlap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

Runs = Sequence[Sequence[float | None]]


def window_mean(values: Sequence[float | None], window: int, *, last: bool = False) -> float:
    """Mean of the first (``last``: the last) ``window`` logged values; NaN when there are none."""
    logged = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    chosen = logged[-window:] if last else logged[:window]
    return sum(chosen) / len(chosen) if chosen else float("nan")


def default_window(steps: int) -> int:
    """A quarter of the run, at least one step: first vs last window of a 3-step demo compares step 1 with step 3."""
    return max(1, steps // 4)


def plot_accuracy(arms: Mapping[str, Runs], path: str | os.PathLike, *, title: str, ylabel: str = "accuracy") -> Path:
    """Write ``path`` (PNG): per arm, the mean over runs per step and the min-max band. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training node or in CI
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, runs in arms.items():
        length = max((len(run) for run in runs), default=0)
        steps, means, lows, highs = [], [], [], []
        for index in range(length):
            values = [float(run[index]) for run in runs if index < len(run) and run[index] is not None]
            if values:
                steps.append(index + 1)
                means.append(sum(values) / len(values))
                lows.append(min(values))
                highs.append(max(values))
        (line,) = axes.plot(steps, means, marker="o", markersize=3, label=f"{name} ({len(runs)} run{'s' * (len(runs) != 1)})")
        if len(runs) > 1:
            axes.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("GRPO step")
    axes.set_ylabel(ylabel)
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
