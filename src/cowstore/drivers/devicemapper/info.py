"""What `cowstore info` shows of a devicemapper store: Docker's status lines, same names."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

from cowstore.drivers.devicemapper.deviceset import BASE
from cowstore.units import human_size

if TYPE_CHECKING:
    from cowstore.drivers.devicemapper.driver import DeviceMapperDriver


def status(driver: DeviceMapperDriver) -> list[tuple[str, str]]:
    """Docker's `docker info` lines for devicemapper, from the pool's own counters."""
    usage = driver.pool_usage()
    bs, data_total, data_used = usage.block_size, usage.data_total, usage.data_used
    meta_total, meta_used = usage.metadata_total, usage.metadata_used

    def available(total: int, used: int, path: pathlib.Path) -> int:
        free = total - used
        if path.is_file():
            vfs = os.statvfs(path)
            free = min(free, vfs.f_bfree * vfs.f_frsize)
        return free

    loop_files = not driver.opts.data_dev
    base = driver.devices.info(BASE) or {}
    rows = [
        ("Pool Name", f"{driver.devices.prefix}-pool"),
        ("Pool Blocksize", human_size(bs)),
        ("Base Device Size", human_size(base.get("size", 0))),
        ("Backing Filesystem", driver.devices.facts().get("BaseDeviceFilesystem", driver.opts.fs)),
        ("Udev Sync Supported", "false"),
        ("Data file", str(driver.data_file)),
        ("Metadata file", str(driver.meta_file)),
    ]
    if loop_files:
        rows += [("Data loop file", str(driver.data_file)), ("Metadata loop file", str(driver.meta_file))]
    rows += [
        ("Data Space Used", human_size(data_used)),
        ("Data Space Total", human_size(data_total)),
        ("Data Space Available", human_size(available(data_total, data_used, driver.data_file))),
        ("Metadata Space Used", human_size(meta_used)),
        ("Metadata Space Total", human_size(meta_total)),
        ("Metadata Space Available", human_size(available(meta_total, meta_used, driver.meta_file))),
        ("Thin Pool Minimum Free Space", human_size(data_total // bs * driver.opts.min_free_pct // 100 * bs)),
        ("Deferred Removal Enabled", "false"),
        ("Deferred Deletion Enabled", "false"),
        ("Deferred Deleted Device Count", "0"),
    ]
    return rows
