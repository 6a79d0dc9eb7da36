"""Registries for the distribution tests (started once per session) and two private vfs stores.

Every test runs with HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME in a temporary directory,
REGISTRY_AUTH_FILE unset and the certs.d directories redirected, so the host's real
credential files and certificates are never read or written.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Iterator

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.distribution import RetryPolicy, Settings, certificates
from cowstore.images import Image, load
from cowstore.store import Store
from tests.support.registry import CertAuthority, RegistryServer, TokenServer, htpasswd, make_ca, need, start_registry

USER, PASSWORD = "alice", "wonderland"
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.02, max_delay=0.1)


def settings(**kwargs: object) -> Settings:
    return Settings(retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setattr(certificates, "CERTS_DIRS", (home / "containers-certs.d", home / "docker-certs.d"))
    return home


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    need("openssl")
    return make_ca(tmp_path_factory.mktemp("ca"))


def _serve(server: RegistryServer) -> Iterator[RegistryServer]:
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """HTTP, no auth."""
    yield from _serve(start_registry(tmp_path_factory.mktemp("plain")))


@pytest.fixture(scope="session")
def second_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Another HTTP registry without auth: the other end of a copy between registries."""
    yield from _serve(start_registry(tmp_path_factory.mktemp("second")))


@pytest.fixture(scope="session")
def secure_registry(tmp_path_factory: pytest.TempPathFactory, ca: CertAuthority) -> Iterator[RegistryServer]:
    """TLS from the test CA and htpasswd (Basic) auth."""
    need("htpasswd")
    work = tmp_path_factory.mktemp("secure")
    users = htpasswd(work / "htpasswd", USER, PASSWORD)
    auth = {"htpasswd": {"realm": "cowstore-tests", "path": str(users)}}
    yield from _serve(start_registry(work, tls=ca, auth=auth))


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    need("openssl")
    server = TokenServer(tmp_path_factory.mktemp("token"), {USER: PASSWORD, "reader": "only"}, readonly={"reader"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[RegistryServer]:
    """HTTP on loopback with Bearer tokens from the test token server."""
    yield from _serve(start_registry(tmp_path_factory.mktemp("tokenreg"), auth=token_server.registry_auth()))


def _vfs_store(root: pathlib.Path) -> Iterator[Store]:
    s = Store(root, "vfs", sync=False)
    try:
        yield s
    finally:
        s.shutdown()


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    yield from _vfs_store(tmp_path / "store-a")


@pytest.fixture
def other_store(tmp_path: pathlib.Path) -> Iterator[Store]:
    """A second store: the other machine."""
    yield from _vfs_store(tmp_path / "store-b")


@pytest.fixture
def demo(store: Store) -> Image:
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    return image


class Recorder:
    """A Progress that keeps what it was told, for assertions."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.bytes: dict[str, int] = {}

    def begin(self, key: str, phase: str, total: int | None) -> None:
        self.bytes.setdefault(phase, 0)

    def advance(self, key: str, phase: str, amount: int) -> None:
        self.bytes[phase] = self.bytes.get(phase, 0) + amount

    def status(self, key: str, text: str) -> None:
        self.statuses.append((key, text))

    def message(self, text: str) -> None:
        self.messages.append(text)

    def texts(self) -> list[str]:
        return [text for _, text in self.statuses]


def image_files(store: Store, image: Image | str) -> dict[str, bytes]:
    """Every regular file of an image's root filesystem, as a container of it sees them."""
    container = store.containers.create(image if isinstance(image, str) else image.id)
    root = store.containers.mount(container.id)
    try:
        found = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = pathlib.Path(dirpath, name)
                if path.is_file() and not path.is_symlink():
                    found[str(path.relative_to(root))] = path.read_bytes()
        return found
    finally:
        store.containers.umount(container.id)
        store.containers.remove(container.id)
