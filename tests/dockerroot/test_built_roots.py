"""Data roots of aufs and devicemapper, built from Docker's layouts (dockerd cannot run them here).

aufs: plain directories. devicemapper: a kernel-format thin pool (thin_restore) with ext4,
or xfs (Docker's default), on every thin device, the container's journal left unclean. Each must import with its
image ids and tags, layers byte for byte, and the container's files, read-only.
"""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import tarfile
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cowstore.archive import apply_layer
from cowstore.cli import main
from cowstore.dockerroot import Importer, Source
from cowstore.host import loop
from cowstore.images import save
from cowstore.store import Store

from ..support.dockerroots import DOCKER_INIT, RootBuilder
from ..support.trees import dir_tree, source_fingerprint
from .content import CONTAINER_CHANGES, INIT_MARKERS, feature_layers, small_base

LAYERS = [small_base(), *feature_layers()]


class Built:
    def __init__(self, path: pathlib.Path, kind: str) -> None:
        self.kind = kind
        self.driver, _, fs = kind.partition("-")
        builder = RootBuilder(path / "docker", self.driver, fs or "ext4")
        self.base = builder.add_image(LAYERS[:1], ["droot/base:1"])
        self.image = builder.add_image(LAYERS, ["droot/app:1", "droot/app:latest"])
        self.container = builder.add_container(self.image, "web", CONTAINER_CHANGES, "droot/app:1")
        self.root = builder.finish()
        self.expected = path / "expected"
        self.expected.mkdir()
        for tar in [*LAYERS, DOCKER_INIT, CONTAINER_CHANGES]:
            apply_layer(io.BytesIO(tar), self.expected)


@pytest.fixture(scope="module", params=["aufs", "devicemapper", "devicemapper-xfs"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    needs = {"devicemapper": ("thin_restore", "debugfs"), "devicemapper-xfs": ("thin_restore", "mkfs.xfs", "xfs_io")}
    if not all(shutil.which(tool) for tool in needs.get(request.param, ())):
        pytest.skip(f"{' or '.join(needs[request.param])} is not installed")
    yield Built(tmp_path_factory.mktemp(request.param), request.param)


def _saved_layers(data: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return [
            archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive
            if m.name.endswith("/layer.tar") and m.isfile()
        ]


def test_import_keeps_ids_tags_layers_and_changes(built: Built, tmp_path: pathlib.Path) -> None:
    before = source_fingerprint(built.root)
    with Store(tmp_path / "store", "vfs", sync=False) as store, Source(built.root) as source:
        lines: list[str] = []
        report = Importer(source, store, lines.append).run()
        assert report.failed == [], lines
        assert store.images.get("droot/app:latest").id == built.image
        assert store.images.get("droot/app:1").id == built.image
        assert store.images.get("droot/base:1").id == built.base
        saved = io.BytesIO()
        save(store.images, ["droot/app:1"], saved)
        assert sorted(_saved_layers(saved.getvalue())) == sorted(LAYERS)
        web = store.containers.get("web")
        assert (web.id, web.image_id) == (built.container, built.image)
        assert sorted(str(c) for c in store.containers.diff("web"))[:3] == ["A /data", "A /data/a", "A /data/b"]
        root = store.containers.mount("web")
        try:
            ours, expected = dir_tree(root, INIT_MARKERS), dir_tree(built.expected, INIT_MARKERS)
            assert {p: e for p, e in ours.entries.items() if expected.entries.get(p) != e} == {}
            assert ours == expected
        finally:
            store.containers.umount("web")
        again = Importer(source, store, lines.append).run()
        assert {o.status for o in again.outcomes} == {"present"}
        store.shutdown()
    assert source_fingerprint(built.root) == before


def test_ls_lists_driver_images_and_containers(built: Built) -> None:
    with Source(built.root) as source:
        listing = source.listing()
    assert [listing["Driver"]] == [p.name for p in (built.root / "image").iterdir()]
    sizes = {tuple(i["RepoTags"]): i["Size"] for i in listing["Images"]}
    assert sizes[("droot/app:1", "droot/app:latest")] > sizes[("droot/base:1",)] > 0
    [web] = listing["Containers"]
    assert (web["Name"], web["ImageRef"], web["Problems"] if "Problems" in web else None) == (
        "web",
        "droot/app:1",
        None,
    )
    assert web["SizeRw"] > 0
    assert listing["Problems"] == []


def test_a_pool_on_block_devices(built: Built, tmp_path: pathlib.Path) -> None:
    """A direct-lvm data root keeps no pool files: the pool's devices are given on the command line."""
    if built.kind != "devicemapper":
        pytest.skip("pool devices are devicemapper's (and the filesystem does not matter here)")
    pool = built.root / "devicemapper" / "devicemapper"
    root = tmp_path / "docker"
    shutil.copytree(built.root, root, symlinks=True, ignore=lambda d, names: names if d == str(pool) else [])
    base = ["--root", str(tmp_path / "store"), "--driver", "vfs", "docker-root"]
    runner = CliRunner()
    missing = runner.invoke(main, [*base, "import", str(root), "--dry-run"])
    assert missing.exit_code == 1 and "--dm-metadatadev" in missing.stdout
    before = source_fingerprint(pool)
    with loop.attached(pool / "metadata", read_only=True) as meta, loop.attached(pool / "data", read_only=True) as data:
        devices = ["--dm-metadatadev", meta, "--dm-datadev", data]
        listing = runner.invoke(main, [*base, "ls", str(root), *devices, "--format", "json"])
        assert listing.exit_code == 0, listing.output
        assert json.loads(listing.stdout)["Containers"][0]["SizeRw"] > 0
        imported = runner.invoke(main, [*base, "import", str(root), *devices])
        assert imported.exit_code == 0, imported.output
        assert "images: 2 imported; containers: 1 imported" in imported.stdout
    with Store(tmp_path / "store", "vfs", sync=False) as store:
        assert store.containers.get("web").image_id == built.image
        store.shutdown()
    assert source_fingerprint(pool) == before
