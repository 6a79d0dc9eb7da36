"""Registry credentials where podman, skopeo and Docker already keep them.

Lookup order follows containers-auth.json(5): `--authfile` or `$REGISTRY_AUTH_FILE` alone
when given; otherwise `${XDG_RUNTIME_DIR}/containers/auth.json` (for root without that
variable, `/run/containers/0/auth.json`), `~/.config/containers/auth.json`, then Docker's
`~/.docker/config.json` (inline `auth` entries, or its `credHelpers`/`credsStore`
programs). `login` writes the first of these, mode 0600, as podman does. Keys may be a
host (`127.0.0.1:5000`), a host with a repository path (most specific wins) or Docker's
legacy `https://index.docker.io/v1/` for Docker Hub.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import pathlib
import subprocess
import tempfile
from dataclasses import dataclass

from cowstore.distribution.errors import NotLoggedIn
from cowstore.errors import InvalidArgument
from cowstore.images.reference import DOCKER_HUB

_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "docker.io")
_MAX_FILE = 1024 * 1024


class BadAuthFile(InvalidArgument):
    """A credential file is not the JSON object it should be."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = ""

    def __repr__(self) -> str:  # never print a password by accident
        return f"Credential(username={self.username!r})"


def _runtime_auth_file() -> pathlib.Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return pathlib.Path(runtime) / "containers" / "auth.json"
    return pathlib.Path(f"/run/containers/{os.geteuid()}/auth.json")


def _home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HOME") or os.path.expanduser("~"))


def write_target(authfile: str | os.PathLike | None = None) -> pathlib.Path:
    """The file `login` writes and `logout` edits."""
    if authfile:
        return pathlib.Path(authfile)
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return pathlib.Path(os.environ["REGISTRY_AUTH_FILE"])
    return _runtime_auth_file()


def search_path(authfile: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """The files read for credentials, first match wins."""
    if authfile or os.environ.get("REGISTRY_AUTH_FILE"):
        return [write_target(authfile)]
    config = pathlib.Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    return [_runtime_auth_file(), config / "containers" / "auth.json", _home() / ".docker" / "config.json"]


def normalize_key(key: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `http://h:5000/v2/` -> `h:5000`; repo paths kept."""
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    key = key.rstrip("/")
    for suffix in ("/v1", "/v2"):
        key = key.removesuffix(suffix)
    host, sep, path = key.partition("/")
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}{sep}{path}"


def _read(path: pathlib.Path) -> dict:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadAuthFile(f"cannot read credential file {path}: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise BadAuthFile(f"credential file {path} is larger than {_MAX_FILE} bytes")
    try:
        data = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadAuthFile(f"credential file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise BadAuthFile(f'credential file {path} has no valid "auths" object')
    return data


def _decode(entry: object, path: pathlib.Path) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise BadAuthFile(f'credential file {path}: an "auth" entry is not base64 of user:password') from None
        if sep:
            return Credential(user, password)
    if isinstance(entry.get("username"), str):
        return Credential(entry["username"], str(entry.get("password", "")))
    return None


def _best_entry(auths: dict, host: str, repository: str | None) -> object | None:
    """The entry for `host/repository` with the longest matching repository prefix, else for `host`."""
    normalized = {normalize_key(key): value for key, value in auths.items() if isinstance(key, str)}
    if repository:
        parts = repository.split("/")
        for end in range(len(parts), 0, -1):
            entry = normalized.get(f"{host}/{'/'.join(parts[:end])}")
            if entry is not None:
                return entry
    return normalized.get(host)


def _helper(name: str, host: str) -> Credential | None:
    """Ask Docker's credential helper program `docker-credential-<name>`."""
    server = "https://index.docker.io/v1/" if host == DOCKER_HUB else host
    try:
        done = subprocess.run(
            [f"docker-credential-{name}", "get"], input=server, capture_output=True, text=True, timeout=30, check=False
        )
        reply = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    if isinstance(reply, dict) and isinstance(reply.get("Username"), str):
        return Credential(reply["Username"], str(reply.get("Secret", "")))
    return None


def lookup(host: str, repository: str | None = None, authfile: str | os.PathLike | None = None) -> Credential | None:
    """Credentials for registry `host` (and `repository` on it), or None for anonymous access."""
    host = normalize_key(host)
    for path in search_path(authfile):
        data = _read(path)
        entry = _best_entry(data.get("auths") or {}, host, repository)
        found = _decode(entry, path)
        if found is not None:
            return found
        helpers = data.get("credHelpers")
        helper = helpers.get(host) if isinstance(helpers, dict) else None
        helper = helper or data.get("credsStore")
        if isinstance(helper, str) and helper:
            found = _helper(helper, host)
            if found is not None:
                return found
    return None


def _write(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            json.dump(data, out, indent="\t")
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def store(host: str, credential: Credential, authfile: str | os.PathLike | None = None) -> pathlib.Path:
    """Record credentials for `host`; returns the file written (0600)."""
    path = write_target(authfile)
    data = _read(path)
    auths = data.setdefault("auths", {})
    key = normalize_key(host)
    for old in [k for k in auths if normalize_key(k) == key]:
        del auths[old]
    token = base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
    auths[key] = {"auth": token}
    _write(path, data)
    return path


def remove(host: str, authfile: str | os.PathLike | None = None) -> pathlib.Path:
    """Forget the credentials of `host`; NotLoggedIn when there are none."""
    path = write_target(authfile)
    data = _read(path)
    auths = data.get("auths") or {}
    key = normalize_key(host)
    matching = [k for k in auths if normalize_key(k) == key]
    if not matching:
        raise NotLoggedIn(f"not logged into {key} (no entry in {path})")
    for old in matching:
        del auths[old]
    _write(path, data)
    return path
