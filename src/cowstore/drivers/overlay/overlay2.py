"""overlay2: every layer is an overlayfs upper dir; a mount stacks all its ancestors.

Docker's layout under `overlay2/`:

    l/<short>        -> ../<id>/diff   (26-char link names keep mount(2) options short)
    <id>/diff        the layer's own files, in overlay's upper-dir format
    <id>/link        the layer's short name
    <id>/lower       "l/<parent short>:l/<grandparent short>:..." (absent for a base layer)
    <id>/work        overlay's scratch dir (layers with a parent)
    <id>/merged      the mount point while the layer is in use
    <id>/committed   present once the layer has a child: it is mounted read-only

A container layer in the default compact layout is only what the kernel needs: its
directory `<id>/` *is* its upper dir, and `merged/<id>/` exists while it is mounted,
both overlay's work dir and the mount point on top of it (the kernel holds the work dir
it was given, so nothing needs to reach it by path). Its parent's short link, and its
own once it has a child, are notes on its lock file (see drivers/common/refcount.py);
`l/<short>` of such a layer points at `../<id>`. Three directories while mounted (upper,
work, the kernel's `work/work`), one while not, where Docker's shape needs five
directories and three files. Layout `docker` keeps Docker's shape for every layer.

Mounts go through the new mount API with one O_PATH descriptor per lower layer, so a
chain may be as deep as the kernel allows (500 lower layers) instead of Docker's 128.
Because a layer's upper dir holds exactly its changes, diff, changes and diff_size
against the direct parent read that dir alone, at a cost independent of image size.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO

from cowstore import archive, units
from cowstore.archive.changes import Change
from cowstore.drivers.common import transit
from cowstore.drivers.common.fill import fill_directly
from cowstore.drivers.common.options import parse_bool
from cowstore.drivers.driver import MountSpec
from cowstore.drivers.overlay import kernel as ovl
from cowstore.drivers.overlay import upperdir
from cowstore.drivers.overlay.home import OverlayHome
from cowstore.errors import InvalidOption, LayerExists, LayerNotFound, MaxDepthExceeded, NotSupported
from cowstore.host import fsutil
from cowstore.host.quota import ProjectQuota

# Docker's limit for classic mount(2): 128 short links fit a page with room to spare.
CLASSIC_MAX_LOWERS = 128
_LINK_DIR = "l"
_MERGED_DIR = "merged"
_LINK_NAME = re.compile(r"[A-Z2-7]{26}")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _new_link_id() -> str:
    """26 upper-case base32 characters (130 random bits), as Docker's short link names.

    Each character takes the low five bits of its own random byte; base64's encoder
    would cost every command that opens the driver its import."""
    return "".join(_BASE32[byte & 31] for byte in os.urandom(26))


class Overlay2Driver(OverlayHome):
    name = "overlay2"

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        super().__init__(home, options)
        self.default_size: int | None = None
        redirect_dir = metacopy = False
        self.classic = False
        for raw_key, value in self.options.items():
            key = raw_key.strip().lower().removeprefix("overlay2.")
            if key == "size":
                self.default_size = units.parse_size(value)
            elif key == "override_kernel_check":
                continue  # accepted and ignored, like Docker 23+
            elif key == "redirect_dir":
                redirect_dir = parse_bool("overlay2", raw_key, value)
            elif key == "metacopy":
                metacopy = parse_bool("overlay2", raw_key, value)
            elif key == "mount_api":
                if value not in ("auto", "classic"):
                    raise InvalidOption(f"overlay2: mount_api is auto or classic, not {value!r}")
                self.classic = value == "classic"
            else:
                raise InvalidOption(f"overlay2: unknown option {raw_key}")
        self._open_home()
        self.classic = self.classic or not ovl.new_mount_api()
        self.max_lowers = CLASSIC_MAX_LOWERS if self.classic else ovl.KERNEL_MAX_LOWERS
        self.mount_opts = ovl.mount_options(redirect_dir=redirect_dir, metacopy=metacopy)
        # An upper dir is the exact changeset only when overlay never writes redirects or
        # metadata-only copies into it, and when whiteouts use the trusted.* xattrs.
        self.native_diff = not (redirect_dir or metacopy or ovl.in_user_namespace())
        (home / _LINK_DIR).mkdir(mode=0o700, exist_ok=True)
        (home / _MERGED_DIR).mkdir(mode=0o700, exist_ok=True)
        self._quota: ProjectQuota | None = None
        if self.default_size is not None:
            self._quota = ProjectQuota(self.home)
        self._sweep()

    # ----------------------------------------------------------------- paths

    def _read(self, path: pathlib.Path) -> str | None:
        try:
            return path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None

    def _compact(self, id: str) -> bool:
        """Whether `id` is a compact container layer (its directory is its upper dir)."""
        return self.refs.note(id, "lower") is not None

    def _link(self, id: str) -> str | None:
        """The layer's short link name, if it has one (a compact layer gets one with its first child)."""
        note = self.refs.note(id, "link")
        return note if note is not None else self._read(self._dir(id) / "link")

    def _lowers(self, id: str, parent_link: str | None = None) -> list[str]:
        """The layer's ancestors as `l/<short>` paths relative to home, nearest first
        (`parent_link`: the layer's note of its parent's link, when the caller read it)."""
        if parent_link is None:
            parent_link = self.refs.note(id, "lower")
        if parent_link is not None:
            target = os.readlink(self.home / parent_link).split("/")
            return [parent_link, *self._lowers(target[1])]
        text = self._read(self._dir(id) / "lower")
        return text.split(":") if text else []

    def _diff_of(self, link_path: str) -> pathlib.Path:
        """The absolute diff dir a `l/<short>` entry points at."""
        return (self.home / _LINK_DIR / os.readlink(self.home / link_path)).resolve()

    def _sweep(self) -> None:
        """Finish what a crash interrupted: half-built and half-removed layers, stale links.

        A link is made before its layer is renamed into place, so a dangling one may
        belong to a layer another process is creating right now: its lock says so.
        """
        transit.sweep(self.home, self.refs)
        transit.sweep(self.home / _LINK_DIR, self.refs, self._dangling_link_id, os.unlink)

    def _dangling_link_id(self, name: str) -> str | None:
        """The layer id a dangling `l/<name>` (`../<id>/diff`) names; None if it is not dangling."""
        path = self.home / _LINK_DIR / name
        try:
            target = os.readlink(path)
        except OSError:
            return None
        if os.path.exists(path):
            return None
        parts = target.split("/")
        return transit.valid_id(parts[1]) if len(parts) in (2, 3) and parts[0] == ".." else None

    # ---------------------------------------------------------------- create

    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        for key in storage_opts or {}:
            if key.lower() == "size":
                raise NotSupported("--storage-opt size is only supported for ReadWrite Layers")
            raise InvalidOption(f"Unknown option {key}")
        self._create(id, parent, None)

    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        size = self.default_size
        for key, value in (storage_opts or {}).items():
            if key.lower() != "size":
                raise InvalidOption(f"Unknown option {key}")
            size = units.parse_size(value)
        if size is not None and self._quota is None:
            try:
                self._quota = ProjectQuota(self.home)
            except NotSupported as exc:
                raise NotSupported(
                    f"--storage-opt is supported only for overlay over xfs with 'pquota' mount option ({exc})"
                ) from None
        self._create(id, parent, size, compact=parent is not None and size is None and not self.docker_layout)

    def _parent_link(self, parent: str) -> str:
        """The short link of `parent`, which is getting a child: a compact parent gets one now."""
        if not self.exists(parent):
            raise LayerNotFound(f"parent layer {parent} does not exist")
        with self.refs.locked(parent):
            link = self._link(parent)
            if link is None:
                link = self._make_link(parent, f"../{parent}")
                self.refs.set_note(parent, "link", link)
            elif not self._compact(parent):
                (self._dir(parent) / "committed").touch()
            return link

    def _create(self, id: str, parent: str | None, size: int | None, *, compact: bool = False) -> None:
        target = self._dir(id)
        with self.refs.locked(id):
            if target.exists():
                raise LayerExists(f"layer {id} already exists")
            lower = None
            if parent is not None:
                parent_link = self._parent_link(parent)
                chain = [f"{_LINK_DIR}/{parent_link}", *self._lowers(parent)]
                if len(chain) > self.max_lowers:
                    raise MaxDepthExceeded(
                        f"max depth exceeded: layer {id} would have {len(chain)} lower layers, "
                        f"overlay2 mounts at most {self.max_lowers} here"
                    )
                lower = ":".join(chain)
            staging = transit.transit_path(self.home, id, transit.CREATING)
            link = None
            try:
                if compact:
                    staging.mkdir(mode=0o755)
                    self.refs.set_note(id, "lower", chain[0])
                    os.rename(staging, target)
                    return
                staging.mkdir(mode=0o710)
                if size is not None:
                    assert self._quota is not None
                    self._quota.set(staging, size)
                (staging / "diff").mkdir(mode=0o755)
                link = self._make_link(id, f"../{id}/diff")
                (staging / "link").write_text(link)
                if lower is not None:
                    (staging / "work").mkdir(mode=0o700)
                    (staging / "lower").write_text(lower)
                os.rename(staging, target)
            except BaseException:
                if link is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.home / _LINK_DIR / link)
                fsutil.remove_tree(staging)
                raise

    def _make_link(self, id: str, target: str) -> str:
        while True:
            link = _new_link_id()
            try:
                os.symlink(target, self.home / _LINK_DIR / link)
                return link
            except FileExistsError:
                continue

    # ------------------------------------------------------------- get / put

    def _mount_point(self, id: str, compact: bool | None = None) -> pathlib.Path:
        """Where layer `id` is mounted (`compact`: whether it is, when the caller knows)."""
        if compact is None:
            compact = self._compact(id)
        return self.home / _MERGED_DIR / id if compact else self._dir(id) / "merged"

    def get(self, id: str) -> pathlib.Path:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            parent_link = self.refs.note(id, "lower")  # read once: it also says whether the layer is compact
            lowers = self._lowers(id, parent_link)
            if not lowers:
                return layer / "diff"
            compact = parent_link is not None
            merged = self._mount_point(id, compact)
            ovl.acquire_mount(ref, merged, lambda: self._spec(id, lowers, compact), classic=self.classic)
            return merged

    def _spec(self, id: str, lowers: list[str], compact: bool) -> ovl.OverlaySpec:
        upper = id if compact else f"{id}/diff"
        if self.refs.note(id, "link") is not None if compact else (self._dir(id) / "committed").exists():
            # A layer with children must not change under them: mount it without upper.
            # It has at most max_lowers - 1 ancestors (a child exists), so this still fits.
            return ovl.OverlaySpec(self.home, [upper, *lowers], options=self.mount_opts)
        work = f"{_MERGED_DIR}/{id}" if compact else f"{id}/work"
        return ovl.OverlaySpec(self.home, lowers, upper, work, self.mount_opts)

    def put(self, id: str) -> None:
        layer = self._dir(id)
        with self.refs.locked(id) as ref:
            if not layer.is_dir():
                raise LayerNotFound(f"layer {id} does not exist")
            if self._compact(id):
                ovl.release_mount(ref, self._mount_point(id, True), holds_work=True)
            elif (layer / "lower").exists():
                ovl.release_mount(ref, layer / "merged")

    def fill(self, id: str, write: Callable[[pathlib.Path], None]) -> None:
        """Write straight into the layer's upper dir: no mount, and the same merged tree."""
        fill_directly(self._upper(id), [self._diff_of(link) for link in self._lowers(id)], write)

    # ---------------------------------------------------------------- remove

    def _forget_links(self, id: str) -> None:
        """Remove the layer's short link; a link file a power loss left unwritten (zeros)
        names none, and the sweep at the next open removes the symlink it leaves."""
        link = self._link(id)
        if link and _LINK_NAME.fullmatch(link):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.home / _LINK_DIR / link)

    # ---------------------------------------------------------- introspection

    def status(self) -> list[tuple[str, str]]:
        return [
            ("Backing Filesystem", self.backing),
            ("Supports d_type", "true"),
            ("Native Overlay Diff", str(self.native_diff).lower()),
            ("userxattr", str(ovl.in_user_namespace()).lower()),
        ]

    def metadata(self, id: str) -> dict[str, str]:
        layer = self._dir(id)
        if not layer.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        merged = self._mount_point(id)
        data = {
            "WorkDir": str(merged if self._compact(id) else layer / "work"),
            "MergedDir": str(merged),
            "UpperDir": str(self._upper(id)),
        }
        lowers = self._lowers(id)
        if lowers:
            data["LowerDir"] = ":".join(str(self._diff_of(p)) for p in lowers)
        return data

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """containerd's overlayfs shapes: a base layer is a bind of its diff dir, any other an
        overlay of its ancestors' short links; a read-only one stacks its own (empty) diff
        dir on them instead of an upper, since overlay needs two lowers without one."""
        if self._compact(id):
            raise NotSupported(
                f"layer {id} is a container layer in the compact layout, which only this driver mounts: "
                "make layers that another program mounts with create"
            )
        layer = self._dir(id)
        link = self._read(layer / "link")
        if link is None:
            raise LayerNotFound(f"layer {id} does not exist")
        lowers = [self.home / p for p in self._lowers(id)]
        if not lowers:
            return [MountSpec.bind(layer / "diff", readonly=readonly)]
        if readonly:
            return [ovl.external_mount([self.home / _LINK_DIR / link, *lowers], None, None, self.mount_opts)]
        return [ovl.external_mount(lowers, layer / "diff", layer / "work", self.mount_opts)]

    # ------------------------------------------------------------ native diff

    def _native(self, id: str, parent: str | None) -> bool:
        """Whether `id`'s upper dir is exactly its changeset against `parent`."""
        if not self.native_diff:
            return False
        lowers = self._lowers(id)
        if parent is None:
            return not lowers
        link = self._link(parent)
        return bool(lowers) and link is not None and lowers[0] == f"{_LINK_DIR}/{link}"

    def _upper(self, id: str) -> pathlib.Path:
        layer = self._dir(id)
        if not layer.is_dir():
            raise LayerNotFound(f"layer {id} does not exist")
        return layer if self._compact(id) else layer / "diff"

    def apply_diff(self, id: str, parent: str | None, stream: BinaryIO) -> int:
        if not self._native(id, parent):
            return super().apply_diff(id, parent, stream)
        size = self.apply_detached(id, stream)
        self.finish_apply(id, parent)
        return size

    def applies_detached(self) -> bool:
        """An image layer's diff dir is its own: only the whiteout fix-ups need the parent."""
        return self.native_diff

    def apply_detached(self, id: str, stream: BinaryIO) -> int:
        if not self._lowers(id):
            # A bottom layer has nothing below to hide, and its diff dir is what `get`
            # shows directly: whiteout markers there would appear as device nodes.
            return archive.apply_layer(stream, self._upper(id), whiteouts="oci")
        return archive.apply_layer(stream, self._upper(id), whiteouts="overlay")

    def finish_apply(self, id: str, parent: str | None) -> None:
        if parent is None:
            return
        upper = self._upper(id)
        view = self.get(parent)
        try:
            upperdir.drop_needless_whiteouts(upper, view)
            if upperdir.is_opaque(upper):
                upperdir.expand_root_opaque(upper, view)
        finally:
            self.put(parent)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        if not self._native(id, parent):
            return super().changes(id, parent)
        upper = self._upper(id)
        if parent is None:
            return upperdir.upper_changes(upper, None)
        view = self.get(parent)
        try:
            return upperdir.upper_changes(upper, view)
        finally:
            self.put(parent)
