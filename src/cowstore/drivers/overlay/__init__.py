"""overlay2 and legacy overlay: kernel overlayfs, and the plumbing both share (`home`, `kernel`, `upperdir`).

Each driver's module is imported when its name is first used, so a store on overlay2
never loads the legacy driver (and the other way round).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowstore.drivers.overlay.overlay import OverlayDriver
    from cowstore.drivers.overlay.overlay2 import Overlay2Driver

__all__ = ["Overlay2Driver", "OverlayDriver"]

_MODULES = {"OverlayDriver": "overlay", "Overlay2Driver": "overlay2"}


def __getattr__(name: str) -> object:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
