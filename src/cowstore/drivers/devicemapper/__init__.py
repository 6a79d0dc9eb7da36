"""devicemapper: thin devices of one pool (`thinpool`), served as block devices by `server`."""

from cowstore.drivers.devicemapper.driver import DeviceMapperDriver, PoolUsage

__all__ = ["DeviceMapperDriver", "PoolUsage"]
