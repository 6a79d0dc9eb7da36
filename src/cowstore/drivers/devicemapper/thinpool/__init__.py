"""A userspace thin-provisioning pool (dm-thin's model).

`pool.ThinPool` is the engine (usable without any mount); `xmldump` speaks
thin_dump's XML. The driver's block server (`..server`) exposes active thin devices
as files through FUSE, which direct-I/O loop devices turn into real block devices.
"""

from cowstore.drivers.devicemapper.thinpool.errors import (
    BadMetadata,
    DeviceExists,
    DeviceNotFound,
    MinFreeSpace,
    OutOfRange,
    PoolError,
    PoolFull,
    ReadOnlyPool,
)
from cowstore.drivers.devicemapper.thinpool.pool import PoolStatus, ThinPool

__all__ = [
    "BadMetadata",
    "DeviceExists",
    "DeviceNotFound",
    "MinFreeSpace",
    "OutOfRange",
    "PoolError",
    "PoolFull",
    "PoolStatus",
    "ReadOnlyPool",
    "ThinPool",
]
