"""devicemapper: thin devices of one pool (`thinpool`), served as block devices by `server`.

`kernelpool` reads a pool that the kernel's device-mapper made (Docker's), read-only.
"""

from cowstore.drivers.devicemapper.driver import DeviceMapperDriver, PoolUsage
from cowstore.drivers.devicemapper.kernelpool import KernelPool, probe_filesystem

__all__ = ["DeviceMapperDriver", "KernelPool", "PoolUsage", "probe_filesystem"]
