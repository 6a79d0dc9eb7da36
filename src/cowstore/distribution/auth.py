"""Registry authentication: the `WWW-Authenticate` challenge, Basic, and Bearer tokens.

A registry that wants credentials answers 401 with a challenge. `Basic realm=...` means
sending the user's credentials on every request; `Bearer realm=...,service=...,scope=...`
means fetching a token from the realm (with the credentials as Basic auth, if any) for
the scopes an operation needs (`repository:team/app:pull,push`) and sending that. Tokens
are cached per set of scopes until shortly before they expire (`expires_in`, 60 s when
the server does not say), so a pull asks the token server once, not once per blob.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

import urllib3

from cowstore.distribution.credentials import Credential
from cowstore.distribution.errors import RegistryUnavailable, Unauthorized

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_MIN_LIFETIME = 60.0
_EARLY = 10.0  # renew a token this many seconds before it expires
_MAX_TOKEN_REPLY = 1024 * 1024

Fetch = Callable[[str, dict[str, str]], urllib3.BaseHTTPResponse]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def basic_header(credential: Credential) -> str:
    return "Basic " + base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()


class Authenticator:
    """Authorization headers for one registry, learnt from its challenges."""

    def __init__(self, host: str, credential: Credential | None, fetch: Fetch) -> None:
        self.host = host
        self.credential = credential
        self._fetch = fetch  # GET url with headers, for the token realm
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def header(self, scopes: Iterable[str]) -> dict[str, str]:
        """The Authorization header for a request needing `scopes` (empty before any challenge)."""
        if self.scheme == "basic" and self.credential is not None:
            return {"Authorization": basic_header(self.credential)}
        if self.scheme == "bearer":
            return {"Authorization": f"Bearer {self._token(tuple(sorted(set(scopes))))}"}
        return {}

    def challenged(self, header: str | None, scopes: Iterable[str]) -> tuple[str, ...] | None:
        """Learn from a 401's challenge: the scopes to retry with, or None when retrying cannot help.

        A Bearer challenge may name a scope of its own (a blob mount needs pull access to
        the source repository too): the retry asks for both. A cached token for those
        scopes was just refused, so it is dropped.
        """
        if not header:
            return None
        scheme, params = parse_challenge(header)
        if scheme not in ("basic", "bearer") or (scheme == "basic" and self.credential is None):
            return None
        wanted = set(scopes)
        if scheme == "bearer":
            wanted |= set(params.get("scope", "").split())
        key = tuple(sorted(wanted))
        with self._lock:
            self.scheme, self.params = scheme, params
            self._tokens.pop(key, None)
        return key

    def _token(self, scopes: tuple[str, ...]) -> str:
        with self._lock:
            cached = self._tokens.get(scopes)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        token, lifetime = self._request_token(scopes)
        with self._lock:
            self._tokens[scopes] = (token, time.monotonic() + max(lifetime - _EARLY, 1.0))
        return token

    def _request_token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = self.params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise Unauthorized(f"{self.host}: the registry's Bearer challenge has no usable realm ({realm!r})")
        query: list[tuple[str, str]] = []
        if self.params.get("service"):
            query.append(("service", self.params["service"]))
        query += [("scope", scope) for scope in scopes]
        headers = {}
        if self.credential is not None:
            query.append(("account", self.credential.username))
            headers["Authorization"] = basic_header(self.credential)
        separator = "&" if "?" in realm else "?"
        url = realm + (separator + urllib.parse.urlencode(query) if query else "")
        reply = self._fetch(url, headers)
        try:
            body = reply.read(_MAX_TOKEN_REPLY + 1, decode_content=True)
        finally:
            reply.release_conn()
        if len(body) > _MAX_TOKEN_REPLY:
            raise RegistryUnavailable(
                f"{self.host}: the token server at {realm} sent more than {_MAX_TOKEN_REPLY} bytes"
            )
        if reply.status in (401, 403):
            who = f"as {self.credential.username}" if self.credential else "without credentials"
            raise Unauthorized(f"{self.host}: unauthorized: the token server refused access {who}")
        if reply.status != 200:
            raise RegistryUnavailable(f"{self.host}: the token server at {realm} answered HTTP {reply.status}")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RegistryUnavailable(f"{self.host}: the token server at {realm} sent no JSON") from None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryUnavailable(f"{self.host}: the token server at {realm} sent no token")
        lifetime = data.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else _MIN_LIFETIME
        return token, max(seconds, _MIN_LIFETIME)
