"""The real `cowstore` CLI through click's runner, on a temporary root with the vfs driver."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import pytest
from click.testing import CliRunner, Result

from cowstore.app.demo import build_image_archive
from cowstore.cli import main
from cowstore.store import Store


@pytest.fixture
def cli(tmp_path: pathlib.Path):
    root = tmp_path / "root"

    def invoke(*args: str, input: bytes | None = None, driver: str = "vfs") -> Result:
        return CliRunner().invoke(main, ["--root", str(root), "--driver", driver, *args], input=input)

    invoke.root = root  # type: ignore[attr-defined]
    try:
        yield invoke
    finally:
        if (root / "cowstore.db").exists():
            Store(root, "vfs").shutdown()


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def fails(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("cowstore: ") and text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


@pytest.fixture
def loaded(cli, tmp_path: pathlib.Path):
    archive = tmp_path / "demo.tar"
    archive.write_bytes(build_image_archive())
    assert ok(cli("load", "-i", str(archive))) == "Loaded image: busybox-demo:latest\n"
    return archive


def rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


def test_image_commands(cli, loaded, tmp_path: pathlib.Path) -> None:
    listing = ok(cli("images"))
    assert listing.splitlines()[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert "busybox-demo" in listing
    rows = json.loads(ok(cli("image", "ls", "--format", "json")))
    assert rows[0]["Repository"] == "busybox-demo" and rows[0]["Tag"] == "latest"
    ok(cli("tag", "busybox-demo", "copy:1"))
    assert len(ok(cli("images", "-q")).split()) == 1
    history = json.loads(ok(cli("history", "busybox-demo", "--format", "json")))
    assert len(history) == 2 and history[-1]["Size"] > 1_000_000
    assert "IMAGE" in ok(cli("image", "history", "copy:1"))
    details = json.loads(ok(cli("image", "inspect", "copy:1")))
    assert details[0]["RepoTags"] == ["busybox-demo:latest", "copy:1"]
    assert json.loads(ok(cli("inspect", "copy:1")))[0]["Id"] == details[0]["Id"]
    image_id = ok(cli("import", "-", "plain:1", "-m", "from stdin", input=rootfs_tar())).strip()
    assert image_id.startswith("sha256:")
    saved = tmp_path / "out.tar"
    ok(cli("save", "-o", str(saved), "copy:1", "plain:1"))
    with tarfile.open(saved) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert sorted(t for m in manifest for t in m["RepoTags"]) == ["copy:1", "plain:1"]
    streamed = cli("save", "plain:1")
    assert streamed.exit_code == 0 and streamed.stdout_bytes[:100].count(b"\0") > 0
    ok(cli("image", "save", "--format", "oci-dir", "-o", str(tmp_path / "layout"), "copy:1"))
    assert (tmp_path / "layout" / "index.json").exists()
    assert ok(cli("rmi", "copy:1")) == "Untagged: copy:1\n"
    removed = ok(cli("image", "rm", "plain:1"))
    assert removed.splitlines()[0] == "Untagged: plain:1" and f"Deleted: {image_id}" in removed
    # the OCI layout loads back; containerd's full-name annotation restores the tag
    assert ok(cli("load", "-i", str(tmp_path / "layout"))) == "Loaded image: copy:1\n"


def test_container_commands(cli, loaded, tmp_path: pathlib.Path) -> None:
    container_id = ok(cli("create", "--name", "web", "busybox-demo")).strip()
    assert len(container_id) == 64
    ok(cli("container", "create", "busybox-demo"))
    path = pathlib.Path(ok(cli("mount", "web")).strip())
    (path / "added.txt").write_text("x")
    assert ok(cli("diff", "web")) == "A /added.txt\n"
    assert json.loads(ok(cli("container", "diff", "web", "--format", "json"))) == [{"Path": "/added.txt", "Kind": "A"}]
    fails(cli("rm", "web"), "is mounted")
    listing = ok(cli("ps"))
    assert "web" in listing and "yes" in listing and "virtual" in listing
    rows = json.loads(ok(cli("container", "ls", "--format", "json")))
    assert len(rows) == 2 and [r["Mounted"] for r in rows if r["Names"] == "web"] == [True]
    ok(cli("umount", "web"))
    inspected = json.loads(ok(cli("inspect", "web")))[0]
    assert inspected["GraphDriver"]["Name"] == "vfs" and inspected["SizeRw"] == 1
    assert json.loads(ok(cli("container", "inspect", container_id[:10])))[0]["Name"] == "web"
    new_image = ok(cli("commit", "-m", "add file", "web", "committed:1")).strip()
    assert json.loads(ok(cli("history", "committed:1", "--format", "json")))[0]["Comment"] == "add file"
    exported = tmp_path / "web.tar"
    ok(cli("export", "-o", str(exported), "web"))
    with tarfile.open(exported) as tar:
        assert "added.txt" in tar.getnames()
    ok(cli("create", "--name", "second", "committed:1"))
    fails(cli("rmi", "committed:1"), "being used by container second")
    ok(cli("rm", "second"))
    assert new_image in ok(cli("rmi", "committed:1"))
    pruned = ok(cli("container", "prune", "-f"))
    assert "Total reclaimed space" in pruned and container_id in pruned
    assert ok(cli("ps", "-q")) == ""


def test_info(cli, loaded) -> None:
    ok(cli("create", "busybox-demo"))
    text = ok(cli("info"))
    assert "Storage Driver: vfs" in text and "Images: 1" in text and "Containers: 1" in text
    details = json.loads(ok(cli("info", "--format", "json")))
    assert details["Driver"] == "vfs" and details["Layers"] == 2 and details["Root"] == str(cli.root)


def test_errors_are_one_line_and_change_nothing(cli, loaded, tmp_path: pathlib.Path) -> None:
    before = ok(cli("images", "--format", "json")), ok(cli("info", "--format", "json"))
    fails(cli("rmi", "nope"), "No such image: nope")
    fails(cli("inspect", "nope"), "No such object: nope")
    fails(cli("mount", "nope"), "No such container: nope")
    fails(cli("create", "nope"), "No such image: nope")
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(build_image_archive()[:300_000])
    fails(cli("load", "-i", str(truncated)), "truncated")
    fails(cli("load", "-i", str(tmp_path / "missing.tar")), "cannot open")
    fails(cli("save", "-o", str(tmp_path / "x.tar"), "nope"), "No such image")
    assert not (tmp_path / "x.tar").exists()
    fails(cli("tag", "busybox-demo", "Bad Name"), "invalid reference")
    fails(cli("info", driver="overlay2"), "was created with the vfs driver")
    assert (ok(cli("images", "--format", "json")), ok(cli("info", "--format", "json"))) == before
    assert cli("images", "--format", "xml").exit_code == 2
    debug = CliRunner().invoke(main, ["--root", str(cli.root), "--debug", "rmi", "nope"])
    assert debug.exit_code == 1 and debug.exception is not None  # --debug lets the traceback through


def test_demo_runs(cli, tmp_path: pathlib.Path) -> None:
    result = cli("demo", "-n", "3")
    out = ok(result)
    assert "TALK'S CLAIM" in out and "other containers unchanged: 2/2" in out
    assert "demo-from-commit reads /hello.txt through its mount: 'written in one container'" in out
    assert not list(cli.root.glob("cowstore-demo-*"))  # cleaned up


@pytest.mark.parametrize("opt", ["size=abc", "bogus=1"])
def test_bad_storage_options_are_one_line_errors(tmp_path: pathlib.Path, opt: str) -> None:
    result = CliRunner().invoke(
        main, ["--root", str(tmp_path / "r"), "--driver", "vfs", "--storage-opt", opt, "images"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("cowstore: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
