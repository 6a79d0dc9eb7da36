"""Repeated samples and their summary: the median, with min and max to show the spread.

The median, not the mean: on a shared machine one sample in ten is hit by another
process, and one such outlier must not move the figure a verdict is based on.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.count}


def summarize(samples: Sequence[float]) -> Summary:
    """Median and range of `samples` (at least one)."""
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def fmt(value: float) -> str:
    """A number with about three significant digits, for tables."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"
