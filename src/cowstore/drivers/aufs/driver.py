"""aufs: every layer is a union branch; a mount stacks the layer over all its ancestors.

Docker's layout under `aufs/`:

    diff/<id>/    the layer's own files; deletions are `.wh.<name>` files, opaque
                  dirs hold `.wh..wh..opq` (the OCI changeset format, as is)
    layers/<id>   the parent chain, nearest first, one id a line (empty: base layer)
    mnt/<id>/     the union mount point while the layer is in use

Mainline kernels never had aufs, so the union is `unionfs`, a FUSE filesystem with
aufs semantics whose file data goes through FUSE_PASSTHROUGH, served for every mount
of this home by one union server (its socket and log under `unionfs/`); a kernel that
does have aufs gets the real thing with the same branches. Because a layer's diff dir
is its changeset, diff, changes, diff_size and apply_diff against the direct parent
read or write that dir alone.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
from collections.abc import Callable, Mapping
from typing import BinaryIO

from cowstore.archive import apply_layer, tar_directory
from cowstore.archive.changes import Change
from cowstore.archive.whiteouts import META_PREFIX, OPAQUE_MARKER, WHITEOUT_PREFIX
from cowstore.drivers.aufs.unionfs.client import UnionClient
from cowstore.drivers.common import transit
from cowstore.drivers.common.exports import ExportMarks
from cowstore.drivers.common.fill import fill_directly
from cowstore.drivers.common.ids import check_id
from cowstore.drivers.common.options import parse_bool
from cowstore.drivers.common.refcount import MountRefs, RefCount
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.naive import NaiveDiffDriver
from cowstore.errors import (
    InvalidOption,
    LayerExists,
    LayerNotFound,
    MaxDepthExceeded,
    MountError,
    NotSupported,
)
from cowstore.host import fsutil, mounts
from cowstore.host.pipestream import piped
from cowstore.host.safepath import lstat_beneath

# The union has no compile-time branch limit; this bounds argv and lookup cost.
MAX_DEPTH = 500


class AufsDriver(NaiveDiffDriver):
    name = "aufs"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        self.passthrough = True
        self.cache_timeout = 10.0
        for raw_key, value in self.options.items():
            key = raw_key.strip().lower()
            if key == "aufs.passthrough":
                self.passthrough = parse_bool("aufs", raw_key, value)
            elif key == "aufs.cache_timeout":
                try:
                    self.cache_timeout = float(value)
                except ValueError:
                    raise InvalidOption(f"aufs: {raw_key} needs seconds, not {value!r}") from None
            else:
                raise InvalidOption(f"aufs: unknown option {raw_key}")
        self.kernel_aufs = fsutil.kernel_has_fs("aufs")
        if not self.kernel_aufs and not (fsutil.kernel_has_fs("fuse") and os.path.exists("/dev/fuse")):
            raise NotSupported("aufs: the kernel has neither aufs nor FUSE (modprobe fuse)")
        if os.geteuid() != 0:
            raise NotSupported("aufs: union mounts need root")
        home.mkdir(mode=0o710, parents=True, exist_ok=True)
        self.backing = fsutil.backing_fs(home)
        if self.backing in ("aufs", "ecryptfs", "fuse") or (self.kernel_aufs and self.backing == "btrfs"):
            raise NotSupported(f"aufs: backing file system {self.backing} is unsupported for this graph driver")
        for sub in ("diff", "layers", "mnt", "unionfs"):
            (home / sub).mkdir(mode=0o710, exist_ok=True)
        self.refs = MountRefs(home)
        self.union = UnionClient(home / "unionfs")
        self.exports = ExportMarks(home)
        self._sweep()

    # ----------------------------------------------------------------- paths

    def _diff(self, id: str) -> pathlib.Path:
        return self.home / "diff" / check_id(id)

    def _mnt(self, id: str) -> pathlib.Path:
        return self.home / "mnt" / check_id(id)

    def _layers_file(self, id: str) -> pathlib.Path:
        return self.home / "layers" / check_id(id)

    def _parents(self, id: str) -> list[str]:
        """The ancestors of `id`, nearest first (the `layers/<id>` file)."""
        try:
            text = self._layers_file(id).read_text()
        except FileNotFoundError:
            raise LayerNotFound(f"layer {id} does not exist") from None
        return [line for line in text.splitlines() if line]

    def storage_paths(self, id: str) -> list[pathlib.Path]:
        return [self._diff(id), self._layers_file(id), self._mnt(id)]

    def branches(self, id: str) -> list[str]:
        """The union's branches as aufs spells them: `DIR=rw` on top, then `DIR=ro+wh`."""
        return [f"{self._diff(id)}=rw"] + [f"{self._diff(p)}=ro+wh" for p in self._parents(id)]

    def _sweep(self) -> None:
        """Finish removals a crash interrupted, but not those a live process is doing."""
        for sub in ("diff", "mnt"):
            transit.sweep(self.home / sub, self.refs)

    # ---------------------------------------------------------------- create

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        if storage_opts:
            raise NotSupported("--storage-opt is not supported for aufs")
        layers_file = self._layers_file(id)
        with self.refs.locked(id):
            if layers_file.exists():
                raise LayerExists(f"layer {id} already exists")
            chain = [parent, *self._parents(parent)] if parent is not None else []
            if len(chain) > MAX_DEPTH:
                raise MaxDepthExceeded(
                    f"max depth exceeded: layer {id} would have {len(chain)} parents (aufs: {MAX_DEPTH})"
                )
            self._diff(id).mkdir(mode=0o755, exist_ok=True)
            self._mnt(id).mkdir(mode=0o755, exist_ok=True)
            tmp = layers_file.with_name(f".{id}.tmp")
            tmp.write_text("".join(f"{p}\n" for p in chain))
            os.rename(tmp, layers_file)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        self.create(id, parent, storage_opts=storage_opts)

    # ------------------------------------------------------------- get / put

    def get(self, id: str) -> pathlib.Path:
        with self.refs.locked(id) as ref:
            parents = self._parents(id)
            if not parents:
                return self._diff(id)
            mnt = self._mnt(id)
            mounted = mounts.is_mountpoint(mnt)
            if mounted and self._stale(mnt):
                # Its server died: the mount only answers ENOTCONN. Mount it afresh;
                # its users keep their count and find their files again.
                users = max(ref.value(), 1)
                self.union.unmount(mnt)
                self._remount(id, ref, users + 1)
                return mnt
            if ref.increment(mounted) > 1:
                return mnt
            try:
                self._mount(id)
            except BaseException:
                ref.decrement(False)
                raise
            return mnt

    def fill(self, id: str, write: Callable[[pathlib.Path], None]) -> None:
        """Write straight into the layer's diff dir: no union mount, and the same merged tree."""
        fill_directly(self._diff(id), [self._diff(p) for p in self._parents(id)], write)

    def _stale(self, mnt: pathlib.Path) -> bool:
        """Whether the union mount at `mnt` is left by a server that died (no live one serves it)."""
        return not self.kernel_aufs and self.union.info(mnt) is None

    def _remount(self, id: str, ref: RefCount, users: int) -> None:
        """Mount `id` again for `users` users (a dead server's mount is already gone)."""
        ref.reset()
        self._mount(id)
        ref.set(users)

    def _mount(self, id: str) -> None:
        mnt = self._mnt(id)
        if self.kernel_aufs:
            self._mount_kernel_aufs(mnt, self.branches(id))
            return
        self.union.mount(
            mnt, self.branches(id), timeout=self.cache_timeout, passthrough=self.passthrough, source="cowstore-aufs"
        )

    @staticmethod
    def _mount_kernel_aufs(mnt: pathlib.Path, branches: list[str]) -> None:
        """Real aufs: as many branches as fit in a page, the rest by remount appends."""
        page = os.sysconf("SC_PAGESIZE")
        first, rest = branches[0], branches[1:]
        data = f"br:{first}"
        while rest and len(data) + len(rest[0]) + 1 + 40 < page:
            data += f":{rest.pop(0)}"
        mounts.mount("none", mnt, "aufs", 0, data + ",dio,xino=/dev/shm/aufs.xino")
        while rest:
            chunk = f"append:{rest.pop(0)}"
            while rest and len(chunk) + len(rest[0]) + 8 < page:
                chunk += f",append:{rest.pop(0)}"
            mounts.mount("none", mnt, "aufs", mounts.MS_REMOUNT, chunk)

    def put(self, id: str) -> None:
        with self.refs.locked(id) as ref:
            if not self._parents(id):
                return
            mnt = self._mnt(id)
            mounted = mounts.is_mountpoint(mnt)
            if mounted and self._stale(mnt):
                remaining = max(ref.value(), 1) - 1
                self.union.unmount(mnt)
                ref.reset()
                if remaining:
                    self._remount(id, ref, remaining)
                return
            if ref.decrement(mounted) > 0:
                return
            self._unmount(id)

    def stale_mounts(self) -> list[str]:
        """Layers whose union mount no live server answers (its server was killed)."""
        if self.kernel_aufs:
            return []
        mnt_dir = self.home / "mnt"
        mounted = {row.target for row in mounts.mount_table()}
        names = (n for n in sorted(os.listdir(mnt_dir)) if transit.valid_id(n) is not None)
        return [n for n in names if os.path.realpath(mnt_dir / n) in mounted and self._stale(mnt_dir / n)]

    def clear_stale_mount(self, id: str) -> None:
        with self.refs.locked(id) as ref:
            mnt = self._mnt(id)
            if mounts.is_mountpoint(mnt) and self._stale(mnt):
                self.union.unmount(mnt)
                ref.reset()

    def _unmount(self, id: str) -> None:
        mnt = self._mnt(id)
        if self.kernel_aufs:
            mounts.umount(mnt, 0)
        else:
            self.union.unmount(mnt)

    # ------------------------------------------------------- external mounter

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """A bind of the layer's union, which stays mounted (one counted `get`) until
        `release_external`: the union server already serves every mount of this home
        with passthrough, so containerd needs no FUSE helper of its own; a base layer
        is its plain diff dir."""
        if not self._parents(id):
            return [MountSpec.bind(self._diff(id), readonly=readonly)]
        mnt = self._mnt(id)
        if self.exports.value(id) is None or not self._serving(mnt):
            self.exports.clear(id)  # a record without its union (reboot, stopped server) holds nothing
            self.get(id)
            self.exports.mark(id)
        return [MountSpec.bind(mnt, readonly=readonly)]

    def _serving(self, mnt: pathlib.Path) -> bool:
        return mounts.is_mountpoint(mnt) and (self.kernel_aufs or self.union.info(mnt) is not None)

    def release_external(self, id: str) -> None:
        if self.exports.value(id) is None:
            return
        self.exports.clear(id)
        self.put(id)

    # ---------------------------------------------------------------- remove

    def remove(self, id: str) -> None:
        layers_file = self._layers_file(id)
        with self.refs.locked(id) as ref:
            self._unmount(id)
            ref.reset()
            self.exports.clear(id)
            with contextlib.suppress(FileNotFoundError):
                layers_file.unlink()
            for path in (self._diff(id), self._mnt(id)):
                # Out of the way first, so a crash part-way leaves nothing under the id.
                doomed = transit.transit_path(path.parent, id, transit.REMOVING)
                try:
                    os.rename(path, doomed)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise MountError(
                        f"aufs: cannot remove {path}: {exc.strerror}; it needs to be cleaned up manually"
                    ) from None
                fsutil.remove_tree(doomed)
            self.refs.forget(id)

    def exists(self, id: str) -> bool:
        try:
            return self._layers_file(id).is_file()
        except InvalidOption:
            return False

    def ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.home / "layers") if not n.startswith("."))

    # ---------------------------------------------------------- introspection

    def status(self) -> list[tuple[str, str]]:
        return [
            ("Root Dir", str(self.home)),
            ("Backing Filesystem", self.backing),
            ("Dirs", str(len(self.ids()))),
            ("Dirperm1 Supported", "false"),
        ]

    def metadata(self, id: str) -> dict[str, str]:
        """The branch stack, like aufs' /sys/fs/aufs/si_*/br*: rw layer first."""
        data = {"Branches": ":".join(self.branches(id)), "DiffDir": str(self._diff(id))}
        if not self._parents(id):
            return data
        data["MergedDir"] = str(self._mnt(id))
        if self.kernel_aufs:
            data["Union"] = "aufs"
            return data
        data["Union"] = "fuse"
        info = self.union.info(self._mnt(id))
        if info is not None:
            data["Union"] = "fuse+passthrough" if info["passthrough"] else "fuse"
            data["ServerPid"] = str(info["pid"])
            data["FuseConnection"] = str(info["conn"])
            data["ServerLog"] = str(self.union.log)
        return data

    def cleanup(self) -> None:
        """Unmount every layer and stop the union server (mounts of a dead one are detached)."""
        if not self.kernel_aufs:
            self.union.stop()
        for name in os.listdir(self.home / "mnt"):
            if mounts.is_mountpoint(self.home / "mnt" / name):
                self._unmount(name)
        transit.unmount_below(self.home)

    # ------------------------------------------------------------ native diff

    def _native(self, id: str, parent: str | None) -> bool:
        """Whether diff/<id> is exactly the changeset of `id` against `parent`."""
        parents = self._parents(id)
        return parents[:1] == ([parent] if parent is not None else [])

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        if not self._native(id, parent):
            return super().diff(id, parent)
        tree = self._diff(id)
        return piped(lambda out: tar_directory(tree, out, whiteouts="aufs"), f"diff {id}")

    def apply_diff(self, id: str, parent: str | None, stream: BinaryIO) -> int:
        if not self._native(id, parent):
            return super().apply_diff(id, parent, stream)
        return self.apply_detached(id, stream)

    def applies_detached(self) -> bool:
        """Each layer is a branch directory of its own: extracting one never reads another."""
        return True

    def apply_detached(self, id: str, stream: BinaryIO) -> int:
        # A base layer is shown as its plain diff dir: there whiteouts must act, not stay.
        return apply_layer(stream, self._diff(id), whiteouts="aufs" if self._parents(id) else "oci")

    def finish_apply(self, id: str, parent: str | None) -> None:
        """Nothing: the union reads whiteouts against the branches below as it goes."""

    def diff_size(self, id: str, parent: str | None = None) -> int:
        if not self._native(id, parent):
            return super().diff_size(id, parent)
        return fsutil.tree_size(self._diff(id))

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        if not self._native(id, parent):
            return super().changes(id, parent)
        return layer_changes(self._diff(id), [self._diff(p) for p in self._parents(id)])


def layer_changes(diff_dir: pathlib.Path, parent_dirs: list[pathlib.Path]) -> list[Change]:
    """Docker's layered comparison: walk only the layer's own dir; `.wh.` files are
    deletions, names found in some ancestor are modifications, others additions, and
    the directory holding an addition or deletion is itself modified."""
    kinds: dict[str, str] = {}
    touched: set[str] = set()
    root = os.fspath(diff_dir)
    for dirpath, dirnames, filenames in fsutil.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(META_PREFIX))
        for name in sorted(dirnames + filenames):
            if name.startswith(META_PREFIX):
                if name == OPAQUE_MARKER:
                    touched.add(rel_dir)
                continue
            if name.startswith(WHITEOUT_PREFIX):
                kinds["/" + os.path.join(rel_dir, name[len(WHITEOUT_PREFIX) :])] = "D"
                touched.add(rel_dir)
                continue
            rel = os.path.join(rel_dir, name)
            st = os.lstat(os.path.join(dirpath, name))
            # Never through a symlink of an ancestor: it could point anywhere on the host.
            lower = next((s for s in (lstat_beneath(p, rel) for p in parent_dirs) if s is not None), None)
            if lower is None:
                kinds["/" + rel] = "A"
                touched.add(rel_dir)
            elif not (
                stat.S_ISDIR(st.st_mode)
                and lower.st_mode == st.st_mode
                and lower.st_size == st.st_size
                and lower.st_mtime_ns // 1_000_000_000 == st.st_mtime_ns // 1_000_000_000
            ):
                kinds["/" + rel] = "C"
    for rel_dir in touched:
        if rel_dir:
            kinds.setdefault("/" + rel_dir, "C")
    return sorted(Change(path, kind) for path, kind in kinds.items())
