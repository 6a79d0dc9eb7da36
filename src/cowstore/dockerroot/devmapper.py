"""Docker's devicemapper storage, read through the devicemapper package's kernel-pool reader.

Layout under `devicemapper/`: the pool's `devicemapper/{data,metadata}` loop files in
the kernel's format (or, for a pool Docker was given as block devices, those devices:
`PoolDevices`), and Docker's own JSON per layer in `metadata/<id>` (`device_id`,
`size`, `deleted`), `metadata/base` for the base device and `metadata/deviceset-metadata`
(`BaseDeviceFilesystem`). Each layer's thin device is mounted read-only when its tree
is needed, and the layer's files are under `rootfs/` there, as Docker mounts them.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cowstore.dockerroot.layout import BadObject, DockerRoot, read_bytes, storage_id
from cowstore.dockerroot.storage import FullCopies
from cowstore.errors import NotFound, NotSupported
from cowstore.host import fsutil

if TYPE_CHECKING:
    from cowstore.drivers.devicemapper import KernelPool

_NOT_DEVICES = ("deviceset-metadata", "transaction-metadata")


@dataclass(frozen=True)
class PoolDevices:
    """Where the pool is when it is not in the data root's loop files: Docker's direct-lvm
    setups (`dm.thinpooldev`, `dm.metadatadev`/`dm.datadev`) keep it on block devices,
    or on images of them copied off the disk."""

    metadata: pathlib.Path
    data: pathlib.Path


class DeviceMapper(FullCopies):
    """Thin devices of a kernel-format pool, each a complete tree once mounted read-only."""

    def __init__(self, root: DockerRoot, devices: PoolDevices | None = None) -> None:
        super().__init__(root)
        self.devices = devices
        self.meta_dir = self._dir("metadata")
        self.mounts = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-dm-mnt-"))
        self._pool: KernelPool | None = None

    def _record(self, name: str) -> dict[str, Any]:
        try:
            record = json.loads(read_bytes(self.meta_dir / name))
        except NotFound:
            raise BadObject(f"device {name} has no metadata/{name} in the devicemapper storage") from None
        except ValueError as exc:
            raise BadObject(f"metadata/{name} is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("device_id"), int):
            raise BadObject(f"metadata/{name} has no device_id")
        return record

    def _filesystem(self) -> str | None:
        with contextlib.suppress(NotFound, ValueError):
            value = json.loads(read_bytes(self.meta_dir / "deviceset-metadata")).get("BaseDeviceFilesystem")
            if value in ("ext4", "xfs"):
                return str(value)
        return None

    def _open(self) -> KernelPool:
        if self._pool is None:
            try:
                from cowstore.drivers.devicemapper import KernelPool as Pool
            except ModuleNotFoundError:
                raise NotSupported("devicemapper is not part of this build") from None
            sizes = {}
            for entry in sorted(self.meta_dir.iterdir()):
                if entry.name.startswith(".") or entry.name in _NOT_DEVICES:
                    continue
                with contextlib.suppress(BadObject):
                    record = self._record(entry.name)
                    sizes[record["device_id"]] = int(record.get("size") or 0)
            devices = self.devices or PoolDevices(
                self.home / "devicemapper" / "metadata", self.home / "devicemapper" / "data"
            )
            for path in (devices.metadata, devices.data):
                if not path.exists():
                    raise BadObject(
                        f"the thin pool's {path.name} is missing: for a pool on block devices, "
                        "give them with --dm-metadatadev and --dm-datadev"
                    )
            self._pool = Pool(devices.metadata, devices.data, sizes=sizes)
        return self._pool

    @contextlib.contextmanager
    def tree(self, id: str) -> Iterator[pathlib.Path]:
        record = self._record(storage_id(id, "device"))
        if record.get("deleted"):
            raise BadObject(f"device {id} is marked deleted")
        target = self.mounts / id
        target.mkdir()
        try:
            with self._open().mounted(record["device_id"], target, self._filesystem()) as mounted:
                yield mounted / "rootfs" if (mounted / "rootfs").is_dir() else mounted
        finally:
            target.rmdir()

    def close(self) -> None:
        try:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        finally:
            fsutil.remove_tree(self.mounts)
