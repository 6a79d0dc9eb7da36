"""`cowstore cp` in and out of containers, and the hostile cases 46-48 of the catalogue."""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import threading

import pytest
from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.containers.cp import CopyError, copy_in, copy_out
from cowstore.errors import NotFound
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
            except (CopyError, NotFound, OSError):
                pass  # a copy that hits the swap may fail (inside the container); it must not escape
            else:
                assert (out / f"copy-{i}").read_text() == "container data"
                with contextlib.suppress(CopyError, NotFound, OSError):
                    copy_in(out / f"copy-{i}", root, "/data/shadow")
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


def test_copy_out_never_writes_through_a_symlink_left_by_an_earlier_copy(ctr, tmp_path: pathlib.Path) -> None:
    """First copy: the container's `d/x -> <sentinel>` lands on the host as that symlink.
    The container then makes `d/x` a real directory holding `shadow`: the second copy must
    replace the host symlink with a directory, never write `shadow` into the sentinel."""
    root = container_root(ctr)
    (root / "d").mkdir()
    os.symlink(str(ctr.sentinel), root / "d" / "x")
    out = tmp_path / "out"
    out.mkdir()
    result = ctr("cp", "c1:/d", str(out))
    assert result.exit_code == 0, result.output
    assert os.readlink(out / "d" / "x") == str(ctr.sentinel)

    os.unlink(root / "d" / "x")
    (root / "d" / "x").mkdir()
    (root / "d" / "x" / "shadow").write_text("container data")
    result = ctr("cp", "c1:/d", str(out))
    assert result.exit_code == 0, result.output
    assert not (out / "d" / "x").is_symlink()
    assert (out / "d" / "x" / "shadow").read_text() == "container data"
    os.symlink(str(ctr.sentinel), out / "x")  # the same with the destination named in full
    result = ctr("cp", "c1:/d/x", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "x" / "shadow").read_text() == "container data"
    assert (ctr.sentinel / "shadow").read_text() == "host secret"


def test_copy_out_refuses_a_file_over_a_host_directory(ctr, tmp_path: pathlib.Path) -> None:
    root = container_root(ctr)
    (root / "d").mkdir()
    (root / "d" / "x").write_text("file now")
    out = tmp_path / "out"
    (out / "d" / "x").mkdir(parents=True)
    result = ctr("cp", "c1:/d", str(out))
    assert result.exit_code == 1
    assert "cannot overwrite the directory" in result.output
    assert (out / "d" / "x").is_dir()


def test_copy_out_closes_every_descriptor_on_failure(ctr, tmp_path: pathlib.Path) -> None:
    root = container_root(ctr)
    out = tmp_path / "out"
    for sub in ("b", "e", "g"):  # whichever is copied first fails with the others on the stack
        (root / "a" / sub / "c").mkdir(parents=True)
        (root / "a" / sub / "z").write_text("file")
        (out / "a" / sub / "z").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(CopyError):
        copy_out(root, "/a", out)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("kind", ["chr", "fifo", "link-to-chr"])
def test_copy_in_refuses_host_devices_and_fifos(ctr, tmp_path: pathlib.Path, kind: str) -> None:
    """`cp /dev/zero c:/z` used to copy forever (filling the disk); a FIFO blocked it for good."""
    source = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        node = tmp_path / "zero"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 5))
        if kind == "chr":
            source = node
        else:
            source.symlink_to(node)
    root = container_root(ctr)
    with pytest.raises(CopyError, match="neither a file nor a directory"):
        copy_in(source, root, "/copied")
    assert not (root / "copied").exists()
