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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from cowstore.archive.changes import Change, changes_size
from cowstore.drivers.common.exports import ExportMarks
from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.refcount import MountRefs, RefCount
from cowstore.drivers.devicemapper import external, fstools, info, server, snapdiff
from cowstore.drivers.devicemapper.deviceset import BASE, DeviceSet
from cowstore.drivers.devicemapper.options import backing_files, check_host, parse_options
from cowstore.drivers.driver import DiskUsage, MountSpec
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import InvalidOption, LayerExists, LayerNotFound, MountError, NoSpace
from cowstore.host import diskusage, fsutil, loop
from cowstore.host.mounts import MS_NOATIME, Mount, device_mount, is_mountpoint, mount, mount_table, umount
from cowstore.host.service import ServiceClient, running
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
        self._server_pid: int | None = None  # known once `_revive` has asked the server
        self.client = self._start_server()
        self.devices = DeviceSet(home, self.client, self._devices_dir)
        try:
            self.devices.rollback()
            self._setup_base()
        except BaseException:
            server.stop_server(self.client, self._devices_dir)
            raise

    # ---------------------------------------------------------------- server

    @property
    def _devices_dir(self) -> pathlib.Path:
        return self.home / "devicemapper" / "mapper"

    def _start_server(self) -> ServiceClient:
        return server.start_server(
            metadata=self.meta_file,
            data=self.data_file,
            mountpoint=self._devices_dir,
            socket=self.home / "devicemapper" / "control.sock",
            log=self.home / "devicemapper" / "server.log",
            block_size=self.opts.block_size,
            no_space_policy=self.opts.no_space_policy,
            min_free_pct=self.opts.min_free_pct,
            cgroup=self.opts.server_cgroup,
            discard_passdown=self.opts.blkdiscard,
        )

    def _revive(self) -> None:
        """Start the block server again if it died (SIGKILL, OOM) since this driver opened.

        Its device files died with it: every mount on them is stale (see `_stale`).
        """
        if self._server_pid is not None and running(self._server_pid):
            return  # its process runs: no ping, a round trip on every create and mount
        if not self.client.alive():
            self.client = self.devices.client = self._start_server()
        self._server_pid = self.client.call("pid")

    def _stale(self, found: Mount | None) -> bool:
        """Whether the filesystem mounted as `found` sits on a device file of a dead server.

        Its loop device then fails every request: its file belonged to a FUSE
        connection that ended with the server, whatever now serves the same name. The
        server is asked first: for a moment after its death the kernel still answers
        for its files from cached attributes.
        """
        if found is None:
            return False
        if not self.client.alive():
            return True
        identity = loop.backing_identity(found.source)
        try:
            live = os.stat(self._devices_dir).st_dev
        except OSError:
            return True
        return identity is None or identity[0] != live

    def _drop_stale(self, id: str, mnt: pathlib.Path, ref: RefCount) -> None:
        """Detach a stale mount (its loop device goes with it) and forget the dead activation."""
        umount(mnt)
        ref.reset()
        self._revive()
        self.devices.deactivate(id)

    def stale_mounts(self) -> list[str]:
        """Layers mounted from a device file of a block server that died."""
        mnt_dir = self.home / "mnt"
        mounted = {row.target: row for row in mount_table()}  # the last of a target is on top
        names = (n for n in sorted(os.listdir(mnt_dir)) if n != BASE and not n.startswith("."))
        return [n for n in names if self._stale(mounted.get(os.path.realpath(mnt_dir / n)))]

    def clear_stale_mount(self, id: str) -> None:
        mnt = self.home / "mnt" / check_id(id)
        with self.refs.locked(id) as ref:
            if self._stale(device_mount(mnt)):
                self._drop_stale(id, mnt, ref)

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
        fstools.run([*args, *self.opts.mkfs_args, device])
        if fs == "ext4":
            fstools.run(["tune2fs", "-c", "-1", "-i", "0", device])
        target = self.home / "mnt" / BASE
        target.mkdir(exist_ok=True)
        mount(device, target, fs, 0, "nouuid" if fs == "xfs" else None)
        try:
            (target / "rootfs").mkdir(mode=0o755, exist_ok=True)
        finally:
            umount(target, 0)
            target.rmdir()
        return fstools.run(["blkid", "-s", "UUID", "-o", "value", device]).strip()

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
        self._revive()
        layout = {"root_layout": True} if origin.get("root_layout") else {}
        device_id = self.devices.create(id, origin["device_id"], size, grow=size > origin["size"], **layout)
        if parent is not None:
            with self.refs.locked(id):
                self.refs.set_note(id, "copied", f"{time.clock_gettime_ns(_INODE_CLOCK)} {parent}")
        if size > origin["size"]:
            fstools.grow(self, id, device_id)

    def remove(self, id: str) -> None:
        info = self.devices.info(id)
        if info is None:
            return
        with self.refs.locked(id) as ref:
            mnt = self.home / "mnt" / id
            if is_mountpoint(mnt):
                umount(mnt)
            ref.reset()
            self._revive()
            external.unexport(self, id)
            self.devices.delete(id, info["device_id"])
            with contextlib.suppress(FileNotFoundError):
                fsutil.remove_tree(mnt)
        self.refs.forget(id)

    def get(self, id: str) -> pathlib.Path:
        info = self.devices.info(check_id(id))
        if info is None or info.get("deleted"):
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        mnt = self.home / "mnt" / id
        rootfs = mnt if info.get("root_layout") else mnt / "rootfs"
        with self.refs.locked(id) as ref:
            found = device_mount(mnt)
            mounted = found is not None
            if self._stale(found):
                # Its block server died: mount it afresh (the ext4 journal replays what
                # the pool committed); its users keep their count.
                users = max(ref.value(), 1)
                self._drop_stale(id, mnt, ref)
                self._mount(id, info)
                ref.set(users + 1)
            elif ref.increment(mounted) == 1:
                try:
                    self._mount(id, info)
                except BaseException:
                    ref.decrement(False)
                    raise
            return rootfs

    def _mount(self, id: str, info: dict[str, Any]) -> None:
        """Activate the device, attach a loop device to it and mount its filesystem."""
        mnt = self.home / "mnt" / id
        self._revive()
        try:
            mnt.mkdir(mode=0o755, exist_ok=True)
            options = [opt for opt in self.opts.mount_opts if opt != "noatime"]
            flags = MS_NOATIME if "noatime" in self.opts.mount_opts else 0  # a flag, not fs data
            if self.opts.fs == "xfs":
                options.insert(0, "nouuid")
            # Under the lock and unmounted: only an exported layer has a loop device on its file.
            reuse = self.exports.value(id) is not None
            path = self.devices.activate(id, info["device_id"])
            with loop.attached(path, direct_io=True, reuse=reuse) as device:
                try:
                    mount(device, mnt, self.opts.fs, flags, ",".join(options) or None)
                except MountError as exc:
                    raise self._out_of_space(exc) from exc
        except BaseException:
            self.devices.deactivate(id)
            raise
        if info.get("root_layout"):
            return
        (mnt / "rootfs").mkdir(mode=0o755, exist_ok=True)
        id_file = mnt / "id"
        if self.docker_layout and not id_file.exists():
            id_file.write_text(id)
            id_file.chmod(0o600)

    def _out_of_space(self, exc: MountError) -> Exception:
        """A mount that failed with an I/O error because the pool (or the disk under it) is full says so.

        The kernel reports a block that cannot be written as EIO to the filesystem,
        which cannot tell why; the pool can.
        """
        usage = self.pool_usage()
        st = os.statvfs(self.data_file.parent)
        if usage.data_used >= usage.data_total:
            return NoSpace(f"devmapper: thin pool is out of data space: {exc}")
        if st.f_bavail * st.f_frsize < usage.block_size:
            return NoSpace(f"devmapper: no space left on device under the thin pool: {exc}")
        return exc

    def put(self, id: str) -> None:
        info = self.devices.info(check_id(id))
        if info is None:
            raise LayerNotFound(f"devmapper: Unknown device {id}")
        mnt = self.home / "mnt" / id
        with self.refs.locked(id) as ref:
            found = device_mount(mnt)
            mounted = found is not None
            if self._stale(found):
                remaining = max(ref.value(), 1) - 1
                self._drop_stale(id, mnt, ref)
                if remaining:
                    self._mount(id, info)
                    ref.set(remaining)
                return
            if ref.decrement(mounted) > 0:
                return
            try:
                umount(mnt)
            except MountError:
                ref.increment(True)
                raise
            if self.exports.value(id) is None:  # else the exported loop device still needs it
                # The autoclear loop device the mount held is the one to look after.
                self.devices.deactivate(id, device=found.source if found is not None else None)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    # ------------------------------------------------------- external mounter

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """The thin device as a block device, as containerd's devmapper snapshotter gives its
        dm device (see `external`)."""
        return external.mounts(self, id, readonly=readonly)

    def release_external(self, id: str) -> None:
        external.release(self, id)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().changes(id, parent)
        with snapdiff.snapshot_changes(self, id, parent, stamp) as (_, found):
            return found

    def diff_size(self, id: str, parent: str | None = None) -> int:
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().diff_size(id, parent)
        with snapdiff.snapshot_changes(self, id, parent, stamp) as (root, found):
            return changes_size(root, found)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().diff(id, parent)
        return self._snapshot_diff(id, parent, stamp, None)

    def checked_diff(self, id: str, parent: str | None, check: Callable[[list[Change], int], None]) -> BinaryIO:
        """One pass for a commit: the changes are found, checked and written from the same read-only views."""
        stamp = snapdiff.copied_before(self.refs, id, parent)
        if stamp is None or parent is None:
            return super().checked_diff(id, parent, check)
        return self._snapshot_diff(id, parent, stamp, check)

    def _snapshot_diff(
        self, id: str, parent: str, stamp: int, check: Callable[[list[Change], int], None] | None
    ) -> BinaryIO:
        return self._spooled(lambda out: snapdiff.write_diff(self, id, parent, stamp, check, out))

    def settle(self, path: pathlib.Path) -> None:
        """Flush the layer's own filesystem before it is published.

        A thin pool (or the disk under it) that runs out shows only at write-back, and
        the unmount that follows would drop that error: a layer would be published with
        blocks that never landed.
        """
        fsutil.syncfs(path)

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

    def disk_usage(self, ids: Sequence[str]) -> DiskUsage:
        """Pool blocks, each counted for the first device that maps it: the base device's
        (the empty filesystem every layer starts from) go to `other`, a snapshot's shared
        blocks to its origin. `other` also holds the pool's metadata and what the data
        file keeps allocated beyond the mapped blocks."""
        self._revive()
        records = [(id, self.devices.info(id)) for id in (BASE, *ids)]
        known = [(id, record["device_id"]) for id, record in records if record is not None]
        blocks = self.client.call("usage", ids=[device_id for _, device_id in known])
        pool = self.pool_usage()
        layers = dict.fromkeys(ids, 0)
        layers.update({id: n * pool.block_size for (id, _), n in zip(known, blocks, strict=True) if id != BASE})
        total = diskusage.allocated(self.home, set())
        total += (pool.data_total if self.opts.data_dev else 0) + (pool.metadata_total if self.opts.metadata_dev else 0)
        return DiskUsage(layers, max(0, total - sum(layers.values())))

    def status(self) -> list[tuple[str, str]]:
        return info.status(self)

    def list_devices(self) -> list[dict[str, Any]]:
        """`dmsetup ls` for this pool: every thin device with its layer id and activity."""
        by_device = self.devices.layers_by_device()
        return [{**dev, "layer": by_device.get(dev["id"])} for dev in self.client.call("list")]

    def dump(self) -> str:
        """The pool metadata as thin_dump XML."""
        xml: str = self.client.call("dump")
        return xml

    def cleanup(self) -> None:
        self._revive()
        for id in self.exports.ids():
            with self.refs.locked(id):
                if external.unexport(self, id) and not is_mountpoint(self.home / "mnt" / id):
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
