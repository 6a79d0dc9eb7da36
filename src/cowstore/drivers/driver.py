"""The storage driver interface: Docker's graphdriver contract with Pythonic names.

A driver stores layers identified by opaque ids, each optionally on top of a parent,
and knows nothing of images, chain ids or containers. The layer store drives it
through exactly the methods of :class:`Driver`. Drivers without a native way to
compute changesets inherit the generic one from :class:`cowstore.drivers.naive.NaiveDiffDriver`.

Every driver accepts one option of its own, `layout`: `compact` (the default) lets a
driver and the layer store keep a container as cheap as the kernel allows (one `-init`
layer per image, shared by its containers; for the overlay drivers, a container layer
that is only its upper dir), while `docker` keeps Docker's on-disk layout, one `-init`
layer per container included, for tools that read it.
"""

from __future__ import annotations

import abc
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO, NamedTuple

from cowstore.archive.changes import Change
from cowstore.errors import InvalidOption, NotSupported
from cowstore.host import diskusage, fsutil

LAYOUTS = ("compact", "docker")


class MountSpec(NamedTuple):
    """One mount that another program performs itself (containerd's Mount: type, source, options)."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    @classmethod
    def bind(cls, path: str | os.PathLike, *, readonly: bool) -> MountSpec:
        """A recursive bind of `path`, read-only or writable, as containerd's own snapshotters give."""
        return cls("bind", os.fspath(path), ("rbind", "ro" if readonly else "rw"))


class DiskUsage(NamedTuple):
    """Bytes a driver's storage really occupies, each block counted once.

    `layers[id]` holds what only that layer (or a later one in the order asked)
    occupies: what a layer shares with an earlier one (its parent's hard links, the
    blocks of the snapshot it is) counts for the earlier one. `other` is the driver's
    own (link directories, counts, a pool's metadata and base device). Together they
    are what the driver's `storage_roots` hold on the store's filesystem.
    """

    layers: dict[str, int]
    other: int

    @property
    def total(self) -> int:
        return sum(self.layers.values()) + self.other


class Driver(abc.ABC):
    """One storage driver instance, rooted at its home directory `<store root>/<name>`."""

    name: str = ""
    # Every layer is plain files and directories on the home's filesystem (no block
    # device, no image file of its own): made by metadata operations that a journaled
    # filesystem writes to disk in the order they were made. The layer store orders its
    # crash markers by that (LayerStore.create_rw).
    files_in_home: bool = False

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        self.home = home
        self.options = {}
        layout = "compact"
        for key, value in options.items():
            if key.strip().lower().rsplit(".", 1)[-1] == "layout":
                layout = value.strip().lower()
            else:
                self.options[key] = value
        if layout not in LAYOUTS:
            raise InvalidOption(f"{self.name}: layout is {' or '.join(LAYOUTS)}, not {layout!r}")
        # Docker's layout: one -init layer per container, Docker-shaped layer directories.
        self.docker_layout = layout == "docker"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.home}>"

    @abc.abstractmethod
    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        """Create an (empty) image layer on top of `parent`; content arrives by apply_diff."""

    @abc.abstractmethod
    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        """Create a writable container layer (also used for the `-init` layer)."""

    def fill(self, id: str, write: Callable[[pathlib.Path], None]) -> None:
        """Let `write` add files to `id`, a layer just made by create_rw and never mounted.

        The layer store fills `-init` layers this way. The default mounts the layer
        around the call; a driver whose layer directory holds exactly the layer's own
        changes overrides it to hand that directory over, with no mount at all (overlay
        makes the layer a hard-linked copy of its lower). Either way `write` sees the
        parent's tree or an empty directory over it, and must only add entries,
        unlinking first whatever stands in the way: never change a file in place, which
        may be the parent's own inode.
        """
        root = self.get(id)
        try:
            write(root)
        finally:
            self.put(id)

    def sync(self, layers: Sequence[str]) -> None:
        """Put `layers`, just made by create or create_rw, on disk (before a record says they exist).

        The default flushes the home's whole filesystem, which also raises the write-back
        errors that only show there (a full disk under a thin device).
        """
        fsutil.syncfs(self.home)

    @abc.abstractmethod
    def remove(self, id: str) -> None:
        """Delete a layer and its storage, unmounting it first if needed.

        Removing a layer that does not exist is not an error: the layer store's
        recovery and `check --repair` finish interrupted removals by calling it again.
        """

    @abc.abstractmethod
    def get(self, id: str) -> pathlib.Path:
        """Make the layer's full filesystem available and return its root; balance with put."""

    @abc.abstractmethod
    def put(self, id: str) -> None:
        """Release one get; the last release unmounts."""

    @abc.abstractmethod
    def exists(self, id: str) -> bool:
        """Whether the layer exists."""

    def status(self) -> list[tuple[str, str]]:
        """The `Storage Driver` lines of `docker info`, in order."""
        return []

    def metadata(self, id: str) -> dict[str, str]:
        """Low-level facts for `inspect` (Docker's GraphDriver.Data)."""
        return {}

    @abc.abstractmethod
    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        """Uncompressed tar of the changes of `id` against `parent` (None: the whole tree)."""

    @abc.abstractmethod
    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """The changes of `id` against `parent`, sorted by path."""

    @abc.abstractmethod
    def apply_diff(self, id: str, parent: str | None, stream: BinaryIO) -> int:
        """Extract an uncompressed layer tar into `id`; return the sum of its entry sizes."""

    def applies_detached(self) -> bool:
        """Whether this driver offers `apply_detached` and `finish_apply` (a two-phase apply_diff).

        A driver that keeps each layer's own changes in a directory of its own can
        extract a layer before its parent holds anything, so the layer store extracts
        the layers of one image side by side and only the short, parent-dependent step
        runs in order (Docker extracts them one after another). A driver that builds a
        layer from a copy or snapshot of its parent (vfs, btrfs, devicemapper, overlay)
        cannot, and keeps the default: no, and apply_diff alone.
        """
        return False

    def apply_detached(self, id: str, stream: BinaryIO) -> int:
        """The first phase of apply_diff: extract what layer `id` itself holds; return its size.

        `id` was made by `create` on its parent, which may still be empty or being
        extracted by another thread: this phase reads and writes only `id`'s storage.
        """
        raise NotSupported(f"{self.name} cannot extract a layer before its parent")

    def finish_apply(self, id: str, parent: str | None) -> None:
        """The second phase: what apply_diff does against the parent's complete tree.

        Called once `parent` (the layer `id` was created on) is complete; the two
        phases together leave `id` as `apply_diff(id, parent, stream)` would.
        """
        raise NotSupported(f"{self.name} cannot extract a layer before its parent")

    @abc.abstractmethod
    def diff_size(self, id: str, parent: str | None = None) -> int:
        """Bytes of the changes of `id` against `parent`."""

    def checked_diff(self, id: str, parent: str | None, check: Callable[[list[Change], int], None]) -> BinaryIO:
        """`diff`, once `check(changes, size)` has accepted the changes and their size (a commit).

        The layer store holds a commit's changes against its limits before any byte of
        the tar is written; `check` raises to refuse them. This default asks `changes`,
        `diff_size` and `diff` in turn; a driver that must mount to find changes
        overrides it to find them once and write the tar from the same mounts.
        """
        check(self.changes(id, parent), self.diff_size(id, parent))
        return self.diff(id, parent)

    def cleanup(self) -> None:  # noqa: B027 - optional: most drivers have something to release
        """Release everything this driver mounted or attached (shutdown)."""

    def external_mounts(self, id: str, *, readonly: bool) -> list[MountSpec]:
        """How a program that mounts by itself (containerd) shows layer `id`, writable or not.

        What such a mount needs to stay valid (a union mount it binds, an attached loop
        device) is set up here and kept until `release_external`, across processes;
        calling again while it is kept reuses it. The mounts must not depend on a
        mount that `get` counts: they outlive the process that asked.
        """
        raise NotSupported(f"{self.name} cannot describe its layers for an external mounter")

    def release_external(self, id: str) -> None:  # noqa: B027 - most drivers keep nothing for it
        """Let go of what `external_mounts` keeps for `id`; nothing kept is no error."""

    def storage_paths(self, id: str) -> list[pathlib.Path]:
        """The files and directories that hold layer `id` and nothing else (for `disk_usage`)."""
        raise NotSupported(f"{self.name} cannot tell where a layer's storage is")

    def storage_roots(self) -> list[pathlib.Path]:
        """What the driver keeps in the store root: its home (and a loopback image beside it)."""
        return [self.home]

    def disk_usage(self, ids: Sequence[str]) -> DiskUsage:
        """Allocated bytes of each layer in `ids` (parents first) and of the rest of the home.

        This default counts inodes below `storage_paths` once each; drivers whose layers
        share blocks rather than inodes (snapshots) count those blocks instead.
        """
        seen: set[tuple[int, int]] = set()
        layers = {id: sum(diskusage.allocated(path, seen) for path in self.storage_paths(id)) for id in ids}
        return DiskUsage(layers, diskusage.allocated(self.home, seen))

    def stale_mounts(self) -> list[str]:
        """Layers whose mount is left by a helper server that died (FUSE: it answers ENOTCONN).

        Only drivers served by a FUSE server (aufs' union server, devicemapper's block
        server) can have any; their next get or put of the layer mounts it afresh, and
        `cowstore check` reports the others.
        """
        return []

    def clear_stale_mount(self, id: str) -> None:  # noqa: B027 - only FUSE-backed drivers have stale mounts
        """Detach the dead mount of `id` (one of `stale_mounts`); its count of users starts again at 0."""

    def ids(self) -> list[str]:
        """Every layer id the driver holds (containers/storage's ListLayers).

        Only `cowstore check` uses it, to find storage that no record owns.
        """
        raise NotSupported(f"{self.name} cannot list its layers")
