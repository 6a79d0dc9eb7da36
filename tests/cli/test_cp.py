"""`cowstore cp` in and out of containers, and the hostile cases 46-48 of the catalogue."""

from __future__ import annotations

import os
import pathlib
import threading

import pytest
from click.testing import CliRunner, Result

from cowstore.cli import main
from cowstore.containercp import copy_in, copy_out
from cowstore.demo import build_image_archive
from cowstore.store import Store

from ..archive.test_hostile import fingerprint


@pytest.fixture
def ctr(tmp_path: pathlib.Path):
    root = tmp_path / "root"

    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", *args])

    archive = tmp_path / "img.tar"
    archive.write_bytes(build_image_archive())
    assert cli("load", "-i", str(archive)).exit_code == 0
    assert cli("create", "--name", "c1", "busybox-demo").exit_code == 0
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "shadow").write_text("host secret")
    before = fingerprint(sentinel)
    cli.root, cli.sentinel = root, sentinel  # type: ignore[attr-defined]
    yield cli
    assert fingerprint(sentinel) == before
    Store(root, "vfs").shutdown()


def container_root(cli) -> pathlib.Path:
    with Store(cli.root, "vfs") as store:
        path = store.containers.mount("c1")
        store.containers.umount("c1")
        return path


def test_copy_file_and_directory_round_trip(ctr, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "payload"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("data")
    os.symlink("sub/f", src / "link")
    assert ctr("cp", str(src), "c1:/opt").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    result = ctr("cp", "c1:/opt", str(out))  # /opt did not exist: it became the copy itself
    assert result.exit_code == 0, result.output
    assert (out / "opt" / "sub" / "f").read_text() == "data"
    assert os.readlink(out / "opt" / "link") == "sub/f"
    assert ctr("cp", str(src), "c1:/opt").exit_code == 0  # now /opt exists: the copy goes inside
    assert ctr("cp", "c1:/opt/payload/sub/f", str(out / "f")).exit_code == 0
    assert (out / "f").read_text() == "data"
    assert ctr("cp", "c1:/etc/passwd", str(out / "passwd")).exit_code == 0
    assert "root" in (out / "passwd").read_text()
    assert ctr("cp", "a", "b").exit_code == 2


def test_46_copy_into_symlink_component_lands_in_container(ctr, tmp_path: pathlib.Path) -> None:
    root = container_root(ctr)
    os.symlink(str(ctr.sentinel), root / "test")
    src = tmp_path / "shadow"
    src.write_text("from host")
    assert ctr("cp", str(src), "c1:/test/shadow").exit_code == 1  # dangling inside the container
    assert (ctr.sentinel / "shadow").read_text() == "host secret"
    inside = root / str(ctr.sentinel).lstrip("/")
    inside.mkdir(parents=True)
    assert ctr("cp", str(src), "c1:/test/shadow").exit_code == 0
    assert (inside / "shadow").read_text() == "from host"


def test_47_symlink_swap_race_stays_inside(ctr, tmp_path: pathlib.Path) -> None:
    root = container_root(ctr)
    (root / "data").mkdir()
    (root / "data" / "shadow").write_text("container data")
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            try:
                os.rename(root / "data", root / "data.real")
                os.symlink(str(ctr.sentinel), root / "data")
                os.unlink(root / "data")
                os.rename(root / "data.real", root / "data")
            except OSError:
                pass

    thread = threading.Thread(target=swapper)
    thread.start()
    out = tmp_path / "out"
    out.mkdir()
    try:
        for i in range(1000):
            try:
                copy_out(root, "/data/shadow", out / f"copy-{i}")
            except Exception:
                continue
            assert (out / f"copy-{i}").read_text() == "container data"
            try:
                copy_in(out / f"copy-{i}", root, "/data/shadow")
            except Exception:
                continue
    finally:
        stop.set()
        thread.join()


def test_48_copy_out_symlink_to_host_file(ctr, tmp_path: pathlib.Path) -> None:
    root = container_root(ctr)
    (root / "etc" / "shadow").write_text("container shadow")
    os.symlink("/etc/shadow", root / "link")
    out = tmp_path / "got"
    assert ctr("cp", "c1:/link", str(out)).exit_code == 0
    assert out.read_text() == "container shadow"
