"""Experiment 4 — sequential I/O in a container: a write with fsync, then a cold and a warm read.

Besides native (a plain directory on the common backing), a driver is set against its
own baselines: devicemapper against ext4 on a plain loop device, through the page
cache (`loop-lvm`, as Docker stored its pool) and with direct I/O (`loop-dio`, as the
thin devices are attached); btrfs against a plain directory on a btrfs of its own
(`btrfs-plain`), which separates btrfs's cost from a snapshot's; aufs against overlay2.

Native and the drivers are measured the same way: every dirty page of the machine is
written back and the subject's storage evicted before the write (so an fsync pays for its
own data only), the same 1 MiB writes and one fsync, and before the cold read every file
of the subject's storage, backing files included, and the image file of the common
backing are flushed and evicted from the page cache. Native is sampled right next to each
subject (alternately before and after it), so each ratio to native compares two samples
taken seconds apart; a first round is run and discarded, so that every subject's files
have been placed on the backing once before anything counts (the first write into a region
of the sparse image allocates it on the host). Drivers whose data path is the backing
itself (overlay2 and overlay writing a new file into their upper directory, vfs into its
copy) must then measure as native does: a check says whether they do.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import (
    MIB,
    Timer,
    container,
    evict,
    fstrim,
    mb_per_s,
    read_file,
    settle,
    write_file,
)
from cowstore.app.bench.experiments.verdicts import NOISE_BAND, claim, noise_check, target
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import PlainSubject, Subject

# "Deep dive into Docker storage drivers": btrfs writes "can be half of native"; devicemapper on
# loop files is slow. The bound on the write throughput, times native's, that confirms it.
_CLAIMED = {"btrfs": 0.6, "devicemapper": 0.7}
_REFERENCES = {"btrfs": ("btrfs-plain",), "devicemapper": ("loop-lvm", "loop-dio"), "aufs": ("overlay2",)}
# cowstore's targets: at least this share of the reference's throughput, for these metrics.
_TARGETS = {
    "aufs": ("overlay2", 0.8, ("write_mb_s", "warm_mb_s")),
    "devicemapper": ("loop-lvm", 0.5, ("write_mb_s", "cold_mb_s")),
}
# Drivers whose data path is the backing filesystem itself: they must measure as native does.
_AS_NATIVE = ("overlay2", "overlay", "vfs")


def _measure(subject: Subject, path: pathlib.Path, size: int, ctx: Context) -> dict[str, float]:
    """Settle the machine, write `path` (timed), evict the subject's storage and the common
    backing's image, read it cold, then warm; delete it."""
    block = os.urandom(MIB)
    settle(subject.storage_dir(), ctx.scratch.image)
    with Timer() as write:
        write_file(path, size, block)
    evict(subject.storage_dir(), ctx.scratch.image)
    with Timer() as cold:
        read_file(path)
    with Timer() as warm:
        read_file(path)
    path.unlink()
    return {
        "write_mb_s": mb_per_s(size, write.ms),
        "cold_mb_s": mb_per_s(size, cold.ms),
        "warm_mb_s": mb_per_s(size, warm.ms),
    }


class SeqWrite(Experiment):
    key = "seq_write"
    title = "4. Sequential I/O"
    claim = "Sequential writes in a container: btrfs can run at half native speed; devicemapper on loop files is slow."
    x_label = "file size (MiB): written in 1 MiB blocks + fsync, read cold, read again warm"
    metrics = (
        Metric("write_mb_s", "write + fsync", "MB/s"),
        Metric("cold_mb_s", "cold read", "MB/s"),
        Metric("warm_mb_s", "warm read", "MB/s"),
    )
    baselines = ("loop-lvm", "loop-dio", "btrfs-plain")
    beside = "native"
    warmup = True

    def points(self, scale: Scale) -> list[Point]:
        return scale.pick([64], [256])

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind != "peer" else "cowstore drivers and their baselines only"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        if isinstance(subject, PlainSubject):
            return None
        return subject.load_image(ctx.images.get("base"))

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(point, int)
        if not isinstance(subject, PlainSubject):
            with container(subject, state, "seqwrite") as (_, root):
                return _measure(subject, root / "tmp" / "seqwrite", point * MIB, ctx)
        figures = _measure(subject, subject.dir / "seqwrite", point * MIB, ctx)
        if subject.kind == "baseline":
            fstrim(subject.dir)  # give the freed blocks back, as deleting a thin device does
        return figures

    def finish(self, subject: Subject, state: Any) -> None:
        if state is not None:
            subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        point = result.points[0]
        verdicts = []
        for subject in result.subjects():
            ratio = result.paired(subject, "native", "write_mb_s", point)
            if subject == "native" or ratio is None:
                continue
            figures = []
            for metric in self.metrics:
                found = result.spread(subject, metric.key, point)
                if found is not None:
                    versus = result.versus(subject, ("native", *_REFERENCES.get(subject, ())), metric.key, point)
                    figures.append(f"{metric.label} {found.brief(' MB/s', 0)}{versus}")
            bound = _CLAIMED.get(subject)
            sides = [side(ratio, high=bound)] if bound is not None else []
            figure = f"{ratio.show('x', 2)} native"
            verdicts.append(claim(subject, bound is not None, sides, "; ".join(figures), figure, ratio))
            if subject in _TARGETS:
                verdicts += self._target(result, subject, point)
            if subject in _AS_NATIVE:
                verdicts += self._as_native(result, subject, point)
        return verdicts

    def _target(self, result: Result, subject: str, point: Point) -> list[Verdict]:
        """cowstore's target for `subject` against its reference (none when that was not measured)."""
        reference, least, keys = _TARGETS[subject]
        ratios = {m.label: result.paired(subject, reference, m.key, point) for m in self.metrics if m.key in keys}
        found = {label: r for label, r in ratios.items() if r is not None}
        if len(found) < len(ratios):
            return []
        shown = ", ".join(f"{label} {r.show('x', 2)}" for label, r in found.items())
        return [target(subject, (side(r, low=least) for r in found.values()), f">= {least}x {reference}: {shown}")]

    def _as_native(self, result: Result, subject: str, point: Point) -> list[Verdict]:
        """The check that `subject`, writing straight to the backing, measures as native does."""
        ratios = {m.label: result.paired(subject, "native", m.key, point) for m in self.metrics}
        found = {label: r for label, r in ratios.items() if r is not None}
        if not found:
            return []
        shown = ", ".join(f"{label} {r.show('x', 2)}" for label, r in found.items())
        sides = (side(r, *NOISE_BAND) for r in found.values())
        return [noise_check(subject, sides, f"as native (data path: the backing itself): {shown}")]
