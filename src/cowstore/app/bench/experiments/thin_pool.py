"""Experiment 7 — thin pool behaviour (devicemapper): allocation on first write, discard.

One container walks through the steps in order (one round): pool blocks in use after
creating it, after each sequential write, after deleting the files, and after an
explicit discard (FITRIM, what `fstrim` does) returns the blocks to the pool.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, unique, write_file
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import DriverSubject, Subject
from cowstore.errors import CowstoreError
from cowstore.host.fsutil import syncfs

FITRIM = 0xC0185879
CREATED = "container created"
DELETED = "files deleted"
TRIMMED = "after fstrim"


def _writes(scale: Scale) -> list[int]:
    return scale.pick([1, 16, 64], [1, 16, 256, 1024])


def _pool_used(subject: DriverSubject) -> int:
    client = getattr(subject.driver, "client", None)
    if client is None:
        raise CowstoreError("the devicemapper driver exposes no pool client to read usage from")
    status = client.call("status")
    return status["used_data_blocks"] * status["data_block_size"]


def _fstrim(path: os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITRIM, bytearray(struct.pack("QQQ", 0, 2**64 - 1, 0)))
    finally:
        os.close(fd)


class ThinPool(Experiment):
    key = "thin_pool"
    title = "7. Thin pool behaviour"
    claim = ("devicemapper allocates pool blocks only when first written (thin), and discard returns "
             "freed blocks to the pool.")
    x_label = "step"
    metrics = (Metric("pool_mib", "pool data in use (growth since the container was created)", "MiB"),)

    def rounds(self, scale: Scale) -> int:
        return 1

    def points(self, scale: Scale) -> list[Point]:
        total, steps = 0, [CREATED]
        for size in _writes(scale):
            total += size
            steps.append(f"written {total} MiB")
        return [*steps, DELETED, TRIMMED]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.name == "devicemapper" else "thin pools are devicemapper's"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        assert isinstance(subject, DriverSubject)
        image = subject.load_image(ctx.images.get("base"))
        name = unique("thin")
        subject.create(image, name)
        return {"image": image, "name": name, "root": subject.mount(name), "base": 0, "files": 0}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(subject, DriverSubject)
        root = state["root"]
        if point == CREATED:
            state["base"] = _pool_used(subject)
        elif point == DELETED:
            for i in range(state["files"]):
                (root / "tmp" / f"thin{i}").unlink()
            syncfs(root)
        elif point == TRIMMED:
            _fstrim(root)
        else:
            size = _writes(ctx.scale)[state["files"]]
            write_file(root / "tmp" / f"thin{state['files']}", size * MIB, os.urandom(MIB))
            state["files"] += 1
        return {"pool_mib": (_pool_used(subject) - state["base"]) / MIB}

    def finish(self, subject: Subject, state: Any) -> None:
        subject.unmount(state["name"])
        subject.remove(state["name"])
        subject.drop_image(state["image"])

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            written = [p for p in result.points if isinstance(p, str) and p.startswith("written")]
            values = {p: result.median(subject, "pool_mib", p) for p in result.points}
            if any(v is None for v in values.values()):
                continue
            last = written[-1]
            total = float(last.split()[1])
            thin = abs((values[last] or 0) - total) <= max(0.25 * total, 2)
            returned = (values[TRIMMED] or 0) < 0.5 * (values[last] or 0)
            status = "confirmed" if thin and returned else "not confirmed"
            verdicts.append(Verdict(subject, status,
                                    f"{values[last]:.1f} MiB of pool after writing {total:.0f} MiB; "
                                    f"{values[DELETED]:.1f} MiB after deleting; {values[TRIMMED]:.1f} MiB after fstrim"))
        return verdicts
