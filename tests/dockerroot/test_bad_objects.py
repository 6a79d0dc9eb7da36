"""A damaged data root: each bad object is reported and skipped, the rest is imported; and the CLI."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cowstore.cli import main
from cowstore.digest import chain_id, sha256_bytes
from cowstore.dockerroot import Importer, NotADockerRoot, Source
from cowstore.dockerroot.tarsplit import BadTarSplit, chunks
from cowstore.store import Store

from ..support.dockerroots import RootBuilder, tar_split
from ..support.tars import E, build
from ..support.trees import source_fingerprint

GOOD = build(E("good", data=b"good layer\n"))
BAD = build(E("bad", data=b"this file will be changed\n"))


class Damaged:
    """Two images, one container of each; the second image's layer file is later changed."""

    def __init__(self, path: pathlib.Path) -> None:
        builder = RootBuilder(path, "vfs")
        self.good = builder.add_image([GOOD], ["droot/good:1"])
        self.bad = builder.add_image([GOOD, BAD], ["droot/bad:1"])
        self.good_container = builder.add_container(self.good, "fine", build(E("x", data=b"x")), "droot/good:1")
        self.bad_container = builder.add_container(self.bad, "broken", build(E("y", data=b"y")), "droot/bad:1")
        self.root = builder.finish()
        bad_chain = chain_id(chain_id(None, sha256_bytes(GOOD)), sha256_bytes(BAD))
        (path / "vfs" / "dir" / builder.cache_ids[bad_chain] / "bad").write_bytes(b"THIS FILE WAS CHANGED!!!!\n")
        (path / "containers" / ("0" * 64)).mkdir()
        (path / "containers" / ("0" * 64) / "config.v2.json").write_text("{not json")


@pytest.fixture
def damaged(tmp_path: pathlib.Path) -> Damaged:
    return Damaged(tmp_path / "docker")


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    s = Store(tmp_path / "store", "vfs", sync=False)
    try:
        yield s
    finally:
        s.shutdown()


def test_bad_objects_are_reported_and_the_rest_goes_on(damaged: Damaged, store: Store) -> None:
    lines: list[str] = []
    with Source(damaged.root) as source:
        report = Importer(source, store, lines.append).run()
    status = {o.id: o.status for o in report.outcomes}
    assert status[damaged.good] == "imported"
    assert status[damaged.bad] == "failed"
    assert status[damaged.good_container] == "imported"
    assert status[damaged.bad_container] == "failed"
    assert status["0" * 64] == "failed"
    assert [image.id for image in store.images.images()] == [damaged.good]
    assert [c.name for c in store.containers.containers()] == ["fine"]
    assert any(line.startswith(f"image {damaged.bad[7:19]}") and "expected" in line for line in lines), lines
    assert report.summary() == "images: 1 failed, 1 imported; containers: 2 failed, 1 imported"


def test_dry_run_verifies_and_stores_nothing(damaged: Damaged, store: Store) -> None:
    with Source(damaged.root) as source:
        report = Importer(source, store, lambda line: None, dry_run=True).run(images_only=True)
    assert {o.id: o.status for o in report.outcomes if o.kind == "image"} == {
        damaged.good: "verified",
        damaged.bad: "failed",
    }
    assert store.images.images() == [] and store.layers.layers() == []


def test_a_tar_split_name_cannot_leave_the_layer(tmp_path: pathlib.Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    (tmp_path / "secret").write_bytes(b"outside the layer")
    (layer / "link").symlink_to(tmp_path / "secret")
    split = tmp_path / "split.json.gz"
    split.write_bytes(tar_split(build(E("../secret", data=b"outside the layer"))))
    with pytest.raises(BadTarSplit, match="missing"):
        b"".join(chunks(split, layer))
    split.write_bytes(tar_split(build(E("link", data=b"outside the layer"))))
    with pytest.raises(BadTarSplit, match="missing"):
        b"".join(chunks(split, layer))


def test_not_a_data_root(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotADockerRoot):
        Source(tmp_path)


def test_cli_ls_import_export(damaged: Damaged, tmp_path: pathlib.Path) -> None:
    before = source_fingerprint(damaged.root)
    runner = CliRunner()
    base = ["--root", str(tmp_path / "cli-store"), "--driver", "vfs", "docker-root"]
    listing = runner.invoke(main, [*base, "ls", str(damaged.root), "--format", "json"])
    assert listing.exit_code == 0, listing.output
    data = json.loads(listing.stdout)
    assert data["Driver"] == "vfs" and {c["Name"] for c in data["Containers"]} == {"fine", "broken"}
    table = runner.invoke(main, [*base, "ls", str(damaged.root)])
    assert "Storage Driver: vfs" in table.stdout and "droot/good" in table.stdout
    imported = runner.invoke(main, [*base, "import", str(damaged.root), "--images-only"])
    assert imported.exit_code == 1
    assert "images: 1 failed, 1 imported; containers: none" in imported.stdout
    assert imported.stderr.startswith("cowstore: 1 object(s) could not be read")
    exported = runner.invoke(main, [*base, "export", str(damaged.root), "--to", "oci-dir", str(tmp_path / "oci")])
    assert exported.exit_code == 1
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == ["docker.io/droot/good:1"]
    assert source_fingerprint(damaged.root) == before
    Store(tmp_path / "cli-store", "vfs").shutdown()
