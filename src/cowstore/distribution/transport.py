"""HTTP to one registry over urllib3: scheme choice, authentication, retries, redirects, errors.

- HTTPS first, verified with the registry's TLS settings (certificates.py). Plain HTTP
  is tried only when allowed: with `--no-tls-verify`, or for a loopback registry, which
  Docker treats as insecure by default; a loopback registry that does speak TLS is still
  verified, so a wrong CA is reported, never silently bypassed.
- 401 answers are challenges (auth.py): the request is retried once with credentials.
- 429, 5xx and broken connections are retried with exponential backoff (honouring a
  Retry-After of up to a minute); other answers become cowstore errors naming the
  registry, with the distribution spec's error code.
- Redirects (blob storage behind the registry) are followed by hand so that credentials
  are never sent to another host.
"""

from __future__ import annotations

import ipaddress
import json
import random
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    InsecureRequestWarning,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from cowstore.distribution.auth import Authenticator
from cowstore.distribution.certificates import TLSConfig
from cowstore.distribution.credentials import Credential
from cowstore.distribution.errors import (
    Denied,
    RegistryNotFound,
    RegistryRefused,
    RegistryUnavailable,
    TLSFailure,
    TooManyRequests,
    Unauthorized,
)

USER_AGENT = "cowstore/0.1"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_ERROR_BODY = 64 * 1024
_MAX_REDIRECTS = 5

# Errors of a connection that broke or stalled: worth another attempt (resuming a blob).
TRANSIENT = (ProtocolError, ReadTimeoutError, ConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 8.0
    connect_attempts: int = 2

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`: Retry-After when given, else backoff with jitter."""
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), 60.0)
        backoff = min(self.base_delay * (2**attempt), self.max_delay)
        return backoff * (0.5 + random.random() / 2)


def is_loopback(host: str) -> bool:
    """Whether `host[:port]` names this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.startswith("["):
        name = host[1 : host.find("]")]
    elif host.count(":") == 1:
        name = host.split(":")[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _error_detail(response: urllib3.BaseHTTPResponse) -> tuple[str, str]:
    """(code, message) of the first entry of a distribution-spec error body."""
    try:
        body = response.read(_MAX_ERROR_BODY, decode_content=True)
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError, HTTPError):
        return "", ""


def raise_for_status(response: urllib3.BaseHTTPResponse, host: str, what: str) -> None:
    """Turn a failed answer into the cowstore error that says what went wrong."""
    status = response.status
    if status < 400:
        return
    code, message = _error_detail(response)
    response.release_conn()
    detail = f"{code.lower().replace('_', ' ')}: {message}" if code else f"HTTP {status}"
    text = f"{what}: {detail} (registry {host})"
    if status == 401 or code == "UNAUTHORIZED":
        raise Unauthorized(f"{what}: unauthorized: authentication required (registry {host}); try `cowstore login`")
    if status == 403 or code == "DENIED":
        raise Denied(f"{what}: denied: requested access to the resource is denied (registry {host})")
    if status == 404 or code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
        raise RegistryNotFound(text)
    if status == 429:
        raise TooManyRequests(f"{what}: too many requests: the registry {host} keeps rate-limiting")
    if status >= 500:
        raise RegistryUnavailable(f"{what}: the registry {host} keeps failing ({detail})")
    raise RegistryRefused(text)


class Transport:
    """Requests to one registry endpoint (`host[:port]`), shared by a pull's or push's threads."""

    def __init__(
        self,
        host: str,
        tls: TLSConfig,
        credential: Credential | None = None,
        *,
        allow_http: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.tls = tls
        self.allow_http = (not tls.verify or is_loopback(host)) if allow_http is None else allow_http
        self.retry = retry or RetryPolicy()
        extra = {} if tls.verify else {"cert_reqs": "CERT_NONE", "assert_hostname": False}
        if not tls.verify:
            urllib3.disable_warnings(InsecureRequestWarning)  # the user asked for --no-tls-verify
        self.pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=8,
            ssl_context=tls.context,
            retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            headers={"User-Agent": USER_AGENT},
            **extra,
        )
        self.scheme: str | None = None
        self.auth = Authenticator(host, credential, self._plain_get)

    def close(self) -> None:
        self.pool.clear()

    def url(self, path: str) -> str:
        if self.scheme is None:
            self.ping()
        return f"{self.scheme}://{self.host}{path}"

    def _plain_get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """One GET with no registry credentials attached (the token realm), with retries; body unread."""
        return self._send("GET", url, headers, None, stream=True)

    # ---- connecting ------------------------------------------------------------------

    def ping(self) -> None:
        """`GET /v2/` over HTTPS, else (when allowed) HTTP; learns the scheme and the challenge."""
        schemes = ["https", "http"] if self.allow_http else ["https"]
        failure: BaseException | None = None
        for scheme in schemes:
            try:
                response = self._send("GET", f"{scheme}://{self.host}/v2/", {}, None, stream=False)
            except TLSFailure as exc:
                failure = exc
                if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    break  # it does speak TLS: a plain HTTP fallback would only hide the problem
                continue
            except RegistryUnavailable as exc:
                failure = exc
                continue
            if scheme == "http" and response.status == 400 and failure is not None:
                raise failure  # it speaks TLS (Go answers plain HTTP with 400): the handshake failure is the news
            if response.status == 404:
                raise RegistryRefused(f"{self.host} does not implement the registry API (GET /v2/ answered 404)")
            self.scheme = scheme
            if response.status == 401:
                self.auth.challenged(response.headers.get("WWW-Authenticate"), ())
            elif response.status >= 400:
                raise_for_status(response, self.host, f"ping {self.host}")
            return
        assert failure is not None
        raise failure

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        """One request with retries for 429, 5xx and broken connections; other answers returned."""
        attempt = 0
        while True:
            try:
                response = self.pool.request(
                    method,
                    url,
                    headers=dict(headers),
                    body=body,
                    preload_content=not stream,
                    redirect=False,
                    retries=False,
                )
            except urllib3.exceptions.SSLError as exc:
                cause = exc.__context__ if isinstance(exc.__context__, ssl.SSLError) else exc
                raise TLSFailure(
                    f"TLS handshake with {self.host} failed: {cause}; CA files tried: {self.tls.describe_cas()}"
                ) from (cause if isinstance(cause, ssl.SSLCertVerificationError) else None)
            except (NewConnectionError, ConnectTimeoutError) as exc:
                attempt += 1
                if attempt >= self.retry.connect_attempts:
                    raise RegistryUnavailable(f"registry {self.host} is unreachable: {_reason(exc)}") from None
                time.sleep(self.retry.delay(attempt - 1))
                continue
            except TRANSIENT as exc:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise RegistryUnavailable(f"registry {self.host}: connection failed: {_reason(exc)}") from None
                time.sleep(self.retry.delay(attempt - 1))
                continue
            if response.status in RETRY_STATUSES and attempt + 1 < self.retry.attempts:
                retry_after = response.headers.get("Retry-After")
                response.drain_conn()
                response.release_conn()
                time.sleep(self.retry.delay(attempt, retry_after))
                attempt += 1
                continue
            return response

    # ---- requests --------------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
        follow: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """A request to the registry (a path, or a URL it gave us such as an upload Location).

        Authorization is added for `scopes`; after a challenge the request is retried once
        with fresh credentials. With `follow`, redirects are followed, and a redirect to
        another host gets no credentials.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        scopes = tuple(scopes)
        for _ in range(_MAX_REDIRECTS + 1):
            same_host = urllib.parse.urlsplit(url).netloc == self.host
            sent = {**(headers or {}), **(self.auth.header(scopes) if same_host else {})}
            response = self._send(method, url, sent, body, stream=stream)
            if response.status == 401 and same_host:
                retry_scopes = self.auth.challenged(response.headers.get("WWW-Authenticate"), scopes)
                if retry_scopes is not None:
                    response.drain_conn()
                    response.release_conn()
                    scopes = retry_scopes
                    sent = {**(headers or {}), **self.auth.header(scopes)}
                    response = self._send(method, url, sent, body, stream=stream)
            if follow and response.status in _REDIRECTS and response.headers.get("Location"):
                url = urllib.parse.urljoin(url, response.headers["Location"])
                response.drain_conn()
                response.release_conn()
                continue
            return response
        raise RegistryRefused(f"registry {self.host}: too many redirects for {path_or_url}")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    return text.split(": ", 1)[-1] if "Failed to establish a new connection" in text else text
