"""The storage driver interface: Docker's graphdriver contract with Pythonic names.

A driver stores layers identified by opaque ids, each optionally on top of a parent,
and knows nothing of images, chain ids or containers. The layer store drives it
through exactly the methods of :class:`Driver`. Drivers without a native way to
compute changesets inherit the generic one from :class:`cowstore.drivers.naive.NaiveDiffDriver`.
"""

from __future__ import annotations

import abc
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.archive.changes import Change
from cowstore.errors import NotSupported
from cowstore.host import diskusage


@dataclass(frozen=True)
class DiskUsage:
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

    def __init__(self, home: pathlib.Path, options: Mapping[str, str]) -> None:
        self.home = home
        self.options = dict(options)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.home}>"

    @abc.abstractmethod
    def create(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        """Create an (empty) image layer on top of `parent`; content arrives by apply_diff."""

    @abc.abstractmethod
    def create_rw(self, id: str, parent: str | None, *, storage_opts: Mapping[str, str] | None = None) -> None:
        """Create a writable container layer (also used for the `-init` layer)."""

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

    @abc.abstractmethod
    def diff_size(self, id: str, parent: str | None = None) -> int:
        """Bytes of the changes of `id` against `parent`."""

    def cleanup(self) -> None:  # noqa: B027 - optional: most drivers have something to release
        """Release everything this driver mounted or attached (shutdown)."""

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
