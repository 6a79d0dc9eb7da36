"""Data roots written by the real dockerd (docker.io 20.10) with vfs, overlay2, overlay and btrfs.

One private dockerd per driver loads a locally built image (busybox plus layers with
hard links, a capability xattr, setuid, owners, a fifo, a device, whiteouts and an opaque
directory), runs a container that changes, deletes and adds files, commits and tags it,
saves and exports, and stops. Then `docker-root import` must give Docker's image ids and
tags, layers byte for byte as `docker save` wrote them, and the container's files as
`docker export` wrote them; the data root must be exactly as dockerd left it.
"""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from cowstore.app.bench.docker_peer import DockerSubject
from cowstore.app.bench.scratch import Scratch
from cowstore.dockerroot import Importer, Source, export_oci
from cowstore.errors import NotSupported
from cowstore.host import loop, mounts
from cowstore.images import save
from cowstore.store import Store

from ..images.imagearchives import docker_archive
from ..support.trees import dir_tree, source_fingerprint, tar_tree
from .content import CONTAINER_SCRIPT, INIT_MARKERS, busybox_layers, feature_layers

# source driver -> the driver of the cowstore store it is imported into
TARGETS = {"vfs": "overlay2", "overlay2": "vfs", "overlay": "overlay2", "btrfs": "overlay2"}


class DockerRun:
    """What one dockerd run left: its data root, `docker save` and `docker export` outputs, ids."""

    def __init__(self, driver: str, scratch: Scratch) -> None:
        self.driver = driver
        self.work = scratch.path(f"work-{driver}")
        data_root = scratch.path(f"data-{driver}")
        if driver == "btrfs":  # a subdirectory: dockerd's stop undoes every mount at or below its root
            self._btrfs(data_root)
            data_root = data_root / "docker"
            data_root.mkdir()
        try:
            docker = DockerSubject(scratch, driver, data_root=data_root)
        except NotSupported as exc:
            pytest.skip(f"dockerd cannot run here: {exc}")
        try:
            archive = self.work / "image.tar"
            archive.write_bytes(docker_archive([(busybox_layers() + feature_layers(), ["droot/test:base"])]))
            docker.cli("load", "-i", str(archive))
            docker.cli("run", "--name", "c1", "--network", "none", "droot/test:base", "sh", "-c", CONTAINER_SCRIPT)
            docker.cli("create", "--name", "idle", "--network", "none", "droot/test:base", "true")
            docker.cli("commit", "c1", "droot/test:committed")
            docker.cli("tag", "droot/test:committed", "droot/other:v2")
            self.ids = {tag: docker.cli("image", "inspect", "--format", "{{.Id}}", tag) for tag in self.tags}
            self.container_id = docker.cli("inspect", "--format", "{{.Id}}", "c1")
            docker.cli("save", "-o", str(self.work / "save.tar"), *self.tags)
            docker.cli("export", "-o", str(self.work / "export.tar"), "c1")
        finally:
            docker.close()
        self.root = data_root

    tags = ("droot/test:base", "droot/test:committed", "droot/other:v2")

    def _btrfs(self, data_root: pathlib.Path) -> None:
        if shutil.which("mkfs.btrfs") is None:
            pytest.skip("mkfs.btrfs is not installed")
        image = self.work / "btrfs.img"
        with open(image, "wb") as fh:
            fh.truncate(1 << 30)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        with loop.attached(image) as device:
            mounts.mount(device, data_root, "btrfs")


@pytest.fixture(scope="module", params=sorted(TARGETS))
def docker_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRun]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    with Scratch(4 << 30, tmp_path_factory.mktemp("docker")) as scratch:
        yield DockerRun(request.param, scratch)


def _save_members(data: bytes) -> dict[str, tuple[bytes, list[bytes]]]:
    """image id -> (config bytes, layer tars) of a docker-save archive."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:

        def read(name: str) -> bytes:
            member = archive.getmember(name)
            while member.issym():
                member = archive.getmember(str(pathlib.PurePosixPath(name).parent.parent / member.linkname[3:]))
            return archive.extractfile(member).read()  # type: ignore[union-attr]

        manifest = json.loads(read("manifest.json"))
        return {
            "sha256:" + entry["Config"].removesuffix(".json"): (
                read(entry["Config"]),
                [read(layer) for layer in entry["Layers"]],
            )
            for entry in manifest
        }


def test_import_gives_dockers_images_layers_and_container(docker_run: DockerRun, tmp_path: pathlib.Path) -> None:
    before = source_fingerprint(docker_run.root)
    with Store(tmp_path / "store", TARGETS[docker_run.driver], sync=False) as store, Source(docker_run.root) as source:
        assert source.driver == docker_run.driver
        listing = source.listing()
        report = Importer(source, store, lambda line: None).run()
        assert report.failed == []
        assert {(o.kind, o.status) for o in report.outcomes} == {("image", "imported"), ("container", "imported")}
        for tag, image_id in docker_run.ids.items():
            assert store.images.get(tag).id == image_id
        saved = io.BytesIO()
        save(store.images, list(docker_run.tags), saved)
        assert _save_members(saved.getvalue()) == _save_members((docker_run.work / "save.tar").read_bytes())
        container = store.containers.get("c1")
        assert container.id == docker_run.container_id
        assert container.image_id == docker_run.ids["droot/test:base"]
        root = store.containers.mount("c1")
        try:
            ours = dir_tree(root, INIT_MARKERS)
        finally:
            store.containers.umount("c1")
        assert store.containers.get("idle").name == "idle"
        store.shutdown()
    docker = tar_tree((docker_run.work / "export.tar").read_bytes(), INIT_MARKERS)
    assert ours.links == docker.links
    assert {p: e for p, e in ours.entries.items() if docker.entries.get(p) != e} == {}
    assert set(ours.entries) == set(docker.entries)
    refs = {c["Name"]: c["ImageRef"] for c in listing["Containers"]}
    assert refs == {"c1": "droot/test:base", "idle": "droot/test:base"}
    assert source_fingerprint(docker_run.root) == before


def test_export_as_oci_layout_for_skopeo(docker_run: DockerRun, tmp_path: pathlib.Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    before = source_fingerprint(docker_run.root)
    layout = tmp_path / "layout"
    with Source(docker_run.root) as source:
        report = export_oci(source, layout, lambda line: None)
    assert report.failed == []
    copy = tmp_path / "copy.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:committed", f"docker-archive:{copy}:droot/test:committed"],
        check=True,
        capture_output=True,
    )
    [(config, layers)] = _save_members(copy.read_bytes()).values()
    expected_config, expected_layers = _save_members((docker_run.work / "save.tar").read_bytes())[
        docker_run.ids["droot/test:committed"]
    ]
    assert config == expected_config
    assert layers == expected_layers
    assert source_fingerprint(docker_run.root) == before
