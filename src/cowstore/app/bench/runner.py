"""Run the experiments over the subjects, interleaving them, and collect the samples by round.

For each round and each point every subject takes one sample, and the order of the
subjects rotates from round to round: a burst of load from another process then hits
all of them alike instead of one whole series, and the samples of one round were taken
side by side, which is what a paired ratio compares. An experiment's `beside` reference
is sampled next to every other subject, alternately just before and just after it. A
warm-up round is run first where the experiment asks for one, and not recorded. A
baseline takes part only where the experiment lists it. A subject that fails is recorded
with the error and dropped from the experiment; the run goes on with the others (a bench
must report, not crash). Past the run's time limit no sample starts: the experiment
ends there, says where, and is judged on the rounds it has (a paired ratio uses only
the rounds both its subjects reached). Ctrl-C and SIGTERM are not failures: they
propagate so the caller can clean up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from cowstore.app.bench.experiments import Context, Experiment, Point, Result, Verdict
from cowstore.app.bench.experiments.verdicts import INCONCLUSIVE
from cowstore.app.bench.subjects import Subject

WARMUP = -1  # the round number of the discarded warm-up round
_DECIDED = ("confirmed", "not confirmed", "met", "missed")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _OutOfTime(Exception):
    """The time limit ran out before `subject`'s sample at `point` in round `round_no`."""

    def __init__(self, subject: str, point: Point, round_no: int) -> None:
        super().__init__(subject, point, round_no)
        self.subject, self.point, self.round_no = subject, point, round_no


class _Run:
    """One experiment over its subjects: their states, and the samples taken so far."""

    def __init__(self, experiment: Experiment, ctx: Context) -> None:
        self.experiment = experiment
        self.ctx = ctx
        self.result = experiment.result(ctx.scale)
        self.states: dict[str, Any] = {}

    def prepare(self, subjects: Sequence[Subject]) -> None:
        for subject in subjects:
            if subject.name in self.result.errors:
                continue
            self.ctx.log(f"{self.experiment.title}: preparing {subject.name}")
            try:
                self.states[subject.name] = self.experiment.prepare(subject, self.ctx)
            except Exception as exc:  # noqa: BLE001 - any failure of one subject is reported, not fatal
                self.result.errors[subject.name] = f"prepare: {_describe(exc)}"

    def finish(self, subjects: Sequence[Subject]) -> None:
        for subject in subjects:
            if subject.name not in self.states:
                continue
            try:
                self.experiment.finish(subject, self.states.pop(subject.name))
            except Exception as exc:  # noqa: BLE001
                self.result.errors.setdefault(subject.name, f"clean-up: {_describe(exc)}")

    def sample(self, subject: Subject, point: Point, round_no: int, beside: str | None = None) -> None:
        if subject.name in self.result.errors or subject.name not in self.states:
            return
        if self.ctx.out_of_time():
            raise _OutOfTime(subject.name, point, round_no)
        scale = self.ctx.scale
        reason = self.experiment.limit(subject, self.states[subject.name], point, scale)
        if reason:
            self.result.limits[subject.name][str(point)] = reason
            return
        label = "warm-up" if round_no == WARMUP else f"round {round_no + 1}"
        self.ctx.log(f"{self.experiment.title}: {subject.name} at {point} ({label})")
        try:
            values = self.experiment.sample(subject, self.states[subject.name], point, self.ctx)
        except Exception as exc:  # noqa: BLE001
            self.result.errors[subject.name] = f"at {point}: {_describe(exc)}"
            return
        if round_no != WARMUP:
            self.result.add(subject.name, values, point, round_no, beside)

    def round(self, active: Sequence[Subject], round_no: int) -> None:
        """Every point, every subject in an order rotated by `round_no`."""
        reference = next((s for s in active if s.name == self.experiment.beside), None)
        others = [s for s in active if s is not reference]
        shift = round_no % max(len(others), 1)
        order = others[shift:] + others[:shift]
        for point in self.result.points:
            if reference is not None and not order:
                self.sample(reference, point, round_no)
            for subject in order:
                if reference is None:
                    self.sample(subject, point, round_no)
                    continue
                before = (round_no + others.index(subject)) % 2 == 0  # each subject alternates
                pair = (reference, subject) if before else (subject, reference)
                for member in pair:
                    self.sample(member, point, round_no, subject.name if member is reference else None)


def run_experiment(experiment: Experiment, subjects: Sequence[Subject], ctx: Context) -> Result:
    run = _Run(experiment, ctx)
    result = run.result
    started = time.perf_counter()
    active: list[Subject] = []
    for subject in experiment.subjects(subjects, ctx):
        if subject.kind == "baseline" and subject.name not in experiment.baselines:
            continue
        reason = experiment.supports(subject)
        if reason:
            result.skipped[subject.name] = reason
            continue
        active.append(subject)
        caveat = experiment.caveat(subject)
        if caveat:
            result.notes.append(f"{subject.name}: {caveat}")
    rounds = experiment.rounds(ctx.scale) * ctx.repeat
    first = WARMUP if experiment.warmup else 0
    try:
        if not experiment.stepwise:
            run.prepare(active)
        for round_no in range(first, rounds):
            if experiment.stepwise:
                run.prepare(active)
            if ctx.on_round is not None and active:
                ctx.on_round(result)
            try:
                run.round(active, round_no)
            finally:
                if experiment.stepwise:
                    run.finish(active)
            result.rounds = max(round_no + 1, 0)
    except _OutOfTime as stop:
        where = "the warm-up round" if stop.round_no == WARMUP else f"round {stop.round_no + 1} of {rounds}"
        result.stopped = (
            f"the time limit ran out in {where}, before {stop.subject} at {stop.point} "
            f"({result.rounds} of {rounds} rounds complete)"
        )
    finally:
        run.finish(active)
        result.seconds = time.perf_counter() - started
    result.verdicts = experiment.judge(result)
    if result.stopped is not None:
        result.verdicts = [_one_round_decides_nothing(v) for v in result.verdicts]
    return result


def _one_round_decides_nothing(verdict: Verdict) -> Verdict:
    """In an experiment the time limit cut short, a verdict resting on a single round has no
    interval to clear a threshold with: it becomes inconclusive (one-round experiments,
    such as the thin pool's, are never cut short: they have no second round to lose)."""
    if verdict.spread is None or verdict.spread.count >= 2 or verdict.status not in _DECIDED:
        return verdict
    return dataclasses.replace(verdict, status=INCONCLUSIVE, detail=f"{verdict.detail} (one round only)")
