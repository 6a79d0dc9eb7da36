"""Experiment 9 — vfs: container creation time and space grow linearly with the image size.

The same figures on the copy-on-write drivers are the other half of the claim: their
container is a snapshot (a thin device, a subvolume, an empty upper directory), which
costs the same whatever the image holds.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict, judged
from cowstore.app.bench.experiments.common import MIB, Timer, container
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

_EXPECTED = {
    "vfs": "linear",
    "overlay": "flat",
    "overlay2": "flat",
    "aufs": "flat",
    "btrfs": "flat",
    "devicemapper": "flat",
}


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
            disk_low, disk_high = (result.median(subject, "disk_mib", p) or 0.0 for p in (low, high))
            t_low, t_high = (result.median(subject, "create_ms", p) or 0.0 for p in (low, high))
            disk_slope = (disk_high - disk_low) / (high - low)
            time_growth = t_high / t_low if t_low else float("inf")
            if disk_slope > 0.8 and time_growth > 1.5:
                shape = "linear"
            elif disk_slope < 0.05:
                shape = "flat"
            else:
                shape = "in between"
            detail = (
                f"disk grows {disk_slope:.2f} MiB per image MiB, create+mount {t_low:.0f} -> {t_high:.0f} ms "
                f"({time_growth:.1f}x) from {low} to {high} MiB: {shape}"
            )
            verdicts.append(judged(subject, _EXPECTED, shape, detail))
        return verdicts
