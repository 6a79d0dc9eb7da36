"""Experiment 9 — vfs: container creation time and space grow linearly with the image size.

The same figures on the copy-on-write drivers are the other half of the claim: their
container is a snapshot (a thin device, a subvolume, an empty upper directory), which
costs the same whatever the image holds.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict, combine
from cowstore.app.bench.experiments.common import MIB, Timer, container
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import INSIDE, OUTSIDE, side
from cowstore.app.bench.subjects import Subject

_EXPECTED = {
    "vfs": "linear",
    "overlay": "flat",
    "overlay2": "flat",
    "aufs": "flat",
    "btrfs": "flat",
    "devicemapper": "flat",
}


# "linear": the disk grows by more than this many MiB per image MiB, and the time by more than
# this factor; "flat": the disk grows by less than that many.
_LINEAR_SLOPE, _LINEAR_TIME, _FLAT_SLOPE = 0.8, 1.5, 0.05


def _sizes(scale: Scale) -> list[int]:
    return scale.pick([4, 32], [4, 64, 256])


class VfsLinear(Experiment):
    key = "vfs_linear"
    title = "9. vfs: no copy-on-write"
    claim = (
        "vfs copies every layer in full: container time and space grow linearly with the image size; "
        "a copy-on-write driver's container costs the same space whatever the image's size."
    )
    x_label = "image size (MiB of 1 MiB files)"
    metrics = (
        Metric("create_ms", "create + mount of a container", "ms"),
        Metric("disk_mib", "disk used by the container", "MiB"),
    )

    def points(self, scale: Scale) -> list[Point]:
        return list(_sizes(scale))

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        images = {}
        for size in _sizes(ctx.scale):
            big = [BigFile(f"payload/f{i}", MIB) for i in range(size)]
            images[size] = subject.load_image(ctx.images.get(f"payload{size}", big=big))
        return images

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        before = subject.usage()
        with ExitStack() as stack:
            with Timer() as timer:
                stack.enter_context(container(subject, state[point], "linear"))
            used = subject.usage() - before
        return {"create_ms": timer.ms, "disk_mib": used.bytes / MIB}

    def finish(self, subject: Subject, state: Any) -> None:
        for image in state.values():
            subject.drop_image(image)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, low, high in result.ends("disk_mib", least=2):
            assert isinstance(low, int) and isinstance(high, int)
            slope = combine(
                lambda a, b, span=high - low: (b - a) / span,
                result.by_round(subject, "disk_mib", low),
                result.by_round(subject, "disk_mib", high),
            )
            growth = result.growth(subject, "create_ms", low, high)
            if slope is None or growth is None:
                continue
            linear = [side(slope, low=_LINEAR_SLOPE), side(growth, low=_LINEAR_TIME)]
            flat = side(slope, high=_FLAT_SLOPE)
            if all(s == INSIDE for s in linear):
                shape = "linear"
            elif flat == INSIDE:
                shape = "flat"
            else:
                shape = "in between" if OUTSIDE in linear and flat == OUTSIDE else "unclear"
            detail = (
                f"disk grows {slope.show(' MiB', 2)} per image MiB, create+mount grows {growth.show('x', 1)} "
                f"from {low} to {high} MiB: {shape}"
            )
            expected = _EXPECTED.get(subject)
            sides = linear if expected == "linear" else [flat]
            figure = f"{slope.brief(' MiB/MiB', 2)}, time {growth.brief('x', 1)}"
            verdicts.append(claim(subject, expected is not None, sides, detail, figure, slope))
        return verdicts
