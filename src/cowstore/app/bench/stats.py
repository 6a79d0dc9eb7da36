"""Repeated samples and their summary: the median, with an interval that says how sure it is.

The median, not the mean: on a shared machine one sample in ten is hit by another
process, and one such outlier must not move the figure a verdict is based on. For the
same reason the interval is distribution-free: the order statistics x(k) and x(n+1-k)
of n samples bracket the true median with probability 1 - 2 P(B <= k-1), B ~ Bin(n, 1/2),
whatever the distribution of the samples. The narrowest such interval that is at least
:data:`CONFIDENCE` sure is taken; with fewer than five samples none is, and the interval
is then the whole min–max range with the (lower) confidence it has, which the report prints.

A verdict compares an interval with the region a claim expects (:func:`side`): inside,
outside, or straddling its edge — the last one is "inconclusive", never a coin toss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# How sure an interval must be before it is narrowed below the whole min–max range.
CONFIDENCE = 0.9
INSIDE, OUTSIDE, STRADDLES = "inside", "outside", "straddles"


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


def coverage(count: int, k: int) -> float:
    """The probability that [x(k), x(count+1-k)] holds the median of the distribution."""
    if count < 2 or 2 * k > count:
        return 0.0
    return 1 - 2 * sum(math.comb(count, i) for i in range(k)) / 2**count


@dataclass(frozen=True)
class Spread:
    """The median of per-round figures and a confidence interval for it."""

    median: float
    low: float
    high: float
    count: int
    confidence: float  # 0 for one sample: no interval at all

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "n": self.count,
            "confidence": round(self.confidence, 3),
        }

    def scaled(self, factor: float) -> Spread:
        """The same spread of `factor` times the figures (factor > 0): a unit change."""
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.count, self.confidence)

    def _num(self, value: float, digits: int | None) -> str:
        return fmt(value) if digits is None else f"{value:.{digits}f}"

    def show(self, unit: str = "", digits: int | None = None) -> str:
        """`0.98x [0.91–1.05, 94%, n=5]`: the median, then the interval and how sure it is."""
        if self.count < 2:
            return f"{self._num(self.median, digits)}{unit} [one sample]"
        return (
            f"{self._num(self.median, digits)}{unit} [{self._num(self.low, digits)}–{self._num(self.high, digits)}, "
            f"{self.confidence * 100:.0f}%, n={self.count}]"
        )

    def brief(self, unit: str = "", digits: int | None = None) -> str:
        """`0.98x [0.91–1.05]`: the median and its interval, for a figure inside a sentence."""
        if self.count < 2:
            return f"{self._num(self.median, digits)}{unit}"
        return f"{self._num(self.median, digits)}{unit} [{self._num(self.low, digits)}–{self._num(self.high, digits)}]"


def spread(samples: Sequence[float]) -> Spread:
    """The median of `samples` (at least one) and its interval (see the module's doc)."""
    ordered = sorted(samples)
    count = len(ordered)
    k = 1
    while coverage(count, k + 1) >= CONFIDENCE:
        k += 1
    return Spread(statistics.median(ordered), ordered[k - 1], ordered[count - k], count, coverage(count, k))


def side(found: Spread, low: float = -math.inf, high: float = math.inf) -> str:
    """Where the interval of `found` lies against the region [low, high]: INSIDE it, OUTSIDE
    it, or STRADDLES one of its edges. One sample is its own interval."""
    if found.low >= low and found.high <= high:
        return INSIDE
    if found.high < low or found.low > high:
        return OUTSIDE
    return STRADDLES


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
