"""The device set: which thin device holds which layer, kept as Docker's devmapper keeps it.

Under `metadata/`: one JSON file per layer (`base` for the base device) with its
device id and size, `deviceset-metadata` with the next free device id and the base
filesystem's facts, and `transaction-metadata` while a device create or delete is
under way. Each such change runs as Docker runs it: record the open transaction,
send the pool its message, write the layer's file, then close the transaction in
the pool; a transaction the pool never closed is rolled back at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

from cowstore.drivers.common.ids import check_id
from cowstore.drivers.devicemapper.thinpool.errors import DeviceExists, DeviceNotFound
from cowstore.host import loop
from cowstore.host.service import ServiceClient

BASE = "base"
_DEVICESET = "deviceset-metadata"
_TRANSACTION = "transaction-metadata"
_MAX_DEVICE_ID = 0xFFFFFF


def _write_json(path: pathlib.Path, value: dict[str, Any], *, durable: bool = True) -> None:
    """Write, fsync and rename, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as out:
        json.dump(value, out)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


class DeviceSet:
    """Layer ids to thin devices of one pool, changed through the pool's block server."""

    def __init__(self, home: pathlib.Path, client: ServiceClient, devices_dir: pathlib.Path) -> None:
        self.dir = home / "metadata"
        self.client = client
        self.devices_dir = devices_dir
        st = os.stat(home)
        major, minor = os.major(st.st_dev), os.minor(st.st_dev)
        self.prefix = f"cowstore-{major}:{minor}-{st.st_ino}"

    def _path(self, id: str) -> pathlib.Path:
        return self.dir / (id if id == BASE else check_id(id))

    def info(self, id: str) -> dict[str, Any] | None:
        """The layer's record (device_id, size, initialized), None if it has no device."""
        try:
            record: dict[str, Any] = json.loads(self._path(id).read_text())
        except FileNotFoundError:
            return None
        return record

    def facts(self) -> dict[str, Any]:
        """`deviceset-metadata`: next device id, base device UUID and filesystem."""
        try:
            facts: dict[str, Any] = json.loads((self.dir / _DEVICESET).read_text())
        except FileNotFoundError:
            return {"next_device_id": 1}
        return facts

    def update_facts(self, **values: Any) -> None:
        _write_json(self.dir / _DEVICESET, {**self.facts(), **values})

    def mark_initialized(self, id: str) -> None:
        _write_json(self._path(id), {**(self.info(id) or {}), "initialized": True})

    def update(self, id: str, **values: Any) -> None:
        """Add or change fields of the layer's record."""
        _write_json(self._path(id), {**(self.info(id) or {}), **values})

    def device_name(self, id: str) -> str:
        """The name the device is active as (Docker: `docker-<dev>:<ino>-<id>`)."""
        return f"{self.prefix}-{id}"

    def layer_ids(self) -> list[str]:
        """Every layer that has a device (not the base device)."""
        return sorted(
            p.name
            for p in self.dir.iterdir()
            if not p.name.startswith(".") and p.name not in (BASE, _DEVICESET, _TRANSACTION)
        )

    def layers_by_device(self) -> dict[int, str]:
        """Device id -> layer id (the base device included), for `dmsetup ls`."""
        found = {}
        for name in [*self.layer_ids(), BASE]:
            record = self.info(name)
            if record is not None:
                found[record["device_id"]] = name
        return found

    # ---- transactions --------------------------------------------------------------

    def rollback(self) -> None:
        """Undo a create/delete whose pool transaction never closed (Docker's rollback)."""
        path = self.dir / _TRANSACTION
        try:
            txn = json.loads(path.read_text())
        except FileNotFoundError:
            return
        if txn["open_transaction_id"] > self.client.call("status")["transaction_id"]:
            with contextlib.suppress(DeviceNotFound):
                self.client.call("delete", id=txn["device_id"])
            with contextlib.suppress(FileNotFoundError):
                self._path(txn["device_hash"]).unlink()
        path.unlink()

    def _open(self, layer: str, device_id: int, op: str, **args: Any) -> int:
        """Record the open transaction, then send the pool its message; returns the old id."""
        current: int = self.client.call("status")["transaction_id"]
        _write_json(
            self.dir / _TRANSACTION, {"open_transaction_id": current + 1, "device_hash": layer, "device_id": device_id}
        )
        self.client.call(op, **args)
        return current

    def _close(self, current: int) -> None:
        self.client.call("set_transaction_id", old=current, new=current + 1)
        (self.dir / _TRANSACTION).unlink()

    def create(self, id: str, origin: int | None, size: int, *, grow: bool = False, **extra: Any) -> int:
        """A new thin device (origin None) or a snapshot of device `origin`; returns its id.

        A snapshot has its origin's size unless `grow` (then `size`, larger): the pool is
        asked to resize only then, as each message is a metadata commit of its own.
        `extra` fields go into the layer's record with the rest, in the same write.
        """
        facts = self.facts()
        device_id = facts["next_device_id"]
        while True:
            try:
                if origin is None:
                    current = self._open(id, device_id, "create_thin", id=device_id, size=size)
                else:
                    current = self._open(id, device_id, "create_snap", id=device_id, origin=origin)
                break
            except DeviceExists:
                device_id = (device_id + 1) & _MAX_DEVICE_ID
        if origin is not None and grow:
            self.client.call("set_device_size", id=device_id, size=size)
        _write_json(
            self._path(id),
            {
                "device_id": device_id,
                "size": size,
                "transaction_id": current + 1,
                "initialized": origin is not None,
                "deleted": False,
                **extra,
            },
        )
        # Only a hint (a taken id is skipped, above): not worth an fsync per device.
        _write_json(self.dir / _DEVICESET, {**facts, "next_device_id": (device_id + 1) & _MAX_DEVICE_ID}, durable=False)
        self._close(current)
        return device_id

    def delete(self, id: str, device_id: int) -> None:
        self.deactivate(id)
        current = self._open(id, device_id, "delete", id=device_id)
        with contextlib.suppress(FileNotFoundError):
            self._path(id).unlink()
        self._close(current)

    # ---- activation ------------------------------------------------------------------

    def activate(self, id: str, device_id: int) -> str:
        """Expose the thin device as a file of the server's mount; returns its path.

        `loop.attached` turns the file into a block device (direct I/O, so pages are
        not cached twice); the loop device goes away with its last user.
        """
        path: str = self.client.call("activate", id=device_id, name=self.device_name(id))
        return path

    def deactivate(self, id: str, *, device: str | None = None) -> None:
        """Take the device file away, detaching the loop device still attached to it.

        A caller that attached `device` with autoclear and has let go of it (unmounted)
        names it: only that one can still be attached, and the search through every
        loop device of the host is skipped.
        """
        path = self.devices_dir / self.device_name(id)
        if device is not None:
            if loop.backing_file(device) == os.path.realpath(path):
                loop.detach_device(device)
        elif self.client.alive() and path.exists():
            loop.detach(path)
        self.client.call("deactivate", name=self.device_name(id))
