"""Run the experiments over the subjects, alternating them, and collect the samples.

For each round and each point every subject takes one sample, and the order of the
subjects rotates from round to round: a burst of load from another process then hits
all of them alike instead of one whole series, so the ratios between subjects hold on
a noisy machine. A baseline takes part only where the experiment lists it. A subject
that fails is recorded with the error and dropped from the experiment; the run goes on
with the others (a bench must report, not crash). Ctrl-C and SIGTERM are not failures:
they propagate so the caller can clean up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cowstore.app.bench.experiments import Context, Experiment, Result
from cowstore.app.bench.subjects import Subject


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_experiment(experiment: Experiment, subjects: Sequence[Subject], ctx: Context) -> Result:
    result = experiment.result(ctx.scale)
    started = time.perf_counter()
    states: dict[str, Any] = {}
    active: list[Subject] = []
    try:
        for subject in subjects:
            if subject.kind == "baseline" and subject.name not in experiment.baselines:
                continue
            reason = experiment.supports(subject)
            if reason:
                result.skipped[subject.name] = reason
                continue
            ctx.log(f"{experiment.title}: preparing {subject.name}")
            try:
                states[subject.name] = experiment.prepare(subject, ctx)
            except Exception as exc:  # noqa: BLE001 - any failure of one subject is reported, not fatal
                result.errors[subject.name] = f"prepare: {_describe(exc)}"
                continue
            active.append(subject)
            caveat = experiment.caveat(subject)
            if caveat:
                result.notes.append(f"{subject.name}: {caveat}")
        for round_no in range(experiment.rounds(ctx.scale)):
            shift = round_no % max(len(active), 1)
            order = active[shift:] + active[:shift]
            for point in result.points:
                for subject in order:
                    if subject.name in result.errors:
                        continue
                    reason = experiment.limit(subject, states[subject.name], point, ctx.scale)
                    if reason:
                        result.limits[subject.name][str(point)] = reason
                        continue
                    ctx.log(f"{experiment.title}: {subject.name} at {point} (round {round_no + 1})")
                    try:
                        result.add(subject.name, experiment.sample(subject, states[subject.name], point, ctx), point)
                    except Exception as exc:  # noqa: BLE001
                        result.errors[subject.name] = f"at {point}: {_describe(exc)}"
    finally:
        for subject in active:
            try:
                experiment.finish(subject, states[subject.name])
            except Exception as exc:  # noqa: BLE001
                result.errors.setdefault(subject.name, f"clean-up: {_describe(exc)}")
        result.seconds = time.perf_counter() - started
    result.verdicts = experiment.judge(result)
    return result
