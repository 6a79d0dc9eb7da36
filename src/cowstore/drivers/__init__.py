"""Storage drivers behind one interface; each driver is one folder holding all its code.

`driver.py` is the interface (Docker's graphdriver contract), `registry.py` maps the
public names to the folders, `naive.py` computes changesets for drivers without a
native way, and `common/` holds what several drivers share (mount counts, transit
names, option parsing, id checks).
"""

from cowstore.drivers.driver import Driver, MountSpec
from cowstore.drivers.registry import driver_class, driver_names, open_driver

__all__ = ["Driver", "MountSpec", "driver_class", "driver_names", "open_driver"]
