"""devicemapper: every layer is a thin device of one pool, snapshotted block by block.

The kernel here has no device-mapper, so the pool is cowstore's own
(`thinpool`), served by a block server (`server`) whose device files become loop
devices. Everything above that follows Docker's devmapper driver: the base device
is formatted once and every parentless layer is a snapshot of it, each layer a
snapshot of its parent; a layer is mounted at `mnt/<id>` and its root is
`mnt/<id>/rootfs`; every device create/delete is a transaction recorded in
`metadata/transaction-metadata` and rolled back at start if the pool never got it.
Diffs are naive (mount and compare), as in Docker.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.options import parse_bool
from cowstore.drivers.common.refcount import MountRefs
from cowstore.drivers.devicemapper import server
from cowstore.drivers.devicemapper.thinpool.errors import DeviceExists, DeviceNotFound
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import InvalidOption, LayerExists, LayerNotFound, MountError, NotSupported, Unavailable
from cowstore.host import fsutil, loop
from cowstore.host.mounts import is_mountpoint, mount, umount
from cowstore.units import human_size, parse_size

BASE = "base"
_DEFAULTS = {"dm.basesize": "10G", "dm.loopdatasize": "100G", "dm.loopmetadatasize": "2G", "dm.fs": "ext4",
             "dm.blocksize": "64K", "dm.min_free_space": "10%", "dm.no_space_policy": "error",
             "dm.blkdiscard": "true", "dm.server_cgroup": "/sys/fs/cgroup/memory/cowstore-thinpool"}
_MULTI = ("dm.mkfsarg", "dm.mountopt")
_META_BLOCK = 4096  # the pool's metadata block size
_BOOL_FALSE_ONLY = ("dm.use_deferred_removal", "dm.use_deferred_deletion", "dm.override_udev_sync_check")


@dataclass(frozen=True)
class PoolUsage:
    """Bytes of the thin pool: data blocks in use and in all, metadata blocks likewise."""

    data_used: int
    data_total: int
    metadata_used: int
    metadata_total: int
    block_size: int  # of a data block, the unit of allocation and copy-on-write


def _write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    """Write, fsync and rename, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as out:
        json.dump(value, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class DeviceMapperDriver(NaiveDiffDriver):
    name = "devicemapper"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        self.opts = self._parse_options(options)
        self._check_host()
        for sub in ("devicemapper", "metadata", "mnt"):
            (home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.refs = MountRefs(home)
        st = os.stat(home)
        major, minor = (st.st_dev >> 8) & 0xFFF, (st.st_dev & 0xFF) | ((st.st_dev >> 12) & 0xFFF00)
        self.prefix = f"cowstore-{major}:{minor}-{st.st_ino}"
        self.data_file, self.meta_file = self._backing_files()
        self.devices_dir = home / "devicemapper" / "mapper"
        self.client = server.start_server(
            metadata=self.meta_file, data=self.data_file, mountpoint=self.devices_dir,
            socket=home / "devicemapper" / "control.sock", log=home / "devicemapper" / "server.log",
            block_size=self.opts["blocksize"], no_space_policy=self.opts["dm.no_space_policy"],
            min_free_pct=self.opts["min_free"], cgroup=self.opts["dm.server_cgroup"],
            discard_passdown=self.opts["blkdiscard"])
        try:
            self._rollback_transaction()
            self._setup_base()
        except BaseException:
            server.stop_server(self.client, self.devices_dir)
            raise

    # ----------------------------------------------------------------- options

    def _parse_options(self, options: Mapping[str, str]) -> dict[str, Any]:
        opts: dict[str, Any] = dict(_DEFAULTS)
        opts.update({key: [] for key in _MULTI})
        for raw_key, value in options.items():
            key = raw_key.lower()
            if key in _MULTI:
                opts[key].extend(v for v in value.split("\n") if v)
            elif key in _BOOL_FALSE_ONLY:
                if value.lower() in ("true", "1"):
                    raise NotSupported(f"devmapper: {key} needs kernel device-mapper, which this pool does not use")
            elif key in _DEFAULTS or key in ("dm.datadev", "dm.metadatadev"):
                opts[key] = value
            else:
                raise InvalidOption(f"devmapper: Unknown option {raw_key}")
        if opts["dm.fs"] not in ("ext4", "xfs"):
            raise InvalidOption(f"devmapper: Unsupported filesystem {opts['dm.fs']}")
        pct = opts["dm.min_free_space"]
        if not pct.endswith("%") or not pct[:-1].isdigit() or not 0 <= int(pct[:-1]) <= 99:
            raise InvalidOption(f"devmapper: Invalid min free space value {pct}: use a percentage 0% to 99%")
        if opts["dm.no_space_policy"] not in ("error", "queue"):
            raise InvalidOption("devmapper: dm.no_space_policy must be error or queue")
        opts["blocksize"] = parse_size(opts["dm.blocksize"])
        opts["basesize"] = parse_size(opts["dm.basesize"])
        opts["datasize"] = parse_size(opts["dm.loopdatasize"])
        opts["metasize"] = parse_size(opts["dm.loopmetadatasize"])
        opts["blkdiscard"] = parse_bool("devmapper", "dm.blkdiscard", opts["dm.blkdiscard"])
        if opts["blocksize"] % 65536 or not 65536 <= opts["blocksize"] <= 1 << 30:
            raise InvalidOption("devmapper: dm.blocksize must be a multiple of 64K up to 1G")
        opts["min_free"] = int(pct[:-1])
        return opts

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise NotSupported("devicemapper needs root (loop devices and mounts)")
        if not os.path.exists("/dev/fuse"):
            raise NotSupported("devicemapper needs /dev/fuse to serve thin devices")
        for tool in ("losetup", f"mkfs.{self.opts['dm.fs']}"):
            if shutil.which(tool) is None:
                raise NotSupported(f"devicemapper needs {tool}")

    def _backing_files(self) -> tuple[pathlib.Path, pathlib.Path]:
        """dm.datadev / dm.metadatadev, or sparse files grown (never shrunk) to the loop sizes."""
        files = []
        for dev_key, name, size in (("dm.datadev", "data", self.opts["datasize"]),
                                    ("dm.metadatadev", "metadata", self.opts["metasize"])):
            if self.opts.get(dev_key):
                files.append(pathlib.Path(self.opts[dev_key]))
                continue
            path = self.home / "devicemapper" / name
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
            files.append(path)
        return files[0], files[1]

    # -------------------------------------------------------------- metadata

    def _meta_path(self, id: str) -> pathlib.Path:
        return self.home / "metadata" / (id if id == BASE else check_id(id))

    def _info(self, id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._meta_path(id).read_text())
        except FileNotFoundError:
            return None

    def _deviceset(self) -> dict[str, Any]:
        try:
            return json.loads((self.home / "metadata" / "deviceset-metadata").read_text())
        except FileNotFoundError:
            return {"next_device_id": 1}

    def _device_name(self, id: str) -> str:
        return f"{self.prefix}-{id}"

    def _rollback_transaction(self) -> None:
        """Undo a create/delete whose pool transaction never closed (Docker's rollback)."""
        path = self.home / "metadata" / "transaction-metadata"
        try:
            txn = json.loads(path.read_text())
        except FileNotFoundError:
            return
        if txn["open_transaction_id"] > self.client.call("status")["transaction_id"]:
            with contextlib.suppress(DeviceNotFound):
                self.client.call("delete", id=txn["device_id"])
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(txn["device_hash"]).unlink()
        path.unlink()

    def _transaction(self, layer: str, device_id: int, op: str, **args: Any) -> int:
        """Run one pool operation as Docker does: open, message, metadata, close."""
        current = self.client.call("status")["transaction_id"]
        _write_json(self.home / "metadata" / "transaction-metadata",
                    {"open_transaction_id": current + 1, "device_hash": layer, "device_id": device_id})
        self.client.call(op, **args)
        return current

    def _close_transaction(self, current: int) -> None:
        self.client.call("set_transaction_id", old=current, new=current + 1)
        (self.home / "metadata" / "transaction-metadata").unlink()

    def _new_device(self, id: str, origin: int | None, size: int) -> int:
        deviceset = self._deviceset()
        device_id = deviceset["next_device_id"]
        while True:
            try:
                if origin is None:
                    current = self._transaction(id, device_id, "create_thin", id=device_id, size=size)
                else:
                    current = self._transaction(id, device_id, "create_snap", id=device_id, origin=origin)
                break
            except DeviceExists:
                device_id = (device_id + 1) & 0xFFFFFF
        if origin is not None and size:
            self.client.call("set_device_size", id=device_id, size=size)
        _write_json(self._meta_path(id), {"device_id": device_id, "size": size, "transaction_id": current + 1,
                                          "initialized": origin is not None, "deleted": False})
        deviceset["next_device_id"] = (device_id + 1) & 0xFFFFFF
        _write_json(self.home / "metadata" / "deviceset-metadata", deviceset)
        self._close_transaction(current)
        return device_id

    # ------------------------------------------------------------------ base

    def _setup_base(self) -> None:
        info = self._info(BASE)
        if info is not None and info.get("initialized"):
            if self.opts["basesize"] < info["size"]:
                raise InvalidOption(f"devmapper: Base device size cannot be smaller than {human_size(info['size'])}")
            return
        if info is not None:  # crashed while formatting: start again
            self._delete_device(BASE, info["device_id"])
        device_id = self._new_device(BASE, None, self.opts["basesize"])
        try:
            with loop.attached(self._activate(BASE, device_id), direct_io=True) as device:
                uuid = self._format_base(device)
        finally:
            self._deactivate(BASE)
        info = self._info(BASE) or {}
        _write_json(self._meta_path(BASE), {**info, "initialized": True})
        deviceset = self._deviceset()
        deviceset.update(BaseDeviceUUID=uuid, BaseDeviceFilesystem=self.opts["dm.fs"])
        _write_json(self.home / "metadata" / "deviceset-metadata", deviceset)

    def _format_base(self, device: str) -> str:
        """Make the base filesystem with an empty `rootfs/`; returns its UUID."""
        fs = self.opts["dm.fs"]
        if fs == "ext4":
            args = ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]
        else:
            args = ["mkfs.xfs", "-q", "-f", "-K"]
        self._run([*args, *self.opts["dm.mkfsarg"], device])
        if fs == "ext4":
            self._run(["tune2fs", "-c", "-1", "-i", "0", device])
        target = self.home / "mnt" / BASE
        target.mkdir(exist_ok=True)
        mount(device, target, fs, 0, "nouuid" if fs == "xfs" else None)
        try:
            (target / "rootfs").mkdir(mode=0o755, exist_ok=True)
        finally:
            umount(target, 0)
            target.rmdir()
        return self._run(["blkid", "-s", "UUID", "-o", "value", device]).strip()

    @staticmethod
    def _run(args: list[str]) -> str:
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise Unavailable(f"devmapper: {' '.join(args)} failed: {result.stderr.strip()[-300:]}")
        return result.stdout

    # ------------------------------------------------------- device activation

    def _activate(self, id: str, device_id: int) -> str:
        """Expose the thin device as a file of the server's mount; returns its path.

        `loop.attached` turns the file into a block device (direct I/O, so pages are
        not cached twice); the device goes away with its last user.
        """
        path: str = self.client.call("activate", id=device_id, name=self._device_name(id))
        return path

    def _deactivate(self, id: str) -> None:
        path = self.devices_dir / self._device_name(id)
        if self.client.alive() and path.exists():
            loop.detach(path)
        self.client.call("deactivate", name=self._device_name(id))

    def _delete_device(self, id: str, device_id: int) -> None:
        self._deactivate(id)
        current = self._transaction(id, device_id, "delete", id=device_id)
        with contextlib.suppress(FileNotFoundError):
            self._meta_path(id).unlink()
        self._close_transaction(current)

    # -------------------------------------------------------------- layers

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self.create_rw(id, parent, storage_opts=storage_opts)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if id == BASE or self._info(id) is not None:
            raise LayerExists(f"devmapper: device {id} already exists")
        origin = self._info(parent if parent is not None else BASE)
        if origin is None or origin.get("deleted"):
            raise LayerNotFound(f"devmapper: parent layer {parent} does not exist")
        size = origin["size"]
        for key, value in (storage_opts or {}).items():
            if key.lower() != "size":
                raise InvalidOption(f"devmapper: Unknown option {key}")
            size = parse_size(value)
            if size < origin["size"]:
                # A snapshot can only grow its filesystem (Docker's text).
                raise InvalidOption(f"devmapper: Container size cannot be smaller than {human_size(origin['size'])}")
        self._new_device(id, origin["device_id"], size)
        if size > origin["size"]:
            self._grow_fs(id)

    def _grow_fs(self, id: str) -> None:
        info = self._info(id)
        if info is None:
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        try:
            with loop.attached(self._activate(id, info["device_id"]), direct_io=True) as device:
                self._grow(id, device)
        finally:
            self._deactivate(id)

    def _grow(self, id: str, device: str) -> None:
        if self.opts["dm.fs"] == "ext4":
            self._run(["e2fsck", "-f", "-p", device])
            self._run(["resize2fs", device])
            return
        target = self.home / "mnt" / f".grow-{id}"
        target.mkdir(exist_ok=True)
        mount(device, target, "xfs", 0, "nouuid")
        try:
            self._run(["xfs_growfs", str(target)])
        finally:
            umount(target)
            target.rmdir()

    def remove(self, id: str) -> None:
        info = self._info(id)
        if info is None:
            return
        with self.refs.locked(id) as ref:
            mnt = self.home / "mnt" / id
            if is_mountpoint(mnt):
                umount(mnt)
            ref.reset()
            self._delete_device(id, info["device_id"])
            with contextlib.suppress(FileNotFoundError):
                fsutil.remove_tree(mnt)
        self.refs.forget(id)

    def get(self, id: str) -> pathlib.Path:
        info = self._info(check_id(id))
        if info is None or info.get("deleted"):
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        mnt = self.home / "mnt" / id
        rootfs = mnt / "rootfs"
        with self.refs.locked(id) as ref:
            if ref.increment(is_mountpoint(mnt)) > 1:
                return rootfs
            try:
                mnt.mkdir(mode=0o755, exist_ok=True)
                options = list(self.opts["dm.mountopt"])
                if self.opts["dm.fs"] == "xfs":
                    options.insert(0, "nouuid")
                with loop.attached(self._activate(id, info["device_id"]), direct_io=True) as device:
                    mount(device, mnt, self.opts["dm.fs"], 0, ",".join(options) or None)
            except BaseException:
                ref.decrement(False)
                self._deactivate(id)
                raise
            rootfs.mkdir(mode=0o755, exist_ok=True)
            id_file = mnt / "id"
            if not id_file.exists():
                id_file.write_text(id)
                id_file.chmod(0o600)
            return rootfs

    def put(self, id: str) -> None:
        info = self._info(check_id(id))
        if info is None:
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        mnt = self.home / "mnt" / id
        with self.refs.locked(id) as ref:
            if ref.decrement(is_mountpoint(mnt)) > 0:
                return
            try:
                umount(mnt)
            except MountError:
                ref.increment(True)
                raise
            self._deactivate(id)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def ids(self) -> list[str]:
        return sorted(
            p.name for p in (self.home / "metadata").iterdir()
            if not p.name.startswith(".") and p.name not in (BASE, "deviceset-metadata", "transaction-metadata")
        )

    def exists(self, id: str) -> bool:
        return id != BASE and self._info(check_id(id)) is not None

    def metadata(self, id: str) -> dict[str, str]:
        info = self._info(check_id(id))
        if info is None:
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        return {"DeviceId": str(info["device_id"]), "DeviceSize": str(info["size"]),
                "DeviceName": self._device_name(id)}

    def pool_usage(self) -> PoolUsage:
        """The pool's space in bytes, exact (status() rounds it for people): how much data and
        metadata its blocks hold, e.g. to see that a write allocates and a discard frees."""
        st = self.client.call("status")
        bs = st["data_block_size"]
        return PoolUsage(data_used=st["used_data_blocks"] * bs, data_total=st["total_data_blocks"] * bs,
                         metadata_used=st["used_meta_blocks"] * _META_BLOCK,
                         metadata_total=st["total_meta_blocks"] * _META_BLOCK, block_size=bs)

    def status(self) -> list[tuple[str, str]]:
        usage = self.pool_usage()
        bs, data_total, data_used = usage.block_size, usage.data_total, usage.data_used
        meta_total, meta_used = usage.metadata_total, usage.metadata_used

        def available(total: int, used: int, path: pathlib.Path) -> int:
            free = total - used
            if path.is_file():
                vfs = os.statvfs(path)
                free = min(free, vfs.f_bfree * vfs.f_frsize)
            return free

        loop_files = not self.opts.get("dm.datadev")
        base = self._info(BASE) or {}
        rows = [
            ("Pool Name", f"{self.prefix}-pool"),
            ("Pool Blocksize", human_size(bs)),
            ("Base Device Size", human_size(base.get("size", 0))),
            ("Backing Filesystem", self._deviceset().get("BaseDeviceFilesystem", self.opts["dm.fs"])),
            ("Udev Sync Supported", "false"),
            ("Data file", str(self.data_file)),
            ("Metadata file", str(self.meta_file)),
        ]
        if loop_files:
            rows += [("Data loop file", str(self.data_file)), ("Metadata loop file", str(self.meta_file))]
        rows += [
            ("Data Space Used", human_size(data_used)),
            ("Data Space Total", human_size(data_total)),
            ("Data Space Available", human_size(available(data_total, data_used, self.data_file))),
            ("Metadata Space Used", human_size(meta_used)),
            ("Metadata Space Total", human_size(meta_total)),
            ("Metadata Space Available", human_size(available(meta_total, meta_used, self.meta_file))),
            ("Thin Pool Minimum Free Space", human_size(data_total // bs * self.opts["min_free"] // 100 * bs)),
            ("Deferred Removal Enabled", "false"),
            ("Deferred Deletion Enabled", "false"),
            ("Deferred Deleted Device Count", "0"),
        ]
        return rows

    def warnings(self) -> list[str]:
        """The `docker info` warning for loop-file pools."""
        if self.opts.get("dm.datadev"):
            return []
        return [
            (
                "WARNING: devicemapper: usage of loopback devices is strongly discouraged for production use.\n"
                "         Use `--storage-opt dm.thinpooldev` to specify a custom block storage device."
            )
        ]

    def list_devices(self) -> list[dict[str, Any]]:
        """`dmsetup ls` for this pool: every thin device with its layer id and activity."""
        by_device = {}
        for path in (self.home / "metadata").iterdir():
            if path.name.startswith(".") or path.name in ("deviceset-metadata", "transaction-metadata"):
                continue
            with contextlib.suppress(ValueError, KeyError, OSError):
                by_device[json.loads(path.read_text())["device_id"]] = path.name
        return [{**dev, "layer": by_device.get(dev["id"])} for dev in self.client.call("list")]

    def dump(self) -> str:
        """The pool metadata as thin_dump XML."""
        return self.client.call("dump")

    def cleanup(self) -> None:
        for mnt in sorted((self.home / "mnt").iterdir()):
            if is_mountpoint(mnt):
                umount(mnt)
            with self.refs.locked(mnt.name) as ref:
                ref.reset()
            self._deactivate(mnt.name)
            with contextlib.suppress(OSError):
                mnt.rmdir()
        server.stop_server(self.client, self.devices_dir)
