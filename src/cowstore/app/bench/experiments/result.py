"""What one experiment leaves: every sample, tagged with its round, and the figures drawn from them.

A verdict compares subjects (overlay2 against native), points (a 1 GiB copy-up against a
1 MiB one) or both; on a machine whose disk speed swings from one minute to the next, a
ratio of two medians taken minutes apart says little. So every figure a verdict uses is
*per round*: the runner measures all subjects at a point one after the other in each
round, each sample keeps its round, and a ratio is computed within each round (paired)
before the rounds are summarized into a median with a confidence interval
(:class:`~cowstore.app.bench.stats.Spread`). A reference measured next to each subject
(`Experiment.beside`) keeps, per sample, which subject it was taken beside, and a ratio to
it uses that sample: the two were taken seconds apart.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from cowstore.app.bench.experiments.verdicts import Verdict
from cowstore.app.bench.stats import Spread, Summary, spread, summarize

Point = int | str


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str


@dataclass(frozen=True)
class Sample:
    value: float
    round: int
    beside: str | None = None  # a reference's sample: the subject it was taken next to


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero or negative (a ratio of a timing to no time means nothing)."""
    return a / b if b > 0 else None


def combine(fn: Callable[..., float | None], *series: dict[int, float]) -> Spread | None:
    """The spread of `fn` applied round by round to the values of `series` (only the rounds
    all of them have; a round where `fn` gives None is left out). None: no round left."""
    rounds = set.intersection(*(set(s) for s in series)) if series else set()
    values = [v for r in sorted(rounds) if (v := fn(*(s[r] for s in series))) is not None]
    return spread(values) if values else None


@dataclass
class Result:
    key: str
    title: str
    claim: str
    x_label: str
    metrics: tuple[Metric, ...]
    points: list[Point]
    samples: dict[str, dict[str, dict[Point, list[Sample]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    limits: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0
    rounds: int = 0
    # The backing's own throughput (MB/s) probed at the start of each round of this experiment.
    calibration: list[float] = field(default_factory=list)
    # Why and where the experiment stopped before its last round (the time limit), or None.
    stopped: str | None = None

    def add(
        self, subject: str, values: dict[str, float], point: Point, round_no: int, beside: str | None = None
    ) -> None:
        for metric, value in values.items():
            self.samples[subject][metric][point].append(Sample(value, round_no, beside))

    def values(self, subject: str, metric: str, point: Point) -> list[float]:
        return [s.value for s in self.samples.get(subject, {}).get(metric, {}).get(point, [])]

    def summary(self, subject: str, metric: str, point: Point) -> Summary | None:
        """Median and min–max of every sample (a reference's samples beside each subject included)."""
        values = self.values(subject, metric, point)
        return summarize(values) if values else None

    def median(self, subject: str, metric: str, point: Point) -> float | None:
        found = self.summary(subject, metric, point)
        return found.median if found else None

    def by_round(self, subject: str, metric: str, point: Point, beside: str | None = None) -> dict[int, float]:
        """Round -> value of `subject` (the median where a round has several samples); with
        `beside`, only the samples taken next to that subject when there are any."""
        samples = self.samples.get(subject, {}).get(metric, {}).get(point, [])
        if beside is not None and any(s.beside == beside for s in samples):
            samples = [s for s in samples if s.beside == beside]
        rounds: dict[int, list[float]] = defaultdict(list)
        for sample in samples:
            rounds[sample.round].append(sample.value)
        return {r: statistics.median(v) for r, v in rounds.items()}

    def spread(self, subject: str, metric: str, point: Point) -> Spread | None:
        """The spread of `subject`'s per-round values at `point`."""
        return combine(lambda v: v, self.by_round(subject, metric, point))

    def paired(self, subject: str, reference: str, metric: str, point: Point) -> Spread | None:
        """`subject` / `reference`, round by round (with the reference's sample taken beside it)."""
        mine = self.by_round(subject, metric, point)
        return combine(ratio, mine, self.by_round(reference, metric, point, beside=subject))

    def growth(self, subject: str, metric: str, low: Point, high: Point) -> Spread | None:
        """`subject`'s value at `high` / at `low`, round by round."""
        return combine(ratio, self.by_round(subject, metric, high), self.by_round(subject, metric, low))

    def subjects(self) -> list[str]:
        return list(self.samples)

    def measured_points(self, subject: str, metric: str) -> list[Point]:
        have = self.samples.get(subject, {}).get(metric, {})
        return [p for p in self.points if have.get(p)]

    def ends(self, metric: str, least: int = 1) -> Iterator[tuple[str, Point, Point]]:
        """(subject, first point, last point) of every subject with `least` or more points of `metric`."""
        for subject in self.subjects():
            points = self.measured_points(subject, metric)
            if len(points) >= least:
                yield subject, points[0], points[-1]

    def versus(self, subject: str, references: Sequence[str], metric: str, point: Point) -> str:
        """` (0.74x [0.70–0.80] loop-lvm, ...)`: the paired ratios to the references measured
        at `point` with their intervals, or ""."""
        shown = []
        for reference in references:
            found = self.paired(subject, reference, metric, point)
            if found is not None:
                shown.append(f"{found.brief('x', 2)} {reference}")
        return f" ({', '.join(shown)})" if shown else ""
