"""devicemapper: every layer is a thin device of one pool, snapshotted block by block.

The kernel here has no device-mapper, so the pool is cowstore's own
(`thinpool`), served by a block server (`server`) whose device files become loop
devices. Everything above that follows Docker's devmapper driver: the base device
is formatted once and every parentless layer is a snapshot of it, each layer a
snapshot of its parent (`deviceset` records which device holds which layer); a
layer is mounted at `mnt/<id>` and its root is `mnt/<id>/rootfs`. Diffs are naive
(mount and compare), as in Docker, with two shortcuts; and layers that containerd mounts
itself (snapshots) use the filesystem's root instead of `rootfs/` (`root_layout` in their
record), like containerd's own devmapper snapshotter.

The changes of a snapshot against its origin compare only inodes newer than the
snapshot, on read-only journal-less mounts (`snapdiff`).

In the compact layout a mount writes nothing it need not: `noatime` (unless
dm.mountopt says otherwise), and no `mnt/<id>/id` file (Docker writes one per mount).
A container then costs the pool the block its superblock is written to at mount.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from cowstore.archive import export_changes
from cowstore.archive.changes import Change
from cowstore.drivers.common.exports import ExportMarks
from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.refcount import MountRefs
from cowstore.drivers.devicemapper import server, snapdiff
from cowstore.drivers.devicemapper.deviceset import BASE, DeviceSet
from cowstore.drivers.devicemapper.options import backing_files, check_host, parse_options
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import InvalidOption, LayerExists, LayerNotFound, MountError, NotSupported, Unavailable
from cowstore.host import fsutil, loop
from cowstore.host.mounts import MS_NOATIME, is_mountpoint, mount, mount_table, umount
from cowstore.units import human_size, parse_size

_META_BLOCK = 4096  # the pool's metadata block size
# The clock inode times come from (a kernel tick behind a fine reading): CLOCK_REALTIME_COARSE.
_INODE_CLOCK = 5


@dataclass(frozen=True)
class PoolUsage:
    """Bytes of the thin pool: data blocks in use and in all, metadata blocks likewise."""

    data_used: int
    data_total: int
    metadata_used: int
    metadata_total: int
    block_size: int  # of a data block, the unit of allocation and copy-on-write


class DeviceMapperDriver(NaiveDiffDriver):
    name = "devicemapper"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        self.opts = parse_options(self.options)
        if not self.docker_layout and not any("atime" in opt for opt in self.opts.mount_opts):
            self.opts.mount_opts.append("noatime")
        check_host(self.opts)
        for sub in ("devicemapper", "metadata", "mnt"):
            (home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.refs = MountRefs(home)
        self.exports = ExportMarks(home)
        self.data_file, self.meta_file = backing_files(home, self.opts)
        devices_dir = home / "devicemapper" / "mapper"
        self.client = server.start_server(
            metadata=self.meta_file,
            data=self.data_file,
            mountpoint=devices_dir,
            socket=home / "devicemapper" / "control.sock",
            log=home / "devicemapper" / "server.log",
            block_size=self.opts.block_size,
            no_space_policy=self.opts.no_space_policy,
            min_free_pct=self.opts.min_free_pct,
            cgroup=self.opts.server_cgroup,
            discard_passdown=self.opts.blkdiscard,
        )
        self.devices = DeviceSet(home, self.client, devices_dir)
        try:
            self.devices.rollback()
            self._setup_base()
        except BaseException:
            server.stop_server(self.client, devices_dir)
            raise

    # ------------------------------------------------------------------ base

    def _setup_base(self) -> None:
        info = self.devices.info(BASE)
        if info is not None and info.get("initialized"):
            if self.opts.base_size < info["size"]:
                raise InvalidOption(f"devmapper: Base device size cannot be smaller than {human_size(info['size'])}")
            return
        if info is not None:  # crashed while formatting: start again
            self.devices.delete(BASE, info["device_id"])
        device_id = self.devices.create(BASE, None, self.opts.base_size)
        try:
            with loop.attached(self.devices.activate(BASE, device_id), direct_io=True) as device:
                uuid = self._format_base(device)
        finally:
            self.devices.deactivate(BASE)
        self.devices.mark_initialized(BASE)
        self.devices.update_facts(BaseDeviceUUID=uuid, BaseDeviceFilesystem=self.opts.fs)

    def _format_base(self, device: str) -> str:
        """Make the base filesystem with an empty `rootfs/`; returns its UUID."""
        fs = self.opts.fs
        if fs == "ext4":
            args = ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]
        else:
            args = ["mkfs.xfs", "-q", "-f", "-K"]
        self._run([*args, *self.opts.mkfs_args, device])
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

    # -------------------------------------------------------------- layers

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self.create_rw(id, parent, storage_opts=storage_opts)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        check_id(id)
        if id == BASE or self.devices.info(id) is not None:
            raise LayerExists(f"devmapper: device {id} already exists")
        origin = self.devices.info(parent if parent is not None else BASE)
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
        layout = {"root_layout": True} if origin.get("root_layout") else {}
        device_id = self.devices.create(id, origin["device_id"], size, grow=size > origin["size"], **layout)
        if parent is not None:
            with self.refs.locked(id):
                self.refs.set_note(id, "copied", f"{time.clock_gettime_ns(_INODE_CLOCK)} {parent}")
        if size > origin["size"]:
            self._grow_fs(id, device_id)

    def _grow_fs(self, id: str, device_id: int) -> None:
        try:
            with loop.attached(self.devices.activate(id, device_id), direct_io=True) as device:
                self._grow(id, device)
        finally:
            self.devices.deactivate(id)

    def _grow(self, id: str, device: str) -> None:
        if self.opts.fs == "ext4":
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
        info = self.devices.info(id)
        if info is None:
            return
        with self.refs.locked(id) as ref:
            mnt = self.home / "mnt" / id
            if is_mountpoint(mnt):
                umount(mnt)
            ref.reset()
            self._unexport(id)
            self.devices.delete(id, info["device_id"])
            with contextlib.suppress(FileNotFoundError):
                fsutil.remove_tree(mnt)
        self.refs.forget(id)

    def get(self, id: str) -> pathlib.Path:
        info = self.devices.info(check_id(id))
        if info is None or info.get("deleted"):
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        mnt = self.home / "mnt" / id
        root_layout = bool(info.get("root_layout"))
        rootfs = mnt if root_layout else mnt / "rootfs"
        with self.refs.locked(id) as ref:
            if ref.increment(is_mountpoint(mnt)) > 1:
                return rootfs
            try:
                mnt.mkdir(mode=0o755, exist_ok=True)
                options = [opt for opt in self.opts.mount_opts if opt != "noatime"]
                flags = MS_NOATIME if "noatime" in self.opts.mount_opts else 0  # a flag, not fs data
                if self.opts.fs == "xfs":
                    options.insert(0, "nouuid")
                with loop.attached(self.devices.activate(id, info["device_id"]), direct_io=True) as device:
                    mount(device, mnt, self.opts.fs, flags, ",".join(options) or None)
            except BaseException:
                ref.decrement(False)
                self.devices.deactivate(id)
                raise
            if root_layout:
                return rootfs
            rootfs.mkdir(mode=0o755, exist_ok=True)
            id_file = mnt / "id"
            if self.docker_layout and not id_file.exists():
                id_file.write_text(id)
                id_file.chmod(0o600)
            return rootfs

    def put(self, id: str) -> None:
        info = self.devices.info(check_id(id))
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
            if self.exports.value(id) is None:  # else the exported loop device still needs it
                self.devices.deactivate(id)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    # ------------------------------------------------------- external mounter

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """The thin device as a block device, like containerd's devmapper snapshotter gives
        its dm device: a loop device over the device file, attached without autoclear and
        kept until `release_external` (containerd mounts it whenever it likes)."""
        info = self.devices.info(check_id(id))
        if info is None or info.get("deleted"):
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        if not info.get("root_layout"):
            self._to_root_layout(id)
        with self.refs.locked(id):
            path = os.path.realpath(self.devices.activate(id, info["device_id"]))
            device = self.exports.value(id)
            if not device or loop.backing_file(device) != path:
                device = loop.keep_attached(path, direct_io=True)
                self.exports.mark(id, device)
        options = [*self.opts.mount_opts, "ro" if readonly else "rw"]
        if self.opts.fs == "xfs":
            options.insert(0, "nouuid")
        return [MountSpec(self.opts.fs, device, tuple(options))]

    def _to_root_layout(self, id: str) -> None:
        """Make the filesystem's root the layer's root, for a layer that is still empty.

        Docker's layout keeps a layer in `rootfs/` of its filesystem, but a mount that
        containerd makes of the block device shows the filesystem's root. A layer
        with no content yet (a fresh snapshot of the base device) drops `rootfs/`,
        `id` and `lost+found` and is recorded with `root_layout`, which its children
        inherit; a layer holding data in Docker's layout cannot be mounted that way.
        """
        root = self.get(id).parent
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
            self.put(id)
        self.devices.update(id, root_layout=True)

    def release_external(self, id: str) -> None:
        with self.refs.locked(check_id(id)):
            if self._unexport(id) and not is_mountpoint(self.home / "mnt" / id):
                self.devices.deactivate(id)

    def _unexport(self, id: str) -> bool:
        """Detach the exported loop device (lock of `id` held); True when no loop device is
        left on the device file. While containerd still has it mounted, the kernel only
        marks it to go with its last user; what was written through that mount is
        flushed first, so a snapshot taken next sees it."""
        device = self.exports.value(id)
        path = os.path.realpath(self.devices.devices_dir / self.devices.device_name(id))
        if device is None:
            return loop.find(path) is None
        if device and loop.backing_file(device) == path:
            if any(row.source == device for row in mount_table()):
                os.sync()
            loop.detach(path, wait=0.5)
        self.exports.clear(id)
        return loop.find(path) is None

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().changes(id, parent)
        with snapdiff.snapshot_changes(self, id, parent, stamp) as (_, found):
            return found

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().diff(id, parent)
        out = self._spool()
        try:
            with snapdiff.snapshot_changes(self, id, parent, stamp) as (root, found):
                export_changes(root, found, out)
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out

    def ids(self) -> list[str]:
        return self.devices.layer_ids()

    def exists(self, id: str) -> bool:
        return id != BASE and self.devices.info(check_id(id)) is not None

    def metadata(self, id: str) -> dict[str, str]:
        info = self.devices.info(check_id(id))
        if info is None:
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        return {
            "DeviceId": str(info["device_id"]),
            "DeviceSize": str(info["size"]),
            "DeviceName": self.devices.device_name(id),
        }

    def pool_usage(self) -> PoolUsage:
        """The pool's space in bytes, exact (status() rounds it for people): how much data and
        metadata its blocks hold, e.g. to see that a write allocates and a discard frees."""
        st = self.client.call("status")
        bs = st["data_block_size"]
        return PoolUsage(
            data_used=st["used_data_blocks"] * bs,
            data_total=st["total_data_blocks"] * bs,
            metadata_used=st["used_meta_blocks"] * _META_BLOCK,
            metadata_total=st["total_meta_blocks"] * _META_BLOCK,
            block_size=bs,
        )

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

        loop_files = not self.opts.data_dev
        base = self.devices.info(BASE) or {}
        rows = [
            ("Pool Name", f"{self.devices.prefix}-pool"),
            ("Pool Blocksize", human_size(bs)),
            ("Base Device Size", human_size(base.get("size", 0))),
            ("Backing Filesystem", self.devices.facts().get("BaseDeviceFilesystem", self.opts.fs)),
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
            ("Thin Pool Minimum Free Space", human_size(data_total // bs * self.opts.min_free_pct // 100 * bs)),
            ("Deferred Removal Enabled", "false"),
            ("Deferred Deletion Enabled", "false"),
            ("Deferred Deleted Device Count", "0"),
        ]
        return rows

    def list_devices(self) -> list[dict[str, Any]]:
        """`dmsetup ls` for this pool: every thin device with its layer id and activity."""
        by_device = self.devices.layers_by_device()
        return [{**dev, "layer": by_device.get(dev["id"])} for dev in self.client.call("list")]

    def dump(self) -> str:
        """The pool metadata as thin_dump XML."""
        xml: str = self.client.call("dump")
        return xml

    def cleanup(self) -> None:
        for id in self.exports.ids():
            with self.refs.locked(id):
                if self._unexport(id) and not is_mountpoint(self.home / "mnt" / id):
                    self.devices.deactivate(id)
        for mnt in sorted((self.home / "mnt").iterdir()):
            if is_mountpoint(mnt):
                umount(mnt)
            with self.refs.locked(mnt.name) as ref:
                ref.reset()
            self.devices.deactivate(mnt.name)
            with contextlib.suppress(OSError):
                mnt.rmdir()
        server.stop_server(self.client, self.devices.devices_dir)
