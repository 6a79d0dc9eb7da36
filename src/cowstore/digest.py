"""Content digests and the identifiers built from them (OCI image-spec, moby layer store).

Digests from manifests and configs are validated before they are ever used as a path
or a key: only `sha256:` with 64 lowercase hex digits is accepted.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Protocol

from cowstore.errors import DigestMismatch, InvalidDigest

if TYPE_CHECKING:
    import hashlib

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

EMPTY_LAYER_DIGEST = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def check_digest(value: object) -> str:
    """Return `value` if it is a well-formed sha256 digest, else raise InvalidDigest."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidDigest(f"invalid digest {value!r}: expected sha256:<64 lowercase hex>")
    return value


def sha256(data: bytes = b"") -> hashlib._Hash:
    """A new sha256 hash object. hashlib is imported on first use: loading OpenSSL would
    cost each listing command, which never hashes, a few milliseconds of its start-up."""
    import hashlib

    return hashlib.sha256(data)


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + sha256(data).hexdigest()


def chain_id(parent_chain: str | None, diff_id: str) -> str:
    """ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256("<ChainID(L0..n-1)> <DiffID(Ln)>")."""
    check_digest(diff_id)
    if parent_chain is None:
        return diff_id
    check_digest(parent_chain)
    return sha256_bytes(f"{parent_chain} {diff_id}".encode())


def random_id() -> str:
    """A 64-hex id whose first 12 characters never read as a decimal number (moby's rule)."""
    while True:
        value = os.urandom(32).hex()
        if not value[:12].isdigit():
            return value


class Reader(Protocol):
    """Anything bytes are read from: a file, a decompressor, a verifying wrapper."""

    def read(self, n: int = -1, /) -> bytes: ...


class DigestingReader:
    """A read-through stream that hashes every byte; `verify` checks the expected digest."""

    def __init__(self, stream: Reader) -> None:
        self._stream = stream
        self._hash = sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1024 * 1024):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def verify(self, expected: str, what: str) -> None:
        verify_digest(self.digest, expected, what)


def verify_digest(digest: str, expected: str, what: str) -> None:
    """DigestMismatch unless `digest` is `expected`."""
    if digest != expected:
        raise DigestMismatch(f"{what}: content has digest {digest}, expected {expected}")


class Writer(Protocol):
    """Anything bytes are written to: a file, a pipe, a tar member being streamed."""

    def write(self, data: bytes, /) -> object: ...


class DigestingWriter:
    """A write-through stream that hashes every byte written."""

    def __init__(self, out: Writer) -> None:
        self._out = out
        self._hash = sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._out.write(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
