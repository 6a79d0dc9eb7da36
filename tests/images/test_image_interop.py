"""Round trips with the real tools: skopeo, umoci and podman from Debian (skipped if absent)."""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import subprocess

import pytest

from cowstore.app.demo import build_image_archive
from cowstore.images import load, save
from cowstore.store import Store
from tests.support.podman import podman_command


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")


def run(*args: str | pathlib.Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def demo_image(store: Store):
    [image] = load(store.images, io.BytesIO(build_image_archive()))
    return image


def test_skopeo_reads_our_archives(store: Store, demo_image, tmp_path: pathlib.Path) -> None:
    need("skopeo")
    docker = tmp_path / "image.tar"
    with open(docker, "wb") as out:
        save(store.images, ["busybox-demo:latest"], out)
    info = json.loads(run("skopeo", "inspect", f"docker-archive:{docker}"))
    assert info["Layers"] == demo_image.diff_ids
    oci = tmp_path / "oci.tar"
    with open(oci, "wb") as out:
        save(store.images, ["busybox-demo:latest"], out, fmt="oci-archive")
    info = json.loads(run("skopeo", "inspect", f"oci-archive:{oci}:latest"))
    assert info["Layers"] == demo_image.diff_ids


def test_umoci_unpacks_our_layout(store: Store, demo_image, tmp_path: pathlib.Path) -> None:
    need("umoci")
    layout = tmp_path / "layout"
    save(store.images, ["busybox-demo:latest"], layout, fmt="oci-dir")
    run("umoci", "unpack", "--image", f"{layout}:latest", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").stat().st_size > 100_000
    assert (tmp_path / "bundle" / "rootfs" / "etc" / "motd").read_text().startswith("Welcome")


def test_umoci_and_skopeo_built_image_imports(store: Store, tmp_path: pathlib.Path) -> None:
    """An image built with umoci from Debian's busybox, copied by skopeo into a docker archive."""
    need("umoci")
    need("skopeo")
    layout = tmp_path / "built"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v1")
    run("umoci", "unpack", "--image", f"{layout}:v1", tmp_path / "bundle")
    rootfs = tmp_path / "bundle" / "rootfs"
    (rootfs / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    run("umoci", "repack", "--image", f"{layout}:v1", tmp_path / "bundle")
    [from_layout] = load(store.images, layout)
    assert from_layout.tags == ("built:v1",)
    archive = tmp_path / "built.tar"
    run("skopeo", "copy", f"oci:{layout}:v1", f"docker-archive:{archive}:built/by-skopeo:v1")
    [from_archive] = load(store.images, archive)
    assert from_archive.id == from_layout.id  # the same config bytes: one image, now with both tags
    assert from_archive.tags == ("built/by-skopeo:v1",)
    assert store.images.get(from_layout.id).tags == ("built/by-skopeo:v1", "built:v1")
    container = store.containers.create("built/by-skopeo:v1")
    root = store.containers.mount(container.id)
    try:
        assert (root / "bin" / "busybox").stat().st_size == pathlib.Path("/bin/busybox").stat().st_size
    finally:
        store.containers.umount(container.id)


def test_podman_loads_our_save(store: Store, demo_image, tmp_path: pathlib.Path) -> None:
    need("podman")
    archive = tmp_path / "image.tar"
    with open(archive, "wb") as out:
        save(store.images, ["busybox-demo:latest"], out)
    run_root = pathlib.Path("/tmp") / f"cs-podman-{tmp_path.name[-20:]}"  # podman wants a short runroot
    base = podman_command(tmp_path / "podman", run_root)
    try:
        output = run(*base, "load", "-i", archive)
        assert "busybox-demo:latest" in output
        podman_out = tmp_path / "from-podman.tar"
        run(*base, "save", "--format", "docker-archive", "-o", podman_out, "localhost/busybox-demo:latest")
        [back] = load(store.images, podman_out)
        assert back.diff_ids == demo_image.diff_ids
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
        shutil.rmtree(tmp_path / "podman", ignore_errors=True)
