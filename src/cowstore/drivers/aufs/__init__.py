"""aufs: union branches per layer, served by the kernel's aufs or by cowstore's FUSE union (`unionfs`).

The driver class is imported on first use: the union server process imports this
package on its way to `unionfs`, and its start-up time is part of the first mount.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowstore.drivers.aufs.driver import AufsDriver

__all__ = ["AufsDriver"]


def __getattr__(name: str) -> Any:
    if name == "AufsDriver":
        from cowstore.drivers.aufs.driver import AufsDriver

        return AufsDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
