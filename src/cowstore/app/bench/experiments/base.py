"""The experiment API: what an experiment declares, what the runner does with it, and how it judges.

Writing an experiment (one module in this package, added to `ALL` in `__init__.py`):

- **Declare** a `key` (stable: reports and `bench compare` match on it), a `title`, the
  `claim` of the talk "Deep dive into Docker storage drivers" it tests (or cowstore's own
  question), an `x_label`, its `metrics` and its `points(scale)`: the x values (a container
  count, a file size, a named step), sized per scale with `Scale.pick`.
- **Choose subjects** with `supports` (default: cowstore drivers and the `baselines` the
  experiment lists), and per point with `limit` (a point a driver refuses is a limit, with
  the driver's reason, not an error). An experiment whose subjects are not the run's
  (containerd's snapshotters) brings its own with `subjects`.
- **Measure** one subject at one point per `sample` call, returning {metric: value}; put
  what samples share (an imported image) in `prepare`'s state and undo it in `finish`.
  Never loop over subjects or rounds yourself: the runner does, so that every subject is
  measured side by side (see `runner.py`):

      for each round (the order of the subjects rotates from round to round):
          for each point:
              for each subject: sample(subject, state, point)

  `rounds(scale)` sets how many (`--repeat N` multiplies it). `beside = "native"` has that
  reference sampled right next to every other subject, alternately just before and just
  after it, so a ratio to it compares two samples seconds apart (for I/O on a disk whose
  speed drifts). `warmup = True` runs one round first and discards it (the first write into
  a region of a sparse image allocates it on the host: later rounds then compare like with
  like). `stepwise = True` is for points that are steps depending on each other (fill,
  then delete, then trim): each round then prepares a fresh state, walks all the steps and
  finishes it.
- **Stop early** is the runner's job too: past the run's `--time-limit` it takes no new
  sample, marks the result `stopped` (where it stopped) and still judges what was
  measured, so an experiment sized for hours reports the points it reached.
- **Judge** in `judge(result)`, one or more verdicts per subject, from *per-round* figures
  with their spread (`Result.paired`, `Result.growth`, `Result.spread`, or
  `combine(fn, result.by_round(...), ...)` for anything else computed round by round) and the helpers of
  `verdicts.py` (`claim`, `target`, `noise_check`, `measured`): a verdict is positive or
  negative only when the whole confidence interval lies on one side of the claim's
  threshold (`stats.side`), "inconclusive" otherwise. Put the figure with its spread in
  the verdict (`Spread.show`/`brief`) so a reader sees how sure it is.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cowstore.app.bench.experiments.result import Metric, Point, Result, combine
from cowstore.app.bench.experiments.verdicts import Verdict
from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.subjects import Subject

__all__ = ["Context", "Experiment", "Metric", "Point", "Result", "Verdict", "combine"]


@dataclass
class Context:
    """Run-wide settings and the scratch space experiments write their inputs to."""

    scale: Scale
    images: ImageCache
    scratch: Scratch
    log: Callable[[str], None]
    # Multiplies every experiment's rounds (`--repeat`).
    repeat: int = 1
    # Called at the start of every round with the experiment's result: the calibration probe
    # of the backing (`cowstore.app.bench.calibration`), or nothing.
    on_round: Callable[[Result], None] | None = None
    # The `time.monotonic()` instant after which no sample starts (`--time-limit`), or none.
    deadline: float | None = None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


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
    # A subject sampled right next to every other one in each round (see the module's doc).
    beside: str | None = None
    # One discarded round before the recorded ones.
    warmup: bool = False
    # Points are dependent steps: a fresh state (prepare ... finish) for every round.
    stepwise: bool = False

    def rounds(self, scale: Scale) -> int:
        """Recorded rounds: 5 give an interval of 94% confidence (min–max); 3 only of 75%, which
        `full` settles for as its largest points take hours (`--repeat` buys more)."""
        return scale.pick(2, 5, 3)

    @abc.abstractmethod
    def points(self, scale: Scale) -> list[Point]:
        """The x values, in the order they are measured."""

    def subjects(self, run: Sequence[Subject], ctx: Context) -> Sequence[Subject]:
        """What this experiment measures: by default the run's subjects. An experiment whose
        subjects exist only inside it (two snapshotters of one containerd) returns its own:
        they hold nothing until `prepare`, and `finish` releases it (the runner calls finish
        for every subject prepared, on any exit)."""
        return run

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
        """Verdicts on the claim, one or more per subject measured."""

    def result(self, scale: Scale) -> Result:
        return Result(self.key, self.title, self.claim, self.x_label, self.metrics, self.points(scale))
