"""Exception classes of cowstore.

Every error a user can provoke is one of these, so the CLI can print it as one line
and exit non-zero without a traceback.
"""


class CowstoreError(Exception):
    """Base class of every error cowstore raises on purpose."""


class NotSupported(CowstoreError):
    """The host, the backing filesystem or the driver cannot do what was asked."""


class QuotaNotSupported(NotSupported):
    """A `size` storage option was given where no quota mechanism exists."""


class LayerNotFound(CowstoreError):
    """A layer (driver id, chain id or container mount) does not exist."""


class LayerExists(CowstoreError):
    """A layer or mount with this id or name already exists."""


class LayerInUse(CowstoreError):
    """The layer still has children, mounts or holders."""


class MaxDepthExceeded(CowstoreError):
    """The layer chain is deeper than the driver or the store allows."""

    def __init__(self, message: str = "max depth exceeded") -> None:
        super().__init__(message)


class ArchiveError(CowstoreError):
    """A layer tar is malformed, hostile or exceeds a limit; names the entry."""

    def __init__(self, reason: str, entry: str | None = None) -> None:
        self.entry = entry
        self.reason = reason
        super().__init__(f"{reason}: {entry!r}" if entry is not None else reason)


class BreakoutError(ArchiveError):
    """A tar entry tried to reach outside the layer root."""


class DigestMismatch(CowstoreError):
    """Content does not hash to the digest it was announced with."""


class InvalidDigest(CowstoreError):
    """A digest string is not of the form sha256:<64 lowercase hex>."""


class MountError(CowstoreError):
    """A mount or unmount failed."""


class StoreLocked(CowstoreError):
    """Another process holds the store lock for too long."""


class StoreCorrupt(CowstoreError):
    """The store's metadata is inconsistent or from an unknown schema version."""


class InvalidOption(CowstoreError):
    """A driver or storage option is unknown or has an invalid value."""


class NotMounted(CowstoreError):
    """An unmount of something that is not mounted."""


class LayerNotRetained(CowstoreError):
    """A reference was released that nobody holds (a bookkeeping error)."""


class StagingSpaceExhausted(CowstoreError):
    """Staging a layer stopped before the disk filled up (see --limit min-free-disk)."""
