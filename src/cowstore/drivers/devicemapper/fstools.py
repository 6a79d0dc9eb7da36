"""The filesystem tools run on thin devices (mkfs, tune2fs, blkid, resize2fs, xfs_growfs)."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from cowstore.errors import Unavailable
from cowstore.host import loop
from cowstore.host.mounts import mount, umount

if TYPE_CHECKING:
    from cowstore.drivers.devicemapper.driver import DeviceMapperDriver


def run(args: list[str]) -> str:
    """Run one tool; its failure is Unavailable with the end of what it said."""
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise Unavailable(f"devmapper: {' '.join(args)} failed: {result.stderr.strip()[-300:]}")
    return result.stdout


def grow(driver: DeviceMapperDriver, id: str, device_id: int) -> None:
    """Grow the filesystem of a new snapshot to its device's larger size."""
    try:
        with loop.attached(driver.devices.activate(id, device_id), direct_io=True) as device:
            _grow(driver, id, device)
    finally:
        driver.devices.deactivate(id)


def _grow(driver: DeviceMapperDriver, id: str, device: str) -> None:
    if driver.opts.fs == "ext4":
        run(["e2fsck", "-f", "-p", device])
        run(["resize2fs", device])
        return
    target = driver.home / "mnt" / f".grow-{id}"
    target.mkdir(exist_ok=True)
    mount(device, target, "xfs", 0, "nouuid")
    try:
        run(["xfs_growfs", str(target)])
    finally:
        umount(target)
        target.rmdir()
