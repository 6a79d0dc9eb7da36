"""devicemapper layers mounted by another program (containerd), as block devices.

containerd's own devmapper snapshotter returns its dm device and mounts it itself; here
a thin device is a file of the block server, so the layer is offered as a loop device
over that file, attached without autoclear when asked for and kept, across processes
(`ExportMarks`), until released. Such layers keep their files at the filesystem's root
(`root_layout`), where a mount of the device shows them.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from cowstore.drivers.common.ids import check_id
from cowstore.drivers.driver import MountSpec
from cowstore.errors import LayerNotFound, NotSupported
from cowstore.host import loop
from cowstore.host.mounts import is_mountpoint, mount_table

if TYPE_CHECKING:
    from cowstore.drivers.devicemapper.driver import DeviceMapperDriver


def mounts(driver: DeviceMapperDriver, id: str, *, readonly: bool) -> list[MountSpec]:
    """The thin device as a block device, like containerd's devmapper snapshotter gives
    its dm device: a loop device over the device file, attached without autoclear and
    kept until `release_external` (containerd mounts it whenever it likes)."""
    info = driver.devices.info(check_id(id))
    if info is None or info.get("deleted"):
        raise LayerNotFound(f"devmapper: Unknown device {id}")
    if not info.get("root_layout"):
        _to_root_layout(driver, id)
    with driver.refs.locked(id):
        path = os.path.realpath(driver.devices.activate(id, info["device_id"]))
        device = driver.exports.value(id)
        if not device or loop.backing_file(device) != path:
            device = loop.keep_attached(path, direct_io=True)
            driver.exports.mark(id, device)
    options = [*driver.opts.mount_opts, "ro" if readonly else "rw"]
    if driver.opts.fs == "xfs":
        options.insert(0, "nouuid")
    return [MountSpec(driver.opts.fs, device, tuple(options))]


def _to_root_layout(driver: DeviceMapperDriver, id: str) -> None:
    """Make the filesystem's root the layer's root, for a layer that is still empty.

    Docker's layout keeps a layer in `rootfs/` of its filesystem, but a mount that
    containerd makes of the block device shows the filesystem's root. A layer
    with no content yet (a fresh snapshot of the base device) drops `rootfs/`,
    `id` and `lost+found` and is recorded with `root_layout`, which its children
    inherit; a layer holding data in Docker's layout cannot be mounted that way.
    """
    root = driver.get(id).parent
    try:
        entries = set(os.listdir(root))
        if not entries <= {"rootfs", "id", "lost+found"} or any((root / "rootfs").glob("*")):
            raise NotSupported(
                f"devmapper: layer {id} holds data in Docker's layout (rootfs/): only an empty layer "
                "can be mounted by another program"
            )
        for name in ("rootfs", "lost+found"):
            with contextlib.suppress(FileNotFoundError):
                (root / name).rmdir()
        with contextlib.suppress(FileNotFoundError):
            (root / "id").unlink()
        os.chmod(root, 0o755)
    finally:
        driver.put(id)
    driver.devices.update(id, root_layout=True)


def release(driver: DeviceMapperDriver, id: str) -> None:
    """Detach what `mounts` kept for `id`, and deactivate the device unless it is mounted."""
    with driver.refs.locked(check_id(id)):
        if unexport(driver, id) and not is_mountpoint(driver.home / "mnt" / id):
            driver.devices.deactivate(id)


def unexport(driver: DeviceMapperDriver, id: str) -> bool:
    """Detach the exported loop device (lock of `id` held); True when no loop device is
    left on the device file. While containerd still has it mounted, the kernel only
    marks it to go with its last user; what was written through that mount is
    flushed first, so a snapshot taken next sees it."""
    device = driver.exports.value(id)
    path = os.path.realpath(driver.devices.devices_dir / driver.devices.device_name(id))
    if device is None:
        return loop.find(path) is None
    if device and loop.backing_file(device) == path:
        if any(row.source == device for row in mount_table()):
            os.sync()
        loop.detach(path, wait=0.5)
    driver.exports.clear(id)
    return loop.find(path) is None
