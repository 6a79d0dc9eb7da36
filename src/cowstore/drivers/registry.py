"""The public driver names and the lazy way from a name to a running driver.

A driver's folder is imported only when that driver is asked for, so a driver whose
code needs host features (or is deleted from the tree) does not break the others.
"""

from __future__ import annotations

import importlib
import os
import pathlib
from collections.abc import Mapping

from cowstore.drivers.driver import Driver
from cowstore.errors import NotSupported

# Public names in Docker 20.10's automatic-selection priority order, with the module
# and class that implement each.
_DRIVERS: dict[str, str] = {
    "btrfs": "cowstore.drivers.btrfs:BtrfsDriver",
    "overlay2": "cowstore.drivers.overlay.overlay2:Overlay2Driver",
    "aufs": "cowstore.drivers.aufs:AufsDriver",
    "overlay": "cowstore.drivers.overlay.overlay:OverlayDriver",
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
        folder = ".".join(module_name.split(".")[:3])  # cowstore.drivers.<folder>: a driver's whole code
        if exc.name not in (folder, module_name):
            raise
        raise NotSupported(f"driver not supported: {name} is not part of this build") from None
    cls: type[Driver] = getattr(module, class_name)
    return cls


def open_driver(name: str, home: str | os.PathLike, options: Mapping[str, str] | None = None) -> Driver:
    """Initialise driver `name` in directory `home`; NotSupported when this host cannot run it."""
    cls = driver_class(name)
    path = pathlib.Path(home).absolute()
    return cls(path, dict(options or {}))
