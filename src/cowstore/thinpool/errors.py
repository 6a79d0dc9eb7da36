"""Errors of the thin pool engine, as cowstore exception classes.

They carry an errno so the block server can answer a FUSE request with the code the
kernel (and the filesystem above the loop device) expects, e.g. ENOSPC when full.
"""

from __future__ import annotations

import errno

from cowstore.errors import CowstoreError, LayerExists, LayerNotFound


class PoolError(CowstoreError):
    """The pool refused an operation; `errno` is what a block request should fail with."""

    errno: int = errno.EIO


class PoolFull(PoolError):
    """No free data (or metadata) block is left and the no-space policy gave up."""

    errno = errno.ENOSPC


class MinFreeSpace(PoolError):
    """Creating a device would leave the pool below `dm.min_free_space`."""

    errno = errno.ENOSPC


class DeviceExists(PoolError, LayerExists):
    """A thin device with this numeric id already exists in the pool."""

    errno = errno.EEXIST


class DeviceNotFound(PoolError, LayerNotFound):
    """No thin device with this numeric id exists in the pool."""

    errno = errno.ENODEV


class BadMetadata(PoolError):
    """The metadata area holds no valid superblock or an inconsistent structure."""


class OutOfRange(PoolError):
    """An I/O request reaches beyond the end of the thin device."""

    errno = errno.EINVAL
