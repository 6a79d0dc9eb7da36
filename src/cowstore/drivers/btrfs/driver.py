"""btrfs: every layer is a subvolume; a child layer is a writable snapshot of its parent.

Layout as Docker's: `btrfs/subvolumes/<id>` (always present, no mount: get returns the
directory itself) and `btrfs/quotas/<id>` (the size limit of a layer, decimal bytes);
cowstore adds `removing/` (layers being deleted) and `mountpoints/` (per-id lock files).
Snapshots are O(1) in the layer size, so a container is created in milliseconds and
costs a few kilobytes; the price is CoW on every write and chunk-based allocation
(see `space`). All subvolume work goes through ioctls (`ioctl`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pathlib
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence

from cowstore.archive.changes import Change
from cowstore.drivers.btrfs import fastdiff, loopback, space
from cowstore.drivers.btrfs import ioctl as btrfsioctl
from cowstore.drivers.common import transit
from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.plaindirs import PlainDirectories
from cowstore.drivers.common.refcount import MountRefs
from cowstore.drivers.driver import DiskUsage, MountSpec
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import InvalidOption, LayerExists, LayerInUse, LayerNotFound, NotSupported, Unavailable
from cowstore.host import diskusage, fsutil, mounts
from cowstore.units import human_size, parse_size

_OPTIONS = ("btrfs.min_space", "btrfs.loopback")


class BtrfsError(Unavailable):
    """A btrfs ioctl failed; the message names the operation, the layer and the errno."""


@functools.lru_cache(maxsize=1)
def build_version() -> str | None:
    """`Btrfs v6.2` from the installed btrfs-progs, as Docker's Build Version shows it."""
    try:
        out = subprocess.run(["btrfs", "--version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return None
    match = re.search(r"v\d+(\.\d+)*", out)
    return f"Btrfs {match.group(0)}" if match else None


def _open_dir(path: pathlib.Path | str, dir_fd: int | None = None) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


@contextlib.contextmanager
def _opened(path: pathlib.Path | str, dir_fd: int | None = None) -> Iterator[int]:
    fd = _open_dir(path, dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _removing_id(name: str) -> str | None:
    """The layer id of a `removing/<id>-<random>` entry."""
    return transit.valid_id(name.rpartition("-")[0])


class BtrfsDriver(PlainDirectories, NaiveDiffDriver):
    """Layers as btrfs subvolumes and snapshots, with qgroup size limits."""

    name = "btrfs"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, {k.strip().lower(): v.strip() for k, v in options.items()})
        for key in self.options:
            if key not in _OPTIONS:
                raise InvalidOption(f"unknown option {key} for btrfs (known: {', '.join(_OPTIONS)})")
        self.min_space = self._size_option("btrfs.min_space")
        loop_size = self._size_option("btrfs.loopback")
        self.image: pathlib.Path | None = None
        if loop_size is not None or loopback.image_path(home).exists():
            self.image = loopback.ensure_mounted(home, loop_size)
        home.mkdir(mode=0o710, parents=True, exist_ok=True)
        fs = fsutil.backing_fs(home)
        if fs != "btrfs":
            raise NotSupported(
                f"btrfs needs its home on a btrfs filesystem, but {home} is on {fs}: "
                "put the store on btrfs or give the option btrfs.loopback=SIZE"
            )
        self.subvolumes = self.layers_dir = home / "subvolumes"
        self.quotas = home / "quotas"
        self.removing = home / "removing"
        self.subvolumes.mkdir(mode=0o710, exist_ok=True)
        self.quotas.mkdir(mode=0o700, exist_ok=True)
        self.removing.mkdir(mode=0o700, exist_ok=True)
        self.refs = MountRefs(home)  # only for its per-id locks: btrfs layers are never mounted
        transit.sweep(self.removing, self.refs, _removing_id, self._delete)
        if self.min_space is not None:
            self._enable_quota()

    def _size_option(self, key: str) -> int | None:
        if key not in self.options:
            return None
        try:
            return parse_size(self.options[key])
        except ValueError:
            raise InvalidOption(f"{key}: invalid size {self.options[key]!r} (e.g. 10G)") from None

    # -- layers ---------------------------------------------------------------------

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self.create_rw(id, parent, storage_opts=storage_opts)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        check_id(id)
        size = self._parse_storage_opts(storage_opts or {})
        with self.refs.locked(id):
            self._create(id, parent, size)

    def _create(self, id: str, parent: str | None, size: int | None) -> None:
        with _opened(self.subvolumes) as dir_fd:
            try:
                if parent is None:
                    btrfsioctl.subvol_create(dir_fd, id)
                else:
                    try:
                        source = _open_dir(check_id(parent), dir_fd)
                    except (FileNotFoundError, NotADirectoryError):
                        raise LayerNotFound(f"parent layer {parent} does not exist") from None
                    try:
                        btrfsioctl.snapshot(source, dir_fd, id)
                    finally:
                        os.close(source)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise LayerExists(f"layer {id} already exists") from None
                raise BtrfsError(f"create subvolume {id}: {exc.strerror}") from None
        if size is None:
            return
        try:
            self._apply_limit(id, size)
            (self.quotas / id).write_text(str(size))
        except BaseException:
            self._remove(id)
            raise

    def _parse_storage_opts(self, storage_opts: Mapping[str, str]) -> int | None:
        size = None
        for key, value in storage_opts.items():
            if key.lower() != "size":
                raise InvalidOption(f"unknown storage option {key} for btrfs (known: size)")
            try:
                size = parse_size(value)
            except ValueError:
                raise InvalidOption(f"btrfs: invalid storage size {value!r}") from None
            if size == 0:
                raise InvalidOption("btrfs: invalid storage size 0")
            if self.min_space is not None and size < self.min_space:
                raise InvalidOption(f"btrfs: storage size cannot be less than {human_size(self.min_space)}")
        return size

    def remove(self, id: str) -> None:
        with self.refs.locked(check_id(id)):
            self._remove(id)
            self.refs.forget(id)

    def _remove(self, id: str) -> None:
        """Delete layer `id` (absent: nothing to do); the caller holds the id's lock."""
        path = self._path(id)
        if fsutil.lstat_or_none(path) is None:
            return
        for point in mounts.mounts_under(path):
            mounts.umount(point, mounts.MNT_DETACH)
        # Out of the way first, so a crash part-way leaves no half-deleted layer under
        # its id; leftovers are swept when the driver is opened again, unless their
        # lock (held here until the end) says a live process is still at it.
        staged = self.removing / f"{id}-{os.urandom(4).hex()}"
        os.rename(path, staged)
        try:
            self._delete(staged)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(staged, path)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.quotas / id)
        space.reclaim_if_full(self.home)

    def _destroy(self, path: pathlib.Path) -> None:
        """Delete subvolume `path` after every subvolume nested in it, deepest first."""
        with _opened(path) as fd:
            root_id = btrfsioctl.subvol_id(fd)
            nested = self._nested(fd, root_id, "")
        for rel in sorted(nested, key=lambda p: p.count("/"), reverse=True):
            self._destroy_one(path / rel)
        self._destroy_one(path)
        with _opened(self.home) as fd, contextlib.suppress(OSError):
            btrfsioctl.qgroup_destroy(fd, root_id)

    def _nested(self, fd: int, subvol: int, prefix: str) -> list[str]:
        """Paths (relative to the top subvolume) of all subvolumes below `subvol`."""
        found = []
        for child, dirid, name in btrfsioctl.child_subvolumes(fd, subvol):
            _, dir_path = btrfsioctl.ino_lookup(fd, subvol, dirid)
            rel = f"{prefix}{dir_path}{name}"
            found.append(rel)
            found.extend(self._nested(fd, child, rel + "/"))
        return found

    def _destroy_one(self, path: pathlib.Path) -> None:
        with _opened(path.parent) as dir_fd:
            try:
                btrfsioctl.snap_destroy(dir_fd, path.name)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise LayerInUse(f"subvolume {path} is busy (mounted or being sent)") from None
                raise BtrfsError(f"delete subvolume {path}: {exc.strerror}") from None

    def _delete(self, path: pathlib.Path) -> None:
        """Delete a subvolume with everything nested in it, or a plain directory tree."""
        st = fsutil.lstat_or_none(path)
        if st is None:
            return
        if btrfsioctl.is_subvolume(st):
            self._destroy(path)
        else:
            fsutil.remove_tree(path)

    def get(self, id: str) -> pathlib.Path:
        path = self._path(id)
        if not path.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        try:
            limit = int((self.quotas / id).read_text())
        except FileNotFoundError:
            return path
        # Re-applied on every get, as Docker does: quotas may have been switched off
        # (and the limits with them) since the layer was created.
        self._apply_limit(id, limit)
        return path

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """A subvolume is the layer's whole tree: a bind of it, as containerd's btrfs snapshotter
        gives (it mounts the subvolume by id; a bind needs no knowledge of the pool's device)."""
        return [MountSpec.bind(self.get(id), readonly=readonly)]

    # -- changes --------------------------------------------------------------------

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """From btrfs generation numbers when `id` is an untouched-parent snapshot of `parent`.

        diff and diff_size go through here too. Anything the fast path cannot vouch
        for (another parent, a parent modified after the snapshot, an ioctl refused)
        falls back to the naive tree comparison, which is always right.
        """
        if parent is not None:
            new, old = self.get(id), self.get(parent)
            try:
                fast = fastdiff.changes(new, old)
            except OSError:
                fast = None
            finally:
                self.put(parent)
                self.put(id)
            if fast is not None:
                return fast
        return super().changes(id, parent)

    # -- quotas ---------------------------------------------------------------------

    def _enable_quota(self) -> None:
        with _opened(self.home) as fd:
            try:
                btrfsioctl.quota_ctl(fd, btrfsioctl.QUOTA_CTL_ENABLE)
                # Enabling starts a rescan; limits are only enforced correctly after it.
                btrfsioctl.quota_rescan_wait(fd)
            except OSError as exc:
                raise BtrfsError(f"enable quotas on {self.home}: {exc.strerror}") from None

    def _apply_limit(self, id: str, size: int) -> None:
        with _opened(self._path(id)) as fd:
            try:
                btrfsioctl.qgroup_limit(fd, size)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    raise BtrfsError(f"set size limit of layer {id}: {exc.strerror}") from None
                self._enable_quota()
                btrfsioctl.qgroup_limit(fd, size)

    def quota_enabled(self) -> bool:
        """Whether qgroups are on (the quota tree exists)."""
        with _opened(self.home) as fd:
            try:
                next(btrfsioctl.tree_search(fd, btrfsioctl.QUOTA_TREE_OBJECTID, max_objectid=0), None)
            except FileNotFoundError:
                return False
        return True

    def layer_usage(self, id: str) -> tuple[int, int] | None:
        """(referenced, exclusive) bytes of a layer by its qgroup; None when quotas are off."""
        with _opened(self._path(id)) as fd:
            btrfsioctl.sync(fd)
            return btrfsioctl.qgroup_usage(fd, btrfsioctl.subvol_id(fd))

    def storage_roots(self) -> list[pathlib.Path]:
        return [self.home] + ([self.image] if self.image is not None else [])

    def disk_usage(self, ids: Sequence[str]) -> DiskUsage:
        """Data extents by physical address: a snapshot's blocks shared with its parent count
        for the parent, the blocks it rewrote for itself.

        On a loopback image `other` is the rest of what the image occupies on the
        store's filesystem (btrfs' metadata trees, inline small files, chunks it keeps);
        elsewhere it is the data kept below the home outside the subvolumes.
        """
        fsutil.syncfs(self.home)
        counted = diskusage.Extents()
        layers = {id: counted.data_bytes(self._path(id)) for id in ids}
        if self.image is None:
            return DiskUsage(layers, counted.data_bytes(self.home))
        image = diskusage.allocated(self.image, set())
        return DiskUsage(layers, max(0, image - sum(layers.values())))

    # -- info -----------------------------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        lines: list[tuple[str, str]] = []
        version = build_version()
        if version:
            lines.append(("Build Version", version))
        # Docker shows the libbtrfs it was built against; cowstore uses no library,
        # it talks to the kernel through ioctls.
        lines.append(("Library Version", "none (kernel ioctls)"))
        if self.image is not None:
            lines.append(("Loopback File", str(self.image)))
            device = loopback.mounted_device(self.home)
            if device:
                lines.append(("Loop Device", device))
        lines.append(("Quotas", "enabled" if self.quota_enabled() else "disabled"))
        if self.min_space is not None:
            lines.append(("Min Space", human_size(self.min_space)))
        lines.extend(space.status_lines(self.home))
        return lines

    def cleanup(self) -> None:
        if self.image is not None:
            loopback.unmount(self.home)


def balance(driver: BtrfsDriver, dusage: int) -> dict[str, int]:
    """`cowstore btrfs balance --dusage N`: give half-empty data chunks back to the device."""
    return space.balance_path(driver.home, dusage)
