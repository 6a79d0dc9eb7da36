"""The runner's interleaving, without a store: the order of samples, the reference taken beside
each subject, warm-up, step-wise rounds, `--repeat`, and the paired ratios drawn from them."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from cowstore.app.bench.experiments import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.images import ImageCache
from cowstore.app.bench.runner import run_experiment
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import Subject


class _Fake(Subject):
    def __init__(self, name: str, kind: str = "driver") -> None:
        self.name, self.kind = name, kind


class _Probe(Experiment):
    """Records every call; each subject's value is its speed times the disk's speed of the moment."""

    key, title, claim, x_label = "probe", "Probe", "a claim", "x"
    metrics = (Metric("v", "value", "u"),)

    def __init__(self, speeds: dict[str, float], **options: Any) -> None:
        self.speeds = speeds
        self.calls: list[tuple[str, Any]] = []
        self.disk = iter(float(v) for v in range(100, 10_000))
        for name, value in options.items():
            setattr(self, name, value)

    def supports(self, subject: Subject) -> str | None:
        return None

    def points(self, scale: Scale) -> list[Point]:
        return [1, 2]

    def rounds(self, scale: Scale) -> int:
        return 3

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        self.calls.append(("prepare", subject.name))
        if subject.name == "broken":
            raise OSError("cannot")
        return subject.name

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        self.calls.append(("sample", subject.name))
        return {"v": self.speeds[subject.name] * next(self.disk)}

    def finish(self, subject: Subject, state: Any) -> None:
        self.calls.append(("finish", subject.name))

    def judge(self, result: Result) -> list[Verdict]:
        return []


@pytest.fixture
def ctx(tmp_path: pathlib.Path) -> Context:
    return Context(Scale.STANDARD, ImageCache(tmp_path), Scratch(0), log=lambda message: None)


def _samples(calls: list[tuple[str, Any]]) -> list[str]:
    return [name for what, name in calls if what == "sample"]


def test_every_round_measures_all_subjects_at_a_point_in_a_rotating_order(ctx: Context) -> None:
    experiment = _Probe({"a": 1, "b": 1, "c": 1})
    result = run_experiment(experiment, [_Fake("a"), _Fake("b"), _Fake("c")], ctx)
    order = _samples(experiment.calls)
    assert order == ["a", "b", "c"] * 2 + ["b", "c", "a"] * 2 + ["c", "a", "b"] * 2
    assert result.rounds == 3 and [s.round for s in result.samples["a"]["v"][1]] == [0, 1, 2]


def test_the_reference_is_sampled_beside_each_subject_alternately_before_and_after(ctx: Context) -> None:
    experiment = _Probe({"native": 1.0, "fast": 2.0, "slow": 0.5}, beside="native")
    subjects = [_Fake("fast"), _Fake("slow"), _Fake("native", "native")]
    result = run_experiment(experiment, subjects, ctx)
    order = _samples(experiment.calls)
    assert order[:8] == ["native", "fast", "slow", "native"] * 2  # round 1, points 1 and 2
    assert order[8:16] == ["native", "slow", "fast", "native"] * 2  # round 2: rotated, sides swapped
    native = result.samples["native"]["v"][1]
    assert [s.beside for s in native] == ["fast", "slow", "slow", "fast", "fast", "slow"]
    # The disk gets faster with every sample: paired ratios to the sample beside stay exact.
    fast = result.paired("fast", "native", "v", 1)
    slow = result.paired("slow", "native", "v", 1)
    assert fast is not None and slow is not None
    assert 1.95 < fast.low <= fast.high < 2.05 and 0.48 < slow.low <= slow.high < 0.52


def test_warm_up_is_not_recorded_and_repeat_multiplies_the_rounds(ctx: Context) -> None:
    ctx.repeat = 2
    experiment = _Probe({"a": 1.0}, warmup=True)
    result = run_experiment(experiment, [_Fake("a")], ctx)
    assert len(_samples(experiment.calls)) == 2 * (1 + 6)
    assert [s.round for s in result.samples["a"]["v"][1]] == [0, 1, 2, 3, 4, 5]
    assert result.spread("a", "v", 1) is not None and result.rounds == 6


def test_stepwise_rounds_get_a_fresh_state_and_calibration_runs_each_round(ctx: Context) -> None:
    probes: list[str] = []
    ctx.on_round = lambda result: probes.append(result.key)
    experiment = _Probe({"a": 1.0}, stepwise=True)
    run_experiment(experiment, [_Fake("a")], ctx)
    assert [what for what, _ in experiment.calls] == ["prepare", "sample", "sample", "finish"] * 3
    assert probes == ["probe"] * 3


def test_a_subject_that_fails_is_reported_and_the_others_go_on(ctx: Context) -> None:
    experiment = _Probe({"a": 1.0, "broken": 1.0})
    result = run_experiment(experiment, [_Fake("broken"), _Fake("a")], ctx)
    assert result.errors == {"broken": "prepare: OSError: cannot"}
    assert len(result.samples["a"]["v"][2]) == 3 and "broken" not in result.samples
    assert ("finish", "broken") not in experiment.calls


def test_past_the_time_limit_no_sample_starts_and_the_result_says_where_it_stopped(ctx: Context) -> None:
    experiment = _Probe({"a": 1.0, "b": 2.0})
    sample = experiment.sample

    def sample_then_run_out(subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        if len(_samples(experiment.calls)) == 4:  # after round 1 (2 subjects x 2 points), in the 5th
            ctx.deadline = 0.0
        return sample(subject, state, point, ctx)

    experiment.sample = sample_then_run_out  # type: ignore[method-assign]
    result = run_experiment(experiment, [_Fake("a"), _Fake("b")], ctx)
    assert len(_samples(experiment.calls)) == 5 and result.rounds == 1
    assert result.stopped == "the time limit ran out in round 2 of 3, before a at 1 (1 of 3 rounds complete)"
    assert [s.round for s in result.samples["b"]["v"][1]] == [0, 1]
    assert ("finish", "a") in experiment.calls and ("finish", "b") in experiment.calls


def test_a_verdict_on_one_round_of_an_experiment_cut_short_is_inconclusive(ctx: Context) -> None:
    class _Judging(_Probe):
        def judge(self, result: Result) -> list[Verdict]:
            found = result.spread("a", "v", 2)
            assert found is not None
            return [claim("a", True, [side(found, high=1e9)], found.show(), found.brief(), found)]

    experiment = _Judging({"a": 1.0})
    sample = experiment.sample

    def sample_then_run_out(subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        if len(_samples(experiment.calls)) == 1:
            ctx.deadline = 0.0
        return sample(subject, state, point, ctx)

    experiment.sample = sample_then_run_out  # type: ignore[method-assign]
    verdict = run_experiment(experiment, [_Fake("a")], ctx).verdicts[0]
    assert verdict.status == "inconclusive" and verdict.detail.endswith("(one round only)")
    ctx.deadline = None
    assert run_experiment(_Judging({"a": 1.0}), [_Fake("a")], ctx).verdicts[0].status == "confirmed"
