"""Experiment 7 — thin pool behaviour (devicemapper): allocation on first write, discard, metadata.

One container walks through the steps in order (each round with a new one): pool blocks in use after
creating it, after each sequential write, after deleting the files, and after an
explicit discard (FITRIM, what `fstrim` does) returns the blocks to the pool. Metadata
grows with the blocks mapped; the store is also closed and opened again (a daemon
restart: the pool server stops, then starts and loads the metadata) once with the pool
nearly empty and once after the writes, to see what opening a pool costs as it fills.
"""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict, combine
from cowstore.app.bench.experiments.common import MIB, Timer, fstrim, unique, write_file
from cowstore.app.bench.experiments.result import ratio
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import DriverSubject, Subject
from cowstore.drivers.devicemapper import DeviceMapperDriver, PoolUsage
from cowstore.host.fsutil import syncfs

CREATED = "container created"
REOPENED = "store reopened"
DELETED = "files deleted"
TRIMMED = "after fstrim"


def _writes(scale: Scale) -> list[int]:
    return scale.pick([1, 16, 64], [1, 16, 256, 1024])


def _usage(subject: DriverSubject) -> PoolUsage:
    assert isinstance(subject.driver, DeviceMapperDriver)
    return subject.driver.pool_usage()


class ThinPool(Experiment):
    key = "thin_pool"
    title = "7. Thin pool behaviour"
    claim = (
        "devicemapper allocates pool blocks only when first written (thin), and discard returns "
        "freed blocks to the pool."
    )
    x_label = "step"
    stepwise = True
    metrics = (
        Metric("pool_mib", "pool data in use (growth since the container was created)", "MiB"),
        Metric("meta_per_block", "pool metadata per data block mapped since then", "bytes"),
        Metric("reopen_ms", "close and reopen the store (pool server restart)", "ms"),
    )

    def rounds(self, scale: Scale) -> int:
        return 1

    def points(self, scale: Scale) -> list[Point]:
        total, steps = 0, [CREATED]
        for size in _writes(scale):
            total += size
            steps.append(f"written {total} MiB")
        return [*steps, REOPENED, DELETED, TRIMMED]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.name == "devicemapper" else "thin pools are devicemapper's"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        assert isinstance(subject, DriverSubject)
        image = subject.load_image(ctx.images.get("base"))
        name = unique("thin")
        subject.create(image, name)
        return {"image": image, "name": name, "root": subject.mount(name), "base": None, "files": 0}

    @staticmethod
    def _reopen(subject: DriverSubject, state: Any) -> float:
        """Milliseconds to close and reopen the store, the container unmounted around it."""
        subject.unmount(state["name"])
        with Timer() as timer:
            subject.reopen()
        state["root"] = subject.mount(state["name"])
        return timer.ms

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(subject, DriverSubject)
        root = state["root"]
        figures: dict[str, float] = {}
        if point in (CREATED, REOPENED):
            figures["reopen_ms"] = self._reopen(subject, state)
            if point == CREATED:
                state["base"] = _usage(subject)
        elif point == DELETED:
            for i in range(state["files"]):
                (root / "tmp" / f"thin{i}").unlink()
            syncfs(root)
        elif point == TRIMMED:
            fstrim(root)
        else:
            size = _writes(ctx.scale)[state["files"]]
            write_file(root / "tmp" / f"thin{state['files']}", size * MIB, os.urandom(MIB))
            state["files"] += 1
        now, base = _usage(subject), state["base"]
        grown = now.data_used - base.data_used
        if point not in (CREATED, REOPENED, DELETED, TRIMMED) and grown > 0:
            figures["meta_per_block"] = (now.metadata_used - base.metadata_used) / (grown / now.block_size)
        return {**figures, "pool_mib": grown / MIB}

    def finish(self, subject: Subject, state: Any) -> None:
        subject.unmount(state["name"])
        subject.remove(state["name"])
        subject.drop_image(state["image"])

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        last = [p for p in result.points if isinstance(p, str) and p.startswith("written")][-1]
        total = float(last.split()[1])
        for subject in result.subjects():
            written, deleted = result.spread(subject, "pool_mib", last), result.spread(subject, "pool_mib", DELETED)
            kept = combine(
                ratio, result.by_round(subject, "pool_mib", TRIMMED), result.by_round(subject, "pool_mib", last)
            )
            meta = result.spread(subject, "meta_per_block", last)
            reopen = [result.spread(subject, "reopen_ms", p) for p in (CREATED, REOPENED)]
            if written is None or deleted is None or kept is None or meta is None or None in reopen:
                continue
            slack = max(0.25 * total, 2)
            sides = (side(written, total - slack, total + slack), side(kept, high=0.5))
            empty, full = (r.brief(" ms", 0) for r in reopen if r is not None)
            detail = (
                f"{written.brief(' MiB', 1)} of pool after writing {total:.0f} MiB; {deleted.brief(' MiB', 1)} "
                f"after deleting; {kept.show('x', 3)} of it kept after fstrim; {meta.brief(' bytes', 1)} of "
                f"metadata per mapped block; reopen {empty} nearly empty, {full} with {total:.0f} MiB mapped"
            )
            figure = f"{written.brief(' MiB', 0)} for {total:.0f} MiB written, {kept.brief('x', 3)} after fstrim"
            verdicts.append(claim(subject, True, sides, detail, figure, written))
        return verdicts
