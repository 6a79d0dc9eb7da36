"""The registry API calls a pull and a push make, over one Transport.

Manifests and small blobs (configs) are read with a size bound; layer blobs stream into
an Ingest with resume: after a broken connection the download goes on from the bytes
already written with a `Range` request (a registry that ignores Range resends from the
start and the bytes already held are skipped). Uploads are one monolithic PUT for small
blobs and PATCH chunks for large ones; a chunk that fails is resumed from the offset the
registry reports for the upload session.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import urllib3

from cowstore.digest import sha256_bytes
from cowstore.distribution.blobstore import Cancelled, Ingest
from cowstore.distribution.certificates import tls_config
from cowstore.distribution.credentials import lookup
from cowstore.distribution.errors import BlobCorrupt, ManifestInvalid, RegistryRefused, RegistryUnavailable
from cowstore.distribution.manifests import ACCEPT, MAX_MANIFEST, Descriptor
from cowstore.distribution.transport import TRANSIENT, RetryPolicy, Transport, raise_for_status
from cowstore.images.reference import Remote

_CHUNK = 1024 * 1024
_MAX_TAG_PAGES = 100

Progress = Callable[[int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """What the CLI options say about reaching registries."""

    cert_dir: str | None = None
    tls_verify: bool = True
    authfile: str | None = None
    retry: RetryPolicy = RetryPolicy()
    monolithic_max: int = 32 * 1024 * 1024  # blobs up to this size go up in one PUT
    chunk_size: int = 32 * 1024 * 1024  # larger ones in PATCH chunks of this size


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Registry:
    """One registry endpoint, reached with the settings and the credentials for `remote`."""

    def __init__(self, remote: Remote, settings: Settings) -> None:
        self.domain = remote.domain
        self.endpoint = remote.endpoint
        self.settings = settings
        tls = tls_config(self.endpoint, settings.cert_dir, verify=settings.tls_verify)
        credential = lookup(remote.domain, remote.path, settings.authfile)
        self.transport = Transport(self.endpoint, tls, credential, retry=settings.retry)

    def close(self) -> None:
        self.transport.close()

    # ---- reading ---------------------------------------------------------------------

    def manifest(self, repository: str, reference: str, what: str) -> tuple[bytes, str | None, str]:
        """(body, content type, digest) of a manifest or index; the digest is computed, and
        checked against `reference` when that is a digest."""
        body, response = self._bounded_get(
            f"/v2/{repository}/manifests/{reference}", repository, {"Accept": ACCEPT}, MAX_MANIFEST, what
        )
        digest = sha256_bytes(body)
        if reference.startswith("sha256:") and digest != reference:
            raise BlobCorrupt(f"{what}: the registry sent a manifest with digest {digest}, expected {reference}")
        return body, response.headers.get("Content-Type"), digest

    def small_blob(self, repository: str, descriptor: Descriptor, limit: int, what: str) -> bytes:
        """A blob read into memory (a config), checked against its descriptor."""
        if descriptor.size > limit:
            raise ManifestInvalid(f"{what}: blob of {descriptor.size} bytes is larger than the limit of {limit}")
        body, _ = self._bounded_get(f"/v2/{repository}/blobs/{descriptor.digest}", repository, {}, limit, what)
        if len(body) != descriptor.size or sha256_bytes(body) != descriptor.digest:
            raise BlobCorrupt(f"{what}: blob does not match its descriptor ({descriptor.digest}, {descriptor.size} B)")
        return body

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` again (with backoff) while the connection breaks mid-body."""
        failures = 0
        while True:
            try:
                return attempt()
            except TRANSIENT as exc:
                failures += 1
                if failures >= self.settings.retry.attempts:
                    raise RegistryUnavailable(
                        f"{what}: the transfer from {self.endpoint} kept failing ({exc})"
                    ) from None
                time.sleep(self.settings.retry.delay(failures - 1))

    def _bounded_get(
        self, path: str, repository: str, headers: dict[str, str], limit: int, what: str
    ) -> tuple[bytes, urllib3.BaseHTTPResponse]:
        """A document of at most `limit` bytes, read again when the connection breaks mid-body."""

        def attempt() -> tuple[bytes, urllib3.BaseHTTPResponse]:
            response = self.transport.request(
                "GET", path, scopes=[pull_scope(repository)], headers=headers, stream=True, follow=True
            )
            raise_for_status(response, self.endpoint, what)
            return _bounded(response, limit, what), response

        return self._retrying(what, attempt)

    def download(
        self, repository: str, descriptor: Descriptor, ingest: Ingest, progress: Progress, cancelled: Callable[[], bool]
    ) -> None:
        """Stream a blob into `ingest`, resuming after broken connections, then verify it."""
        path = f"/v2/{repository}/blobs/{descriptor.digest}"

        def attempt() -> None:
            offset = ingest.written
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self.transport.request(
                "GET", path, scopes=[pull_scope(repository)], headers=headers, stream=True, follow=True
            )
            raise_for_status(response, self.endpoint, f"blob {descriptor.digest}")
            skip = offset if response.status == 200 else _range_skip(response, offset)
            for chunk in response.stream(_CHUNK, decode_content=False):
                if cancelled():
                    raise Cancelled("transfer cancelled")
                if skip:
                    drop = min(skip, len(chunk))
                    chunk, skip = chunk[drop:], skip - drop
                if chunk:
                    ingest.write(chunk)
                    progress(len(chunk))
            response.release_conn()
            if ingest.written < descriptor.size:
                raise urllib3.exceptions.ProtocolError("the connection ended before the whole blob arrived")

        self._retrying(f"blob {descriptor.digest}", attempt)
        ingest.finish()

    def tags(self, repository: str) -> list[str]:
        """Every tag of a repository (following the `Link` header's pages)."""
        found: list[str] = []
        url: str | None = f"/v2/{repository}/tags/list"
        for _ in range(_MAX_TAG_PAGES):
            if url is None:
                break
            response = self.transport.request("GET", url, scopes=[pull_scope(repository)])
            raise_for_status(response, self.endpoint, f"tags of {repository}")
            data = response.json() if response.data else {}
            found += [t for t in (data.get("tags") or []) if isinstance(t, str)]
            url = _next_link(response.headers.get("Link"))
        return found

    # ---- writing ---------------------------------------------------------------------

    def exists(self, repository: str, digest: str) -> bool:
        response = self.transport.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=[push_scope(repository)], follow=True
        )
        if response.status == 404:
            return False
        raise_for_status(response, self.endpoint, f"blob {digest}")
        return True

    def mount(self, repository: str, digest: str, source: str) -> str | None:
        """Cross-repository mount; None when mounted, else the upload session the registry opened."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        response = self.transport.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?{query}",
            scopes=[push_scope(repository), pull_scope(source)],
        )
        if response.status == 201:
            return None
        raise_for_status(response, self.endpoint, f"mount {digest} from {source}")
        return self._location(response)

    def upload(
        self,
        repository: str,
        digest: str,
        size: int,
        read_at: Callable[[int, int], bytes],
        progress: Progress,
        session: str | None = None,
    ) -> None:
        """Upload a blob (monolithic or chunked), `read_at(offset, length)` giving its bytes."""
        scopes = [push_scope(repository)]
        if session is None:
            response = self.transport.request("POST", f"/v2/{repository}/blobs/uploads/", scopes=scopes)
            raise_for_status(response, self.endpoint, f"upload of {digest}")
            session = self._location(response)
        body: bytes | None = None
        if size <= self.settings.monolithic_max:
            body = read_at(0, size)  # the closing PUT carries the whole blob
        else:
            session = self._chunks(repository, digest, size, read_at, progress, session)
        response = self.transport.request(
            "PUT",
            _with_query(session, digest=digest),
            scopes=scopes,
            headers={"Content-Type": "application/octet-stream"} if body is not None else None,
            body=body,
        )
        raise_for_status(response, self.endpoint, f"upload of {digest}")
        if body is not None:
            progress(size)

    def _chunks(
        self,
        repository: str,
        digest: str,
        size: int,
        read_at: Callable[[int, int], bytes],
        progress: Progress,
        session: str,
    ) -> str:
        scopes = [push_scope(repository)]
        offset, failures = 0, 0
        while offset < size:
            body = read_at(offset, min(self.settings.chunk_size, size - offset))
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(body) - 1}",
            }
            try:
                response = self.transport.request("PATCH", session, scopes=scopes, headers=headers, body=body)
                if response.status == 202:
                    session = self._location(response)
                    offset += len(body)
                    progress(len(body))
                    continue
                if response.status != 416:
                    raise_for_status(response, self.endpoint, f"upload of {digest}")
            except RegistryUnavailable:
                pass
            failures += 1
            if failures >= self.settings.retry.attempts:
                raise RegistryUnavailable(f"upload of {digest} to {self.endpoint} kept failing")
            time.sleep(self.settings.retry.delay(failures - 1))
            resumed = self._resume_offset(session, scopes)
            progress(resumed - offset)
            offset = resumed
        return session

    def _resume_offset(self, session: str, scopes: list[str]) -> int:
        """Where an upload session stands (`GET` on it: 204 with `Range: 0-<last>`)."""
        response = self.transport.request("GET", session, scopes=scopes)
        raise_for_status(response, self.endpoint, "upload status")
        last = (response.headers.get("Range") or "0--1").rpartition("-")[2]
        return int(last) + 1 if last.lstrip("-").isdigit() else 0

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        digest = sha256_bytes(body)
        response = self.transport.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=[push_scope(repository)],
            headers={"Content-Type": media_type},
            body=body,
        )
        raise_for_status(response, self.endpoint, f"manifest for {repository}:{reference}")
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise BlobCorrupt(f"the registry stored the manifest as {answered}, but it has digest {digest}")
        return digest

    def _location(self, response: urllib3.BaseHTTPResponse) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryRefused(f"registry {self.endpoint} opened an upload without a Location")
        return urllib.parse.urljoin(self.transport.url("/v2/"), location)


def _bounded(response: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        response.release_conn()
        raise ManifestInvalid(f"{what} is larger than {limit} bytes")
    body = response.read(limit + 1, decode_content=True)
    response.drain_conn()
    response.release_conn()
    if len(body) > limit:
        raise ManifestInvalid(f"{what} is larger than {limit} bytes")
    return body


def _range_skip(response: urllib3.BaseHTTPResponse, offset: int) -> int:
    """Bytes to drop from a 206 answer so the data continues at `offset`."""
    content_range = response.headers.get("Content-Range", "")
    start = content_range.removeprefix("bytes ").split("-", 1)[0]
    if not start.isdigit() or int(start) > offset:
        raise urllib3.exceptions.ProtocolError(f"unusable Content-Range {content_range!r} for offset {offset}")
    return offset - int(start)


def _with_query(url: str, **params: str) -> str:
    separator = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + separator + urllib.parse.urlencode(params)


def _next_link(header: str | None) -> str | None:
    """The `rel="next"` target of a Link header, if any."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return target.strip().strip("<>")
    return None


def read_file_at(path: str | os.PathLike) -> Callable[[int, int], bytes]:
    """A `read_at(offset, length)` over a file, for upload."""

    def read_at(offset: int, length: int) -> bytes:
        with open(path, "rb") as handle:
            return os.pread(handle.fileno(), length, offset)

    return read_at
