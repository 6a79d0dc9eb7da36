"""The storage driver interface: Docker's graphdriver contract with Pythonic names.

A driver stores layers identified by opaque ids, each optionally on top of a parent,
and knows nothing of images, chain ids or containers. The layer store drives it
through exactly the methods of :class:`Driver`. Drivers without a native way to
compute changesets inherit the generic one from :class:`cowstore.drivers.naive.NaiveDiffDriver`.
"""

from __future__ import annotations

import abc
import importlib
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from cowstore.errors import NotSupported

__all__ = ["Change", "Driver", "driver_names", "open_driver"]


@dataclass(frozen=True, order=True)
class Change:
    """One entry of a changeset, like `docker diff` prints it."""

    path: str  # absolute inside the layer, e.g. "/etc/hosts"
    kind: str  # "A" added, "C" changed, "D" deleted

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


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

    def cleanup(self) -> None:
        """Release everything this driver mounted or attached (shutdown)."""

    def ids(self) -> list[str]:
        """Every layer id the driver holds (containers/storage's ListLayers).

        Only `cowstore check` uses it, to find storage that no record owns.
        """
        raise NotSupported(f"{self.name} cannot list its layers")


# Public names in Docker 20.10's automatic-selection priority order, with the module
# and class that implement each. Modules are imported on demand so that a driver whose
# module needs host features does not break the others.
_DRIVERS: dict[str, str] = {
    "btrfs": "cowstore.drivers.btrfs:BtrfsDriver",
    "overlay2": "cowstore.drivers.overlay2:Overlay2Driver",
    "aufs": "cowstore.drivers.aufs:AufsDriver",
    "overlay": "cowstore.drivers.overlay:OverlayDriver",
    "devicemapper": "cowstore.drivers.devicemapper:DeviceMapperDriver",
    "vfs": "cowstore.drivers.vfs:VfsDriver",
}


def driver_names() -> list[str]:
    """The public driver names, in the order automatic selection tries them."""
    return list(_DRIVERS)


def driver_class(name: str) -> type[Driver]:
    """The class implementing driver `name`; NotSupported when unknown or not built."""
    target = _DRIVERS.get(name)
    if target is None:
        raise NotSupported(f"driver not supported: {name!r} (known: {', '.join(_DRIVERS)})")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise NotSupported(f"driver not supported: {name} is not implemented in this build") from None
    return getattr(module, class_name)


def open_driver(name: str, home: str | os.PathLike, options: Mapping[str, str] | None = None) -> Driver:
    """Initialise driver `name` in directory `home`; NotSupported when this host cannot run it."""
    cls = driver_class(name)
    path = pathlib.Path(home).absolute()
    return cls(path, dict(options or {}))
