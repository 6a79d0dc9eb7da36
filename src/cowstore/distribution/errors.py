"""Errors of talking to a registry: each names the registry (and repository) at fault.

A registry answers with HTTP statuses and the distribution spec's error codes
(NAME_UNKNOWN, MANIFEST_UNKNOWN, UNAUTHORIZED, DENIED, ...); they are mapped onto
cowstore's categories here so that the CLI prints one line and tests assert a class.
"""

from cowstore.errors import Corrupt, InvalidArgument, NotFound, NotSupported, ResourceExhausted, Unavailable


class RegistryNotFound(NotFound):
    """The repository, tag, manifest or blob does not exist in the registry."""


class Unauthorized(InvalidArgument):
    """The registry wants credentials, or refused the ones given."""


class Denied(InvalidArgument):
    """The credentials were accepted but do not allow this access (push, or a private repository)."""


class RegistryUnavailable(Unavailable):
    """The registry cannot be reached, or kept failing (5xx, resets) after the retries."""


class TLSFailure(Unavailable):
    """The TLS handshake with the registry failed (unknown CA, wrong host, bad client certificate)."""


class TooManyRequests(ResourceExhausted):
    """The registry kept answering 429 (rate limit) after the retries."""


class ManifestInvalid(InvalidArgument):
    """A manifest or index the registry sent is malformed, too large or too deeply nested."""


class ManifestNotSupported(NotSupported):
    """A manifest kind cowstore does not pull (Docker schema 1, an unknown media type)."""


class BlobCorrupt(Corrupt):
    """A blob did not arrive with the size or digest its descriptor announced."""


class NotLoggedIn(NotFound):
    """`logout` from a registry the credential file has no entry for."""


class RegistryRefused(InvalidArgument):
    """The registry refused a request for another reason (its error code and message are given)."""
