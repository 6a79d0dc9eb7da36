"""overlay2 and legacy overlay: kernel overlayfs, and the plumbing both share (`home`, `kernel`, `upperdir`)."""

from cowstore.drivers.overlay.overlay import OverlayDriver
from cowstore.drivers.overlay.overlay2 import Overlay2Driver

__all__ = ["Overlay2Driver", "OverlayDriver"]
