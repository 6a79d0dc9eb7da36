"""Credentials against real registries: htpasswd over TLS, Bearer tokens, login/logout, TLS failures."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pytest

from cowstore.distribution import Credential, Puller, Pusher, login, logout
from cowstore.distribution.auth import parse_challenge
from cowstore.distribution.errors import Denied, NotLoggedIn, RegistryUnavailable, TLSFailure, Unauthorized
from cowstore.distribution.transport import is_loopback
from cowstore.images import Image
from cowstore.store import Store
from tests.distribution.conftest import PASSWORD, USER, settings
from tests.support.faultproxy import FaultProxy
from tests.support.registry import (
    CertAuthority,
    RegistryServer,
    TokenServer,
    client_certificate,
    free_port,
    start_registry,
)


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("127.8.9.1") and is_loopback("localhost:1")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example:5000") and not is_loopback("10.0.0.1:5000")


def test_tls_with_htpasswd_via_login_and_certs_d(
    store: Store,
    other_store: Store,
    demo: Image,
    secure_registry: RegistryServer,
    ca: CertAuthority,
    isolated_home: pathlib.Path,
) -> None:
    host = secure_registry.host
    certs = isolated_home / "containers-certs.d" / host
    certs.mkdir(parents=True)
    shutil.copy(ca.ca_crt, certs / "ca.crt")
    with pytest.raises(Unauthorized, match="authentication required"):
        Pusher(store, settings()).push("busybox-demo:latest", f"{host}/private/demo:1")
    with pytest.raises(Unauthorized):
        login(host, Credential(USER, "wrong"), settings())
    written = login(host, Credential(USER, PASSWORD), settings())
    assert written == isolated_home / "run" / "containers" / "auth.json"
    assert os.stat(written).st_mode & 0o777 == 0o600
    assert json.loads(written.read_text())["auths"][host]["auth"]
    Pusher(store, settings()).push("busybox-demo:latest", f"{host}/private/demo:1")
    [pulled] = Puller(other_store, settings()).pull(f"{host}/private/demo:1")
    assert pulled.image.id == demo.id
    logout(host)
    with pytest.raises(NotLoggedIn):
        logout(host)


def test_docker_config_json_is_read(
    other_store: Store,
    store: Store,
    demo: Image,
    secure_registry: RegistryServer,
    ca: CertAuthority,
    isolated_home: pathlib.Path,
) -> None:
    import base64

    docker = isolated_home / ".docker"
    docker.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"https://{secure_registry.host}": {"auth": token}}}))
    Pusher(store, settings(cert_dir=str(ca.directory))).push("busybox-demo:latest", f"{secure_registry.host}/d/c:1")


def test_unknown_ca_names_the_host_and_the_files_tried(
    store: Store, demo: Image, secure_registry: RegistryServer
) -> None:
    with pytest.raises(TLSFailure) as caught:
        Puller(store, settings()).pull(f"{secure_registry.host}/private/demo:1")
    message = str(caught.value)
    assert secure_registry.host in message and "CERTIFICATE_VERIFY_FAILED" in message and "system CAs" in message


def test_no_tls_verify_skips_verification(store: Store, demo: Image, secure_registry: RegistryServer) -> None:
    with pytest.raises(Unauthorized):  # TLS passed, auth did not
        Pusher(store, settings(tls_verify=False)).push("busybox-demo:latest", f"{secure_registry.host}/x/y:1")


def test_unreachable_registry(store: Store) -> None:
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        Puller(store, settings()).pull(f"127.0.0.1:{free_port()}/nobody/home:1")


def test_bearer_tokens_are_cached_per_scope(
    store: Store, other_store: Store, demo: Image, token_registry: RegistryServer, token_server: TokenServer
) -> None:
    host = token_registry.host
    with pytest.raises(Unauthorized):
        Pusher(store, settings()).push("busybox-demo:latest", f"{host}/tok/demo:1")
    login(host, Credential(USER, PASSWORD), settings())
    token_server.requests.clear()
    Pusher(store, settings()).push("busybox-demo:latest", f"{host}/tok/demo:1")
    assert token_server.requests == ["repository:tok/demo:pull,push"]  # one token for the whole push
    Puller(other_store, settings()).pull(f"{host}/tok/demo:1")
    assert token_server.requests[1:] == ["repository:tok/demo:pull"]
    # cross-repository mount: the token covers the source repository too
    recorder_push = Pusher(store, settings())
    recorder_push.push("busybox-demo:latest", f"{host}/tok/copy:1")
    assert "repository:tok/copy:pull,push repository:tok/demo:pull" in token_server.requests


def test_read_only_user_is_denied_push(store: Store, demo: Image, token_registry: RegistryServer) -> None:
    login(token_registry.host, Credential("reader", "only"), settings())
    with pytest.raises((Denied, Unauthorized)):
        Pusher(store, settings()).push("busybox-demo:latest", f"{token_registry.host}/tok/denied:1")


def test_redirected_blobs_get_no_credentials(
    store: Store, other_store: Store, demo: Image, plain_registry: RegistryServer
) -> None:
    """Blob GETs answer 307 to another host: credentials go to the registry only."""
    from tests.support.faultproxy import Fault

    storage = FaultProxy(plain_registry.host, host_name="localhost")
    front = FaultProxy(plain_registry.host, basic_auth=(USER, PASSWORD))
    try:
        front.faults = [Fault("GET", "/blobs/sha256:", "redirect", times=100, target=f"http://{storage.host}")]
        login(front.host, Credential(USER, PASSWORD), settings())
        Pusher(store, settings()).push("busybox-demo:latest", f"{front.host}/redir/demo:1")
        [pulled] = Puller(other_store, settings()).pull(f"{front.host}/redir/demo:1")
        assert pulled.image.id == demo.id
        blob_gets = [auth for method, path, auth in storage.seen if method == "GET" and "/blobs/" in path]
        assert blob_gets and all(auth is None for auth in blob_gets)
        front_gets = [auth for method, path, auth in front.seen if method == "GET" and "/blobs/" in path]
        assert front_gets and all(front_gets)
    finally:
        storage.stop()
        front.stop()


def test_client_certificates_from_the_cert_dir(
    store: Store, demo: Image, ca: CertAuthority, tmp_path: pathlib.Path
) -> None:
    """A registry that requires TLS client certificates: `--cert-dir` holds the CA and client.cert/.key."""
    registry = start_registry(tmp_path / "mtls", tls=ca, client_auth=True)
    try:
        cert_dir = tmp_path / "certs"
        client_certificate(ca, cert_dir)
        shutil.copy(ca.ca_crt, cert_dir / "ca.crt")
        pushed = Pusher(store, settings(cert_dir=str(cert_dir))).push(
            "busybox-demo:latest", f"{registry.host}/m/demo:1"
        )
        assert pushed.digest.startswith("sha256:")
        (cert_dir / "client.cert").unlink()
        with pytest.raises(TLSFailure, match=f"TLS handshake with {registry.host} failed"):
            Pusher(store, settings(cert_dir=str(cert_dir))).push("busybox-demo:latest", f"{registry.host}/m/demo:2")
    finally:
        registry.stop()
