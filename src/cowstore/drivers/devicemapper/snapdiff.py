"""Changes of a devicemapper snapshot against its origin, read without writing a block.

A snapshot is a copy of its parent, block for block, so every inode it holds has a
ctime older than the snapshot: the snapshot's time and parent are a note on its lock
file (`copied`), and the changes against that parent compare only what is newer. Both
trees are mounted read-only without their journal (unless mounted already), so looking
at them writes nothing and unmounting them has nothing to flush. A commit mounts each
view once: the changes are found, checked and written as a tar in one pass
(`checked_diff`), where it once took three (size, changes, then the tar).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from cowstore.archive import changes_dirs, export_changes
from cowstore.archive.changes import Change, changes_size
from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.refcount import MountRefs
from cowstore.errors import LayerNotFound
from cowstore.host import loop
from cowstore.host.mounts import MS_RDONLY, device_mount, mount, umount

if TYPE_CHECKING:
    from cowstore.drivers.devicemapper.driver import DeviceMapperDriver


@contextlib.contextmanager
def read_only_view(driver: DeviceMapperDriver, id: str) -> Iterator[pathlib.Path]:
    """Layer `id`'s tree mounted read-only and without its journal, on a private mount point.

    Under the layer's lock, so no `get` attaches a read-write mount to the read-only
    loop device meanwhile; a layer already mounted is simply used as it is.
    """
    info = driver.devices.info(check_id(id))
    if info is None or info.get("deleted"):
        raise LayerNotFound(f"devmapper: Unknown device {id}")
    with driver.refs.locked(id) as ref:
        inside = "" if info.get("root_layout") else "rootfs"
        if ref.value() > 0 or device_mount(driver.home / "mnt" / id) is not None:
            yield driver.home / "mnt" / id / inside
            return
        target = driver.home / "mnt" / f".view-{id}"
        target.mkdir(mode=0o700, exist_ok=True)
        path = driver.devices.activate(id, info["device_id"])
        # Under the lock and unmounted: only an exported layer has a loop device on its file,
        # which the view shares and leaves to the export, attached and active.
        exported = driver.exports.value(id) is not None
        device = None
        try:
            with loop.attached(path, direct_io=True, read_only=True, reuse=exported) as device:
                mount(
                    device,
                    target,
                    driver.opts.fs,
                    MS_RDONLY,
                    "noload" if driver.opts.fs == "ext4" else "norecovery,nouuid",
                )
            try:
                yield target / inside
            finally:
                umount(target, 0)
        finally:
            if not exported:
                driver.devices.deactivate(id, device=device)
            target.rmdir()


def copied_before(refs: MountRefs, id: str, parent: str | None) -> int | None:
    """When snapshot `id` was taken of `parent` (ns), if it was; None otherwise."""
    note = refs.note(id, "copied")
    if parent is None or note is None:
        return None
    stamp, _, origin = note.partition(" ")
    return int(stamp) if origin == parent else None


@contextlib.contextmanager
def snapshot_changes(
    driver: DeviceMapperDriver, id: str, parent: str, stamp: int
) -> Iterator[tuple[pathlib.Path, list[Change]]]:
    """Both trees read-only (nothing written, nothing to flush at unmount) and the changes."""
    with read_only_view(driver, id) as root, read_only_view(driver, parent) as view:
        yield root, changes_dirs(root, view, copied_before=stamp)


def write_diff(
    driver: DeviceMapperDriver,
    id: str,
    parent: str,
    stamp: int,
    check: Callable[[list[Change], int], None] | None,
    out: BinaryIO,
) -> None:
    """The tar of the changes into `out`, from the views they were found on; `check`, if
    given, sees the changes and their size first and raises to refuse them."""
    with snapshot_changes(driver, id, parent, stamp) as (root, found):
        if check is not None:
            check(found, changes_size(root, found))
        export_changes(root, found, out)
