"""What an experiment is, and the result it leaves: samples per subject, metric and point.

An experiment declares its points (the x axis: a container count, a file size, a
chain depth or a named step), its metrics, and takes one sample of one subject at one
point at a time, so the runner can interleave subjects and rounds. It then judges the
talk's claim from the medians, per subject.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.stats import Summary, summarize
from cowstore.app.bench.subjects import Subject

Point = int | str


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str


@dataclass(frozen=True)
class Verdict:
    """Whether this machine confirms the claim for one subject, and the figures why."""

    subject: str
    status: str  # "confirmed", "not confirmed" or "inconclusive"
    detail: str


@dataclass
class Context:
    """Run-wide settings and the scratch space experiments write their inputs to."""

    scale: Scale
    images: ImageCache
    scratch: Scratch
    log: Callable[[str], None]


@dataclass
class Result:
    key: str
    title: str
    claim: str
    x_label: str
    metrics: tuple[Metric, ...]
    points: list[Point]
    samples: dict[str, dict[str, dict[Point, list[float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    limits: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, subject: str, values: dict[str, float], point: Point) -> None:
        for metric, value in values.items():
            self.samples[subject][metric][point].append(value)

    def summary(self, subject: str, metric: str, point: Point) -> Summary | None:
        values = self.samples.get(subject, {}).get(metric, {}).get(point)
        return summarize(values) if values else None

    def median(self, subject: str, metric: str, point: Point) -> float | None:
        found = self.summary(subject, metric, point)
        return found.median if found else None

    def subjects(self) -> list[str]:
        return list(self.samples)

    def measured_points(self, subject: str, metric: str) -> list[Point]:
        have = self.samples.get(subject, {}).get(metric, {})
        return [p for p in self.points if have.get(p)]


class Experiment(abc.ABC):
    """One claim of the talk, measured on every subject that supports it."""

    key: str
    title: str
    claim: str
    x_label: str
    metrics: tuple[Metric, ...]

    def rounds(self, scale: Scale) -> int:
        return scale.pick(2, 3)

    @abc.abstractmethod
    def points(self, scale: Scale) -> list[Point]:
        """The x values, in the order they are measured."""

    def supports(self, subject: Subject) -> str | None:
        """Why `subject` cannot take part (None: it can). Default: cowstore drivers only."""
        return None if subject.kind == "driver" else "cowstore drivers only"

    def limit(self, subject: Subject, state: Any, point: Point, scale: Scale) -> str | None:
        """Why `point` is not measured on `subject` (None: it is)."""
        return None

    def caveat(self, subject: Subject) -> str | None:
        """What the figures of `subject` mean differently here (None: nothing); shown as a note."""
        return None

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        """Set up what the samples need (an image, say); the returned state goes to sample."""
        return None

    @abc.abstractmethod
    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        """One measurement of every metric at `point`."""

    def finish(self, subject: Subject, state: Any) -> None:
        """Undo prepare."""

    @abc.abstractmethod
    def judge(self, result: Result) -> list[Verdict]:
        """Verdicts on the claim, one per subject measured."""

    def result(self, scale: Scale) -> Result:
        return Result(self.key, self.title, self.claim, self.x_label, self.metrics, self.points(scale))
