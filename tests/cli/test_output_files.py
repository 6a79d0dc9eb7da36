"""`save -o`, `export -o` and `save --format oci-dir` against a hostile output directory.

Whoever can write where the archive goes (or in /tmp without fs.protected_symlinks) must
not be able to make a root `save` overwrite another file, and `-o` onto a device node or
FIFO writes into it instead of replacing the node.
"""

from __future__ import annotations

import os
import pathlib
import stat
import tarfile
import threading

import pytest
from click.testing import CliRunner, Result

from cowstore import images as imagelib
from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.errors import AlreadyExists
from cowstore.images import ocilayout
from cowstore.store import Store

VICTIM = b"precious, must not change\n"


@pytest.fixture
def cli(tmp_path: pathlib.Path):
    root = tmp_path / "root"

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", "--no-sync", *args])

    archive = tmp_path / "demo.tar"
    archive.write_bytes(build_image_archive())
    assert invoke("load", "-i", str(archive)).exit_code == 0
    assert invoke("create", "--name", "web", "busybox-demo").exit_code == 0
    invoke.root = root  # type: ignore[attr-defined]
    yield invoke
    Store(root, "vfs").shutdown()


@pytest.fixture
def victim(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


def _ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.mark.parametrize("command", [("save", "busybox-demo"), ("export", "web")])
def test_planted_partial_link_is_not_followed(cli, tmp_path: pathlib.Path, victim, command) -> None:
    out = tmp_path / "out" / "archive.tar"
    out.parent.mkdir()
    (out.parent / ".archive.tar.partial").symlink_to(victim)
    _ok(cli(command[0], "-o", str(out), command[1]))
    assert victim.read_bytes() == VICTIM
    assert stat.S_ISREG(out.lstat().st_mode) and tarfile.is_tarfile(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [".archive.tar.partial", "archive.tar"]


def test_oci_dir_race_after_the_emptiness_check_cannot_redirect_writes(
    cli, tmp_path: pathlib.Path, victim, monkeypatch
) -> None:
    """An attacker who wins the race between the emptiness check and the writes plants links."""
    layout = tmp_path / "layout"
    check = ocilayout.check_empty_target

    def check_then_plant(path: os.PathLike) -> None:
        check(path)
        layout.mkdir(exist_ok=True)
        for name in ("oci-layout", "oci-layout.tmp", "index.json", "index.json.tmp"):
            (layout / name).symlink_to(victim)
        (layout / "blobs").symlink_to(tmp_path / "elsewhere")
        (tmp_path / "elsewhere" / "sha256").mkdir(parents=True)

    monkeypatch.setattr(ocilayout, "check_empty_target", check_then_plant)
    with Store(cli.root, "vfs") as store, pytest.raises(AlreadyExists):
        imagelib.save(store.images, ["busybox-demo"], layout, fmt="oci-dir")
    assert victim.read_bytes() == VICTIM
    assert list((tmp_path / "elsewhere" / "sha256").iterdir()) == []


def test_oci_dir_still_writes_a_layout(cli, tmp_path: pathlib.Path) -> None:
    _ok(cli("save", "--format", "oci-dir", "-o", str(tmp_path / "layout"), "busybox-demo"))
    assert (tmp_path / "layout" / "oci-layout").is_file()
    assert len(list((tmp_path / "layout" / "blobs" / "sha256").iterdir())) == 4


def test_output_onto_a_device_node_writes_into_it(cli, tmp_path: pathlib.Path) -> None:
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    result = cli("save", "-o", str(full), "busybox-demo")
    assert result.exit_code == 1 and "No space left on device" in result.stderr, result.output
    assert stat.S_ISCHR(full.lstat().st_mode)
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _ok(cli("export", "-o", str(null), "web"))
    assert stat.S_ISCHR(null.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_output_into_a_fifo_streams_to_its_reader(cli, tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    _ok(cli("save", "-o", str(fifo), "busybox-demo"))
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received and received[0][257:262] == b"ustar"


def test_output_onto_a_directory_or_a_strangers_link_is_refused(cli, tmp_path: pathlib.Path, victim) -> None:
    result = cli("save", "-o", str(tmp_path), "busybox-demo")
    assert result.exit_code == 1 and "directory" in result.stderr
    link = tmp_path / "link.tar"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)
    result = cli("save", "-o", str(link), "busybox-demo")
    assert result.exit_code == 1 and "symlink owned by uid 65534" in result.stderr, result.output
    assert victim.read_bytes() == VICTIM
