"""The error vocabulary of cowstore: a few categories, with domain errors beneath them.

Every error a user can provoke is a CowstoreError, so the CLI prints it as one line
and exits non-zero without a traceback. Each belongs to exactly one category, in the
manner of containerd's errdefs: callers (the CLI, a gRPC front end, tests) decide
what to do by category, and a domain subclass (LayerNotFound, ImageInUse, ...) only
adds a precise name. Domain errors that belong to one part of the program (images,
containers, a driver) are defined there, under one of these categories.
"""

import contextlib
import errno
from collections.abc import Iterator


class CowstoreError(Exception):
    """Base class of every error cowstore raises on purpose."""


# ---- categories ---------------------------------------------------------------------


class NotFound(CowstoreError):
    """The named object (layer, image, container, device, file) does not exist."""


class AlreadyExists(CowstoreError):
    """An object with this name or id exists already."""


class InUse(CowstoreError):
    """The object is still used (mounted, referenced, has children) and was not forced."""


class InvalidArgument(CowstoreError):
    """The request or its input is malformed, hostile, or beyond a configured limit."""


class NotSupported(CowstoreError):
    """The host, the backing filesystem or the driver cannot do what was asked."""


class Unavailable(CowstoreError):
    """Something the operation needs (a lock, a server, a mount) is not available now."""


class ResourceExhausted(CowstoreError):
    """A disk, a pool or a quota is full (or would fall below its reserve)."""


class Corrupt(CowstoreError):
    """Stored data or metadata is inconsistent, or does not hash to its digest."""


CATEGORIES: tuple[type[CowstoreError], ...] = (
    NotFound,
    AlreadyExists,
    InUse,
    InvalidArgument,
    NotSupported,
    Unavailable,
    ResourceExhausted,
    Corrupt,
)


def category(exc: BaseException) -> type[CowstoreError] | None:
    """The category an error belongs to; None for anything that is not a CowstoreError."""
    return next((cat for cat in CATEGORIES if isinstance(exc, cat)), None)


# ---- domain errors shared by several layers -----------------------------------------


class LayerNotFound(NotFound):
    """A layer (driver id, chain id or container mount) does not exist."""


class LayerExists(AlreadyExists):
    """A layer or mount with this id or name already exists."""


class LayerInUse(InUse):
    """The layer still has children, mounts or holders."""


class NotMounted(InvalidArgument):
    """An unmount of something that is not mounted."""


class MaxDepthExceeded(InvalidArgument):
    """The layer chain is deeper than the driver or the store allows."""

    def __init__(self, message: str = "max depth exceeded") -> None:
        super().__init__(message)


class InvalidOption(InvalidArgument):
    """A driver or storage option is unknown or has an invalid value."""


class ArchiveError(InvalidArgument):
    """A layer tar is malformed, hostile or exceeds a limit; names the entry."""

    def __init__(self, reason: str, entry: str | None = None) -> None:
        self.entry = entry
        self.reason = reason
        super().__init__(f"{reason}: {entry!r}" if entry is not None else reason)


class BreakoutError(ArchiveError):
    """A tar entry tried to reach outside the layer root."""


class InvalidDigest(InvalidArgument):
    """A digest string is not of the form sha256:<64 lowercase hex>."""


class LayerNotRetained(InvalidArgument):
    """A reference was released that nobody holds (a bookkeeping error)."""


class DigestMismatch(Corrupt):
    """Content does not hash to the digest it was announced with."""


class StoreCorrupt(Corrupt):
    """The store's metadata is inconsistent or from an unknown schema version."""


class MountError(Unavailable):
    """A mount or unmount failed."""


class StoreLocked(Unavailable):
    """Another process holds the store lock for too long."""


class StagingSpaceExhausted(ResourceExhausted):
    """Staging a layer stopped before the disk filled up (see --limit min-free-disk)."""


class NoSpace(ResourceExhausted):
    """The filesystem under the store is full (ENOSPC, a quota, or the database could not grow)."""


@contextlib.contextmanager
def space_errors(what: str) -> Iterator[None]:
    """Turn a full disk or quota met while doing `what` into NoSpace, one line that says so."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise NoSpace(f"{what}: no space left on device{where}") from exc
