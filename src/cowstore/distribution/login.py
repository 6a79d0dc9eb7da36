"""`cowstore login` / `logout`: check credentials against the registry, then keep them where podman does."""

from __future__ import annotations

import pathlib

from cowstore.distribution import credentials
from cowstore.distribution.certificates import tls_config
from cowstore.distribution.client import Settings
from cowstore.distribution.credentials import Credential
from cowstore.distribution.transport import Transport, raise_for_status
from cowstore.errors import InvalidArgument
from cowstore.images.reference import DOCKER_HUB, HUB_ENDPOINT


def registry_host(text: str) -> str:
    """The registry a login names: `https://h:5000/v2/` -> `h:5000`; Docker Hub's aliases -> docker.io."""
    host = credentials.normalize_key(text).partition("/")[0]
    if not host:
        raise InvalidArgument(f"invalid registry {text!r}")
    return host


def login(registry: str, credential: Credential, settings: Settings | None = None) -> pathlib.Path:
    """Verify `credential` with the registry (its Basic or token challenge) and store it; returns the file."""
    settings = settings or Settings()
    host = registry_host(registry)
    endpoint = HUB_ENDPOINT if host == DOCKER_HUB else host
    tls = tls_config(endpoint, settings.cert_dir, verify=settings.tls_verify)
    transport = Transport(endpoint, tls, credential, retry=settings.retry)
    try:
        transport.ping()
        response = transport.request("GET", "/v2/")
        raise_for_status(response, endpoint, f"login to {host}")
    finally:
        transport.close()
    return credentials.store(host, credential, settings.authfile)


def logout(registry: str, authfile: str | None = None) -> pathlib.Path:
    return credentials.remove(registry_host(registry), authfile)
