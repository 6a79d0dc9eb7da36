"""Experiment 1 — container cost: create + mount of N containers from one image.

An engine that mounts a container only while it runs (docker) is timed on create alone:
its figure is the cost of preparing the container's layers, without the mount. btrfs
meets `btrfs-cli`, the same two snapshots per container (`-init`, then the container's)
made by the `btrfs` command: what a driver that shells out would pay.

cowstore's own targets per driver (its compact layout: one `-init` layer per image,
container layers holding only what the kernel needs) are checked at the largest N when
it is at least 50: the first container of an image also makes the image's `-init`
layer, which weighs too much in a mean over a handful (the quick scale's 5).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import Timer, container, unique
from cowstore.app.bench.experiments.verdicts import claim, target
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import Subject

_REFERENCES = {"btrfs": ("btrfs-cli",)}
# The figures "Deep dive into Docker storage drivers" gives for one container: under 0.1 s, under 1 MB.
_MS, _KIB = 100.0, 1024.0
# The fewest containers at which cowstore's targets are checked (their shared -init then weighs little).
_TARGET_MIN_N = 50
# cowstore's targets: (ms per create+mount, KiB per container, inodes per container); None: no target.
_TARGETS: dict[str, tuple[float | None, float | None, float | None]] = {
    "overlay2": (5.0, 16.0, 8.0),
    "overlay": (5.0, 16.0, 8.0),
    "aufs": (20.0, None, None),
    "devicemapper": (50.0, 256.0, None),
}


class ContainerCost(Experiment):
    key = "container_cost"
    title = "1. Container cost"
    claim = "One container costs under 0.1 s to start and under 1 MB of disk."
    x_label = "containers created and mounted (N)"
    metrics = (
        Metric("time_ms", "time per container", "ms"),
        Metric("disk_kib", "disk per container", "KiB"),
        Metric("inodes", "inodes per container", "inodes"),
    )
    baselines = ("btrfs-cli",)

    def points(self, scale: Scale) -> list[Point]:
        return scale.pick([1, 5], [1, 10, 50], [1, 10, 100, 1000])

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind in ("driver", "peer", "baseline") else "not a container engine"

    def limit(self, subject: Subject, state: Any, point: Point, scale: Scale) -> str | None:
        if subject.name == "devicemapper" and isinstance(point, int) and point > 100:
            return "capped at 100: every mounted container holds a loop device"
        return None

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        return subject.load_image(ctx.images.get("base"))

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(point, int)
        with ExitStack() as stack:
            before = subject.usage()
            with Timer() as timer:
                for _ in range(point):
                    if subject.mountable:
                        stack.enter_context(container(subject, state, "cost"))
                    else:
                        stack.callback(subject.remove, subject.create(state, unique("cost")))
            used = subject.usage() - before
        values = {"time_ms": timer.ms / point, "disk_kib": used.bytes / point / 1024}
        if used.inodes is not None:
            values["inodes"] = used.inodes / point
        return values

    def finish(self, subject: Subject, state: Any) -> None:
        subject.drop_image(state)

    def caveat(self, subject: Subject) -> str | None:
        if subject.mountable:
            return None
        return (
            "timed on create alone: the engine has no mount command and mounts a container's layers "
            "only while it runs; disk and inodes are those of the created containers"
        )

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, _, n in result.ends("time_ms"):
            ms, kib = result.spread(subject, "time_ms", n), result.spread(subject, "disk_kib", n)
            if ms is None or kib is None:
                continue
            versus = result.versus(subject, _REFERENCES.get(subject, ()), "time_ms", n)
            sides = (side(ms, high=_MS), side(kib, high=_KIB))
            detail = f"{ms.show(' ms')}{versus} and {kib.show(' KiB', 0)} per container at N={n}"
            verdicts.append(claim(subject, True, sides, detail, f"{ms.brief(' ms')}, {kib.brief(' KiB', 0)}", ms))
            inodes = result.spread(subject, "inodes", n)
            limits = _TARGETS.get(subject, (None, None, None))
            if not isinstance(n, int) or n < _TARGET_MIN_N:
                limits = (None, None, None)
            for limit, value, what in zip(limits, (ms, kib, inodes), ("ms", "KiB", "inodes"), strict=True):
                if limit is not None and value is not None:
                    detail = f"{value.show(' ' + what)} per container <= {limit:g}"
                    verdicts.append(target(subject, [side(value, high=limit)], detail, value))
        return verdicts
