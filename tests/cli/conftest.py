"""Fixtures of the CLI's tests: a store root holding the demo image, and the registry tests'
fixtures, shared with the CLI's registry commands (tests/cli/test_registry.py)."""

import pathlib
from collections.abc import Iterator

import pytest

from cowstore import images as imagelib
from cowstore.app.demo import build_image_archive
from cowstore.store import Store
from tests.distribution.conftest import ca, isolated_home, plain_registry, secure_registry

__all__ = ["ca", "isolated_home", "plain_registry", "root", "secure_registry"]


@pytest.fixture
def root(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A vfs store root holding the demo's busybox image; shut down (mounts released) after."""
    path = tmp_path / "root"
    archive = tmp_path / "demo.tar"
    archive.write_bytes(build_image_archive())
    store = Store(path, "vfs")
    try:
        imagelib.load(store.images, str(archive))
    finally:
        store.close()
    try:
        yield path
    finally:
        Store(path, "vfs").shutdown()
