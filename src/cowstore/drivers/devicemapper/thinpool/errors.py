"""Errors of the thin pool engine, each in one cowstore error category.

A block request that fails is answered with the errno its category stands for
(`PoolError.errno`), which is what the kernel, and the filesystem above the loop
device, expect: ENOSPC when the pool is full, EINVAL past a device's end, and so on.
"""

from __future__ import annotations

import errno

from cowstore.errors import (
    AlreadyExists,
    Corrupt,
    CowstoreError,
    InUse,
    InvalidArgument,
    NotFound,
    NotSupported,
    ResourceExhausted,
)

_ERRNO_BY_CATEGORY: tuple[tuple[type[CowstoreError], int], ...] = (
    (ResourceExhausted, errno.ENOSPC),
    (InvalidArgument, errno.EINVAL),
    (NotFound, errno.ENODEV),
    (AlreadyExists, errno.EEXIST),
    (InUse, errno.EBUSY),
)


class PoolError(CowstoreError):
    """Base of the pool's errors (never raised itself)."""

    @property
    def errno(self) -> int:
        """The errno a block request failing with this error is answered with (EIO by default)."""
        return next((code for category, code in _ERRNO_BY_CATEGORY if isinstance(self, category)), errno.EIO)


class InvalidRequest(PoolError, InvalidArgument):
    """A pool parameter, device id, size or transaction id is out of range or stale."""


class PoolExists(PoolError, AlreadyExists):
    """The metadata area already holds a pool (formatting again would lose it)."""


class PoolFull(PoolError, ResourceExhausted):
    """No free data (or metadata) block is left and the no-space policy gave up."""


class MinFreeSpace(PoolError, ResourceExhausted):
    """Creating a device would leave the pool below `dm.min_free_space`."""


class DeviceExists(PoolError, AlreadyExists):
    """A thin device with this numeric id already exists in the pool."""


class DeviceNotFound(PoolError, NotFound):
    """No thin device with this numeric id exists in the pool."""


class DeviceBusy(PoolError, InUse):
    """The device (or the pool, at shutdown) is still active or open."""


class BadMetadata(PoolError, Corrupt):
    """The metadata area holds no valid superblock or an inconsistent structure."""


class OutOfRange(PoolError, InvalidArgument):
    """An I/O request reaches beyond the end of the thin device."""


class ReadOnlyPool(PoolError, NotSupported):
    """A write, discard or resize reached a pool opened read-only (answered with EROFS)."""

    @property
    def errno(self) -> int:
        return errno.EROFS


ERROR_CLASSES: dict[str, type[PoolError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        PoolExists,
        PoolFull,
        MinFreeSpace,
        DeviceExists,
        DeviceNotFound,
        DeviceBusy,
        BadMetadata,
        OutOfRange,
        ReadOnlyPool,
    )
}
