"""The control handler: device requests from the driver and the CLI, on the control socket.

They are what Docker sends to the dm-thin target as messages (create, snapshot,
delete) and dmsetup does with tables (activate, deactivate), plus pool status, dump,
check and shutdown. `host.service.serve_control` answers each request by calling the
matching `op_` method.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from cowstore.drivers.devicemapper.server.devicefs import Devices
from cowstore.drivers.devicemapper.thinpool import xmldump
from cowstore.drivers.devicemapper.thinpool.errors import DeviceBusy
from cowstore.drivers.devicemapper.thinpool.pool import ThinPool
from cowstore.host import fuse

_RELEASE_WAIT = 10.0


class Control:
    """Device management on the pool and the device directory at `mountpoint`."""

    def __init__(self, pool: ThinPool, devices: Devices, ready: threading.Event, mountpoint: str, cgroup: str) -> None:
        self.pool = pool
        self.devices = devices
        self.ready = ready
        self.mountpoint = mountpoint
        self.cgroup = cgroup

    def op_ping(self) -> bool:
        return self.ready.is_set()

    def op_create_thin(self, id: int, size: int) -> None:
        self.pool.create_thin(id, size)

    def op_create_snap(self, id: int, origin: int) -> None:
        self.pool.create_snap(id, origin)

    def op_delete(self, id: int) -> None:
        with self.devices.lock:
            if self.devices.is_active(id):
                raise DeviceBusy(f"thin device {id} is active: deactivate it before deleting it")
            self.pool.delete(id)

    def op_set_device_size(self, id: int, size: int) -> None:
        self.pool.set_device_size(id, size)

    def op_set_transaction_id(self, old: int, new: int) -> None:
        self.pool.set_transaction_id(old, new)

    def op_resize_data(self, size: int) -> None:
        self.pool.resize_data(size)

    def op_activate(self, id: int, name: str) -> str:
        self.pool.device(id)
        self.devices.activate(name, id)
        return os.path.join(self.mountpoint, name)

    def op_deactivate(self, name: str) -> None:
        # The kernel sends RELEASE asynchronously after a loop device lets go of the
        # file, so give a just-detached device a moment before calling it busy.
        deadline = time.monotonic() + _RELEASE_WAIT
        while not self.devices.deactivate(name):
            if time.monotonic() > deadline:
                raise DeviceBusy(f"device {name} is still open (attached to a loop device?)")
            time.sleep(0.01)

    def op_list(self) -> list[dict[str, Any]]:
        active = self.devices.names()
        return [
            {"id": dev.dev_id, "size": dev.size, "mapped_blocks": dev.mapped, "name": active.get(dev.dev_id)}
            for dev in self.pool.devices()
        ]

    def op_usage(self, ids: list[int]) -> list[int]:
        """Data blocks each device of `ids` maps that no earlier one maps (origins come first,
        so a snapshot counts only the blocks it wrote itself)."""
        seen: set[int] = set()
        counts = []
        with self.pool.locked():
            for dev_id in ids:
                blocks = {data for _, data in self.pool.mappings(dev_id)} - seen
                seen |= blocks
                counts.append(len(blocks))
        return counts

    def op_status(self) -> dict[str, Any]:
        status = self.pool.status()
        return {
            **status.__dict__,
            "no_space_policy": self.pool.no_space_policy,
            "min_free_pct": self.pool.min_free_pct,
            "cgroup": self.cgroup,
            "pid": os.getpid(),
        }

    def op_dump(self) -> str:
        return xmldump.dump(self.pool)

    def op_flush(self) -> None:
        self.pool.flush()

    def op_check(self) -> list[str]:
        return self.pool.check()

    def op_shutdown(self) -> None:
        """Commit and unmount once no device is open; the server then exits."""
        busy = self.devices.busy()
        if busy:
            raise DeviceBusy(f"devices still open: {', '.join(busy)}")
        self.pool.flush()
        threading.Thread(target=fuse.unmount, args=(self.mountpoint,), daemon=True).start()
