"""A userspace thin-provisioning pool (dm-thin's model) and its block-device exposure.

`pool.ThinPool` is the engine (usable without any mount); `xmldump` speaks
thin_dump's XML; `blockserver` serves active thin devices as files through FUSE so
that `losetup --direct-io=on` turns them into real block devices.
"""

from cowstore.drivers.devicemapper.thinpool.errors import (
    BadMetadata,
    DeviceExists,
    DeviceNotFound,
    MinFreeSpace,
    OutOfRange,
    PoolError,
    PoolFull,
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
    "ThinPool",
]
