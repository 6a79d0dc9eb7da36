"""Chunk allocation of a btrfs filesystem, the "ENOSPC while df shows space" trap, balance.

btrfs hands out the device in chunks (block groups) of one type: data, metadata or
system. Once every byte of the device belongs to some chunk, a write that needs a new
metadata chunk fails with ENOSPC even though half-empty data chunks make `df` show
plenty of free space. A balance with a usage filter rewrites the contents of
mostly-empty data chunks into others and gives their space back to the device.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
from dataclasses import dataclass

from cowstore.drivers.btrfs import ioctl as btrfsioctl
from cowstore.errors import InUse, InvalidOption, ResourceExhausted, Unavailable
from cowstore.units import human_size

# Usage thresholds tried in order, like btrfsmaintenance: cheap passes over nearly
# empty chunks first, so the expensive ones move as little data as possible.
_BALANCE_STEPS = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
_CHUNK_MAX = 1024**3


class BalanceError(Unavailable):
    """A balance could not run or failed part-way."""


class BalanceRunning(InUse):
    """Another balance runs on the filesystem."""


class BalanceNoSpace(ResourceExhausted):
    """A balance ran out of unallocated space part-way."""


@dataclass(frozen=True)
class Allocation:
    """Where the device's bytes are: allocated to chunks per type, used inside them."""

    device_size: int
    device_allocated: int
    data_allocated: int
    data_used: int
    metadata_allocated: int
    metadata_used: int
    system_allocated: int
    system_used: int
    global_reserve: int

    @property
    def unallocated(self) -> int:
        return self.device_size - self.device_allocated

    @property
    def data_free(self) -> int:
        return self.data_allocated - self.data_used

    @property
    def chunk_size(self) -> int:
        """The data chunk size btrfs picks: a tenth of the device, at most 1 GiB."""
        return max(min(_CHUNK_MAX, self.device_size // 10), 1)

    def warning(self) -> str | None:
        """The chunk-full trap, explained with its fix; None when the device has room."""
        if self.unallocated >= self.chunk_size or self.data_free < self.chunk_size:
            return None
        return (
            f"device fully allocated ({human_size(self.unallocated)} unallocated) while data chunks "
            f"hold {human_size(self.data_free)} free: writes needing a new metadata chunk fail with "
            "ENOSPC although df shows space; run `cowstore btrfs balance --dusage 50`"
        )


def _open(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def allocation(path: pathlib.Path) -> Allocation:
    """The chunk allocation of the btrfs filesystem holding `path`."""
    fd = _open(path)
    try:
        totals = {"data": [0, 0], "metadata": [0, 0], "system": [0, 0]}
        reserve = 0
        for flags, total, used in btrfsioctl.space_info(fd):
            if flags & btrfsioctl.SPACE_INFO_GLOBAL_RSV:
                reserve = total
                continue
            for kind, bit in (
                ("data", btrfsioctl.BLOCK_GROUP_DATA),
                ("metadata", btrfsioctl.BLOCK_GROUP_METADATA),
                ("system", btrfsioctl.BLOCK_GROUP_SYSTEM),
            ):
                if flags & bit:
                    totals[kind][0] += total
                    totals[kind][1] += used
        max_id, _, _ = btrfsioctl.fs_info(fd)
        size = allocated = 0
        for devid in range(1, max_id + 1):
            info = btrfsioctl.dev_info(fd, devid)
            if info is not None:
                allocated += info[0]
                size += info[1]
    finally:
        os.close(fd)
    (data_allocated, data_used), (meta_allocated, meta_used), (sys_allocated, sys_used) = (
        totals["data"],
        totals["metadata"],
        totals["system"],
    )
    return Allocation(
        size, allocated, data_allocated, data_used, meta_allocated, meta_used, sys_allocated, sys_used, reserve
    )


def status_lines(path: pathlib.Path) -> list[tuple[str, str]]:
    """`info` lines for the chunk allocation, ending with the warning when it applies."""
    alloc = allocation(path)
    lines = [
        ("Device Size", human_size(alloc.device_size)),
        ("Device Allocated", human_size(alloc.device_allocated)),
        ("Device Unallocated", human_size(alloc.unallocated)),
        ("Data Space Allocated", human_size(alloc.data_allocated)),
        ("Data Space Used", human_size(alloc.data_used)),
        ("Metadata Space Allocated", human_size(alloc.metadata_allocated)),
        ("Metadata Space Used", human_size(alloc.metadata_used)),
        ("System Space Allocated", human_size(alloc.system_allocated)),
        ("Global Reserve", human_size(alloc.global_reserve)),
    ]
    warning = alloc.warning()
    if warning:
        lines.append(("WARNING", warning))
    return lines


def balance_path(path: pathlib.Path, dusage: int) -> dict[str, int]:
    """Balance data chunks up to `dusage` percent full, in increasing steps.

    Returns what it did: chunks considered and relocated, unallocated bytes before
    and after, and `freed_bytes` (their difference) — the space handed back to the
    device for new chunks.
    """
    if not 0 <= dusage <= 100:
        raise InvalidOption(f"dusage must be a percentage between 0 and 100, not {dusage}")
    before = allocation(path).unallocated
    considered = relocated = 0
    fd = _open(path)
    try:
        for step in [s for s in _BALANCE_STEPS if s < dusage] + [dusage]:
            try:
                seen, moved = btrfsioctl.balance(fd, data_usage=step)
            except OSError as exc:
                if exc.errno == errno.EINPROGRESS:
                    raise BalanceRunning(f"a balance is already running on {path}; wait for it to finish") from None
                if exc.errno == errno.ENOSPC:
                    raise BalanceNoSpace(
                        f"balance at dusage={step} ran out of space on {path}: delete some data "
                        "or add a device, then balance again with a lower --dusage"
                    ) from None
                raise BalanceError(f"balance of {path} at dusage={step}: {exc.strerror}") from None
            considered += seen
            relocated += moved
        btrfsioctl.sync(fd)
    finally:
        os.close(fd)
    after = allocation(path).unallocated
    return {
        "dusage": dusage,
        "chunks_considered": considered,
        "chunks_relocated": relocated,
        "unallocated_before": before,
        "unallocated_after": after,
        "freed_bytes": after - before,
    }


# Below this much free space, a removal waits until btrfs has the space back.
NEARLY_FULL = 64 * 1024 * 1024


def reclaim_if_full(path: pathlib.Path) -> None:
    """Wait for the space of deleted subvolumes when the filesystem is nearly full.

    btrfs gives a deleted subvolume's space back in a background cleaner, well after
    the deletion returns; on a full filesystem what comes next (the store's database
    recording that the layer is gone) needs that space now, and SQLite's shared memory
    meets a full btrfs as a SIGBUS, not an error.
    """
    st = os.statvfs(path)
    if st.f_bavail * st.f_frsize >= NEARLY_FULL:
        return
    try:
        subprocess.run(["btrfs", "subvolume", "sync", str(path)], capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return
