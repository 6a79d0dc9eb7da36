"""What an experiment is, and the result it leaves: samples per subject, metric and point.

An experiment declares its points (the x axis: a container count, a file size, a
chain depth or a named step), its metrics, and takes one sample of one subject at one
point at a time, so the runner can interleave subjects and rounds. It then judges,
per subject, the claim of the talk "Deep dive into Docker storage drivers" that it
tests, and cowstore's own targets for a driver against that driver's baseline.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    """What the figures of one subject say, and which figures.

    On a claim of the talk: "confirmed", "not confirmed", "not claimed" (the talk says
    nothing of this subject) or "measured" (the experiment has no criterion). On one of
    cowstore's own targets for a driver, set against a baseline of the same run: "met"
    or "missed".
    """

    subject: str
    status: str
    detail: str


def judged(subject: str, expected: Mapping[str, str], found: str, detail: str) -> Verdict:
    """The verdict on a claim that `subject` behaves as `expected[subject]` ("grows", "once"...),
    where the figures show `found`; "not claimed" when the talk says nothing of `subject`."""
    if subject not in expected:
        return Verdict(subject, "not claimed", detail)
    return Verdict(subject, "confirmed" if found == expected[subject] else "not confirmed", detail)


def target(subject: str, ok: bool, detail: str) -> Verdict:
    """The verdict on one of cowstore's targets for `subject`."""
    return Verdict(subject, "met" if ok else "missed", detail)


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
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )
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

    def ends(self, metric: str, least: int = 1) -> Iterator[tuple[str, Point, Point]]:
        """(subject, first point, last point) of every subject with `least` or more points of `metric`."""
        for subject in self.subjects():
            points = self.measured_points(subject, metric)
            if len(points) >= least:
                yield subject, points[0], points[-1]

    def ratio(self, subject: str, reference: str, metric: str, point: Point) -> float | None:
        """The median of `subject` over that of `reference` at `point` (None: one is missing or zero)."""
        mine, theirs = self.median(subject, metric, point), self.median(reference, metric, point)
        return mine / theirs if mine is not None and theirs else None

    def versus(self, subject: str, references: Sequence[str], metric: str, point: Point) -> str:
        """` (0.74x loop-lvm, 0.58x loop-dio)`: the ratios to the references measured at `point`, or ""."""
        ratios = ((ref, self.ratio(subject, ref, metric, point)) for ref in references)
        shown = ", ".join(f"{r:.2f}x {ref}" for ref, r in ratios if r is not None)
        return f" ({shown})" if shown else ""


class Experiment(abc.ABC):
    """One claim of the talk, measured on every subject that supports it."""

    key: str
    title: str
    claim: str
    x_label: str
    metrics: tuple[Metric, ...]
    # The baselines (see cowstore.app.bench.baselines) measured beside the drivers here;
    # a baseline takes part in no other experiment.
    baselines: tuple[str, ...] = ()

    def rounds(self, scale: Scale) -> int:
        return scale.pick(2, 3)

    @abc.abstractmethod
    def points(self, scale: Scale) -> list[Point]:
        """The x values, in the order they are measured."""

    def supports(self, subject: Subject) -> str | None:
        """Why `subject` cannot take part (None: it can). Default: cowstore drivers (and the baselines listed)."""
        return None if subject.kind in ("driver", "baseline") else "cowstore drivers only"

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

    def finish(self, subject: Subject, state: Any) -> None:  # noqa: B027 - a hook: most prepare nothing
        """Undo prepare."""

    @abc.abstractmethod
    def judge(self, result: Result) -> list[Verdict]:
        """Verdicts on the claim, one per subject measured."""

    def result(self, scale: Scale) -> Result:
        return Result(self.key, self.title, self.claim, self.x_label, self.metrics, self.points(scale))
