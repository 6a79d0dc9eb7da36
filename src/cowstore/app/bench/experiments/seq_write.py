"""Experiment 4 — sequential write throughput in a container layer vs a plain directory."""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, Timer, container, write_file
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

# The talk: btrfs "can be half of native"; devicemapper on loop files is slow.
_CLAIMED = {"btrfs": 0.6, "devicemapper": 0.7}


class SeqWrite(Experiment):
    key = "seq_write"
    title = "4. Sequential write throughput"
    claim = ("Sequential writes in a container: btrfs can run at half native speed; "
             "devicemapper on loop files is slow.")
    x_label = "bytes written, 1 MiB blocks + fsync (MiB)"
    metrics = (Metric("mb_s", "throughput", "MB/s"),)

    def points(self, scale: Scale) -> list[Point]:
        return scale.pick([64], [512])

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind in ("driver", "native") else "cowstore drivers and the native baseline only"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        if subject.kind == "native":
            return None
        return subject.load_image(ctx.images.get("base"))

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(point, int)
        block = os.urandom(MIB)
        if subject.kind == "native":
            target = subject.plain_dir() / "seqwrite"
            with Timer() as timer:
                write_file(target, point * MIB, block)
            target.unlink()
        else:
            with container(subject, state, "seqwrite") as (_, root), Timer() as timer:
                write_file(root / "tmp" / "seqwrite", point * MIB, block)
        return {"mb_s": point * MIB / 1e6 / (timer.ms / 1000)}

    def finish(self, subject: Subject, state: Any) -> None:
        if state is not None:
            subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        point = result.points[0]
        native = result.median("native", "mb_s", point)
        verdicts = []
        for subject in result.subjects():
            rate = result.median(subject, "mb_s", point)
            if subject == "native" or rate is None or not native:
                continue
            ratio = rate / native
            detail = f"{rate:.0f} MB/s, {ratio:.2f}x native ({native:.0f} MB/s)"
            bound = _CLAIMED.get(subject)
            status = "not claimed" if bound is None else ("confirmed" if ratio <= bound else "not confirmed")
            verdicts.append(Verdict(subject, status, detail))
        return verdicts
