"""Experiment 8 — the btrfs chunk trap: "No space left on device" while df shows space.

On a small btrfs of its own (a loop-mounted image, so the run cannot hurt the others):
fill it with data so every byte of the device belongs to a data chunk, delete every
other file (chunks half empty, df shows half the disk free), then create small files,
which need metadata: once the metadata chunks are full no new one can be allocated,
and creation fails with ENOSPC. A balance of the half-empty data chunks gives space
back to the device and creation works again. The balance itself may need metadata: when
it fails with ENOSPC, some of the small files are deleted first (5%, then more: what an
administrator must do), and the retry then creates
up to twice as many files as were deleted plus 100: more than the deleted files' space
alone could hold. Each round walks the steps on a new filesystem: each step depends on the last.
"""

from __future__ import annotations

import errno
import os
import pathlib
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict, combine
from cowstore.app.bench.experiments.common import MIB
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import Subject
from cowstore.drivers import open_driver
from cowstore.drivers.btrfs import BtrfsDriver, allocation, balance
from cowstore.errors import ResourceExhausted
from cowstore.host.fsutil import syncfs

FILLED = "filled with data"
THINNED = "every other file deleted"
TRAPPED = "small files until ENOSPC"
BALANCED = "after balance -dusage=50"
RETRIED = "small files again"
_MAX_SMALL = 400_000


def _is_enospc(exc: OSError) -> bool:
    return exc.errno == errno.ENOSPC


def _fill(directory: pathlib.Path, block: bytes) -> int:
    count = 0
    try:
        while True:
            with open(directory / f"data{count}", "wb") as fh:
                fh.write(block)
            count += 1
    except OSError as exc:
        if not _is_enospc(exc):
            raise
    return count


def _small_files(directory: pathlib.Path, prefix: str, limit: int) -> tuple[int, bool]:
    """Create files of 2 KiB (inlined in metadata) with an 8 KiB xattr until ENOSPC;
    (created, hit ENOSPC). The xattr fills metadata with fewer files, so faster."""
    payload, pad = b"m" * 2048, b"x" * 8192
    directory.mkdir(exist_ok=True)
    for i in range(limit):
        try:
            fd = os.open(directory / f"{prefix}{i}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, payload)
                os.setxattr(fd, "user.pad", pad)
            finally:
                os.close(fd)
        except OSError as exc:
            if not _is_enospc(exc):
                raise
            return i, True
    return limit, False


def _balance(driver: BtrfsDriver, small: pathlib.Path, created: int) -> int:
    """Balance; while the balance itself cannot get metadata (ENOSPC), delete small files
    first, 5% more each time, as an administrator must. Returns the files deleted."""
    deleted = 0
    for share in (0, 5, 10, 20, 40):
        for i in range(deleted, created * share // 100):
            (small / f"a{i}").unlink()
        deleted = max(deleted, created * share // 100)
        syncfs(small)
        try:
            balance(driver, 50)
            return deleted
        except ResourceExhausted:  # the balance ran out of space part-way
            continue
    raise ResourceExhausted(f"balance kept failing with ENOSPC after deleting {deleted} of {created} small files")


class BtrfsChunks(Experiment):
    key = "btrfs_chunks"
    title = "8. btrfs chunk trap"
    claim = (
        "btrfs can fail with 'No space left on device' while df shows free space (all chunks "
        "allocated); a balance (`-dusage`) fixes it."
    )
    x_label = "step"
    stepwise = True
    metrics = (
        Metric("df_free_mib", "free space df shows", "MiB"),
        Metric("unallocated_mib", "device space in no chunk", "MiB"),
        Metric("files", "small files created (deleted, for the balance) in the step", "files"),
    )

    def rounds(self, scale: Scale) -> int:
        return 1

    def points(self, scale: Scale) -> list[Point]:
        return [FILLED, THINNED, TRAPPED, BALANCED, RETRIED]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.name == "btrfs" else "a btrfs trap"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        size = ctx.scale.pick("256M", "1G")
        driver = open_driver("btrfs", ctx.scratch.path("btrfs-trap") / "btrfs", {"btrfs.loopback": size})
        assert isinstance(driver, BtrfsDriver)
        try:
            driver.create("trap", None)
            root = driver.get("trap")
        except BaseException:
            driver.cleanup()
            raise
        return {"driver": driver, "root": root, "data": 0, "small": 0}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        driver, root = state["driver"], state["root"]
        files = 0
        if point == FILLED:
            state["data"] = files = _fill(root, os.urandom(4 * MIB))
        elif point == THINNED:
            for i in range(0, state["data"], 2):
                (root / f"data{i}").unlink()
        elif point == TRAPPED:
            state["trapped"] = files = _small_files(root / "small", "a", _MAX_SMALL)[0]
        elif point == BALANCED:
            state["deleted"] = files = _balance(driver, root / "small", state["trapped"])
        elif point == RETRIED:
            files = _small_files(root / "small", "b", 2 * state["deleted"] + 100)[0]
        syncfs(root)
        st = os.statvfs(root)
        return {
            "df_free_mib": st.f_bavail * st.f_frsize / MIB,
            "unallocated_mib": allocation(root).unallocated / MIB,
            "files": files,
        }

    def finish(self, subject: Subject, state: Any) -> None:
        driver = state["driver"]
        try:
            driver.put("trap")
        finally:
            driver.cleanup()

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            free = result.spread(subject, "df_free_mib", TRAPPED)
            created = result.spread(subject, "files", TRAPPED)
            freed = result.spread(subject, "unallocated_mib", BALANCED)
            removed = result.spread(subject, "files", BALANCED)
            deleted = result.by_round(subject, "files", BALANCED)
            again = result.by_round(subject, "files", RETRIED)
            # Files that fit after the balance beyond twice those deleted for it (> 0: fixed).
            beyond = combine(lambda a, d: a - 2 * d, again, deleted)
            if free is None or created is None or freed is None or removed is None or beyond is None:
                continue
            sides = (side(created, high=_MAX_SMALL - 1), side(free, low=32), side(beyond, low=1))
            detail = (
                f"ENOSPC after {created.brief(' small files', 0)} while df showed {free.brief(' MiB', 0)} free; "
                f"after deleting {removed.brief('', 0)} of them the "
                f"balance left {freed.brief(' MiB', 0)} unallocated and {beyond.brief('', 0)} more files "
                "fit than twice those deleted"
            )
            verdicts.append(claim(subject, True, sides, detail, f"ENOSPC with {free.brief(' MiB', 0)} free", free))
        return verdicts
