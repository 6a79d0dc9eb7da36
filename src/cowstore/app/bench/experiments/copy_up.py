"""Experiment 2 — copy-up: the first open-for-write of a lower file of 1 MiB ... 1 GiB.

overlay2 and aufs are measured a second time with their store on an xfs with reflink
(`overlay2@xfs`, `aufs@xfs`), where a copy-up can share the lower file's extents
instead of copying its bytes; aufs is also set against overlay2 on the same backing.

An engine without a mount command (docker) is measured inside `docker run`: busybox
`adjtimex` prints the wall clock to the microsecond around a `dd conv=notrunc` that opens
the file for writing and writes 4 KiB, and around a read-only `dd` of the same file
before it; the figure is the difference, so the cost of starting `dd` cancels out.
"""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, Timer, container
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import INSIDE, OUTSIDE, side
from cowstore.app.bench.subjects import PlainSubject, Subject

# Which way each design goes in "Deep dive into Docker storage drivers": a file-level union
# copies the whole file, block-level and snapshotting drivers copy (at most) one block.
_EXPECTED = {
    "overlay": "grows",
    "overlay2": "grows",
    "aufs": "grows",
    "podman-overlay": "grows",
    "docker-overlay2": "grows",
    "btrfs": "flat",
    "devicemapper": "flat",
}
# aufs's reference on each backing: the kernel's overlayfs through the overlay2 driver.
_REFERENCE = {"aufs": ("overlay2",), "aufs@xfs": ("overlay2@xfs",)}
# A copy-up "grows" when the biggest file's costs more than this many times the smallest's.
_GROWS = 5.0


def _sizes(scale: Scale) -> list[int]:
    return scale.pick([1, 32], [1, 16, 256], [1, 16, 256, 1024])


def _adjtimex_ms(output: str) -> list[float]:
    """The wall-clock readings (ms) printed by successive busybox `adjtimex` runs."""
    readings, seconds = [], 0
    for line in output.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "time.tv_sec":
            seconds = int(value)
        elif key == "time.tv_usec":
            readings.append(seconds * 1000 + int(value) / 1000)
    return readings


def _open_in_run(subject: Subject, image: str, path: str) -> float:
    """Copy-up measured inside a running container: (write dd) - (read-only dd), in ms."""
    script = (
        f"adjtimex; dd if={path} of=/dev/null bs=4096 count=1 2>/dev/null; adjtimex; "
        f"dd if=/dev/zero of={path} bs=4096 count=1 conv=notrunc 2>/dev/null; adjtimex"
    )
    readings = _adjtimex_ms(subject.run(image, ["sh", "-c", script]))
    if len(readings) != 3:
        raise ValueError(f"expected 3 adjtimex readings from the container, got {len(readings)}")
    start, opened, written = readings
    return (written - opened) - (opened - start)


def _open_for_write(path: os.PathLike) -> float:
    """Open for writing and change the first 4 KiB: what triggers (and waits for) copy-up."""
    with Timer() as timer:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"w" * 4096, 0)
        finally:
            os.close(fd)
    return timer.ms


class CopyUp(Experiment):
    key = "copy_up"
    title = "2. Copy-up"
    claim = (
        "The first open-for-write of a big lower file is slow on aufs/overlay (the whole file "
        "is copied up); block-level drivers copy one block."
    )
    x_label = "size of the lower file (MiB)"
    metrics = (Metric("open_ms", "first open-for-write + 4 KiB write", "ms"),)
    baselines = ("overlay2@xfs", "aufs@xfs")

    def points(self, scale: Scale) -> list[Point]:
        return list(_sizes(scale))

    def supports(self, subject: Subject) -> str | None:
        return None

    def caveat(self, subject: Subject) -> str | None:
        if subject.mountable:
            return None
        return (
            "measured inside `run` with busybox adjtimex around `dd conv=notrunc` (open for write + 4 KiB), "
            "minus the same around a read-only dd of the file"
        )

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        big = [BigFile(f"big/{size}M", size * MIB) for size in _sizes(ctx.scale)]
        tar = ctx.images.get("copyup", big=big)
        if isinstance(subject, PlainSubject):
            directory = subject.dir / "copyup"
            directory.mkdir()
            for item in big:
                with open(directory / os.path.basename(item.path), "wb") as fh:
                    fh.truncate(item.size)
            return directory
        return subject.load_image(tar)

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        if isinstance(subject, PlainSubject):
            return {"open_ms": _open_for_write(state / f"{point}M")}
        if not subject.mountable:
            return {"open_ms": _open_in_run(subject, state, f"/big/{point}M")}
        with container(subject, state, "copyup") as (_, root):
            return {"open_ms": _open_for_write(root / "big" / f"{point}M")}

    def finish(self, subject: Subject, state: Any) -> None:
        if not isinstance(subject, PlainSubject):
            subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, low, high in result.ends("open_ms", least=2):
            growth = result.growth(subject, "open_ms", low, high)
            small, big = result.spread(subject, "open_ms", low), result.spread(subject, "open_ms", high)
            if growth is None or small is None or big is None:
                continue
            grows = side(growth, low=_GROWS)
            shape = {INSIDE: "grows", OUTSIDE: "flat"}.get(grows, "unclear")
            versus = result.versus(subject, _REFERENCE.get(subject, ()), "open_ms", high)
            detail = (
                f"{small.brief(' ms', 2)} at {low} MiB, {big.brief(' ms', 2)} at {high} MiB "
                f"(growth {growth.show('x', 1)}){versus}: {shape}"
            )
            expected = _EXPECTED.get(subject)
            sides = [grows if expected == "grows" else side(growth, high=_GROWS)]
            figure = f"{high} MiB / {low} MiB: {growth.brief('x', 1)}"
            verdicts.append(claim(subject, expected is not None, sides, detail, figure, growth))
        return verdicts
