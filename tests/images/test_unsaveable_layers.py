"""Layers that write through their own symlinks are refused at load, so every stored layer can be saved.

A layer is re-exported byte for byte from its tree and its tar-split. A tar that writes
through a symlink it created (`a -> b`, `a/f`, `b/f`) leaves a tree where a payload is
not under its entry's name: such a layer loaded, then `save` failed and `check --verify`
called it corrupt. The refusal is the same on every driver (tests/conformance checks
the drivers); here the CLI path is checked end to end on vfs.
"""

from __future__ import annotations

import pathlib

import pytest

from ..support.tars import E, build
from .imagearchives import docker_archive
from .test_hostile_images import cli, fails  # noqa: F401  (the fixture)

UNSAVEABLE = {
    "through its own symlink": build(
        E("b", "dir", mode=0o755), E("a", "symlink", target="b"), E("a/f", data=b"one"), E("b/f", data=b"two")
    ),
    "through its own symlink, then the target replaced by a file": build(
        E("b", "dir", mode=0o755), E("a", "symlink", target="b"), E("a/f", data=b"one"), E("b", data=b"file")
    ),
}


@pytest.mark.parametrize("case", sorted(UNSAVEABLE))
def test_unsaveable_layer_is_refused_at_load(cli, tmp_path: pathlib.Path, case: str) -> None:  # noqa: F811
    archive = tmp_path / "layer.tar"
    archive.write_bytes(docker_archive([([UNSAVEABLE[case]], ["unsaveable:1"])]))
    fails(cli("load", "-i", str(archive)), "own layer")


@pytest.mark.parametrize(
    "layer",
    [
        build(E("d", "dir", mode=0o755), E("d", "dir", mode=0o700), E("e"), E("e"), E("d/f", data=b"x")),
        build(E("a", "dir", mode=0o755), E("a/b", data=b"kept"), E(".wh.a")),  # whiteouts hide lower layers only
        build(E("x", data=b"kept"), E(".wh.x")),
        build(E("f", data=b"first"), E("f", data=b"second")),  # payloads the tree lost round-trip via tar-split
        build(E("d", "dir", mode=0o755), E("d/f", data=b"x"), E("d", data=b"file")),
    ],
)
def test_layers_that_keep_their_payloads_load_and_save(cli, tmp_path: pathlib.Path, layer: bytes) -> None:  # noqa: F811
    archive = tmp_path / "ok.tar"
    archive.write_bytes(docker_archive([([layer], ["fine:1"])]))
    assert cli("load", "-i", str(archive)).exit_code == 0
    assert cli("save", "-o", str(tmp_path / "out.tar"), "fine:1").exit_code == 0
    assert cli("rmi", "fine:1").exit_code == 0
