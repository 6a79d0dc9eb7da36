"""Both ways with real clients: skopeo and podman push and pull against the same registry as cowstore."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from cowstore.distribution import Puller, Pusher
from cowstore.images import Image, save
from cowstore.store import Store
from tests.distribution.conftest import Recorder, image_files, settings
from tests.support.podman import podman_command
from tests.support.registry import RegistryServer, need, start_registry


def run(*args: str | pathlib.Path, timeout: int = 180) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def skopeo_digest(ref: str) -> str:
    return json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"]


@pytest.fixture
def skopeo_pushed(store: Store, demo: Image, plain_registry: RegistryServer, tmp_path: pathlib.Path) -> str:
    """The demo image as skopeo pushes it (its own gzip), starting from our OCI layout."""
    need("skopeo")
    layout = tmp_path / "layout"
    save(store.images, ["busybox-demo:latest"], layout, fmt="oci-dir")
    ref = f"{plain_registry.host}/skopeo/demo:1"
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{ref}")
    return ref


def test_skopeo_pushes_cowstore_pulls_and_pushes_the_same_manifest(
    other_store: Store,
    demo: Image,
    skopeo_pushed: str,
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
) -> None:
    original = skopeo_digest(skopeo_pushed)
    [pulled] = Puller(other_store, settings()).pull(skopeo_pushed)
    assert pulled.image.id == demo.id and pulled.reference.digest == original
    # another repository of the same registry: the blobs are mounted, the manifest is unchanged
    recorder = Recorder()
    copy = Pusher(other_store, settings(), recorder).push(skopeo_pushed, f"{plain_registry.host}/skopeo/copy:1")
    assert copy.digest == original
    assert recorder.texts().count("Mounted from skopeo/demo") == len(demo.diff_ids)
    # another registry: the kept blobs go up byte for byte
    elsewhere = Pusher(other_store, settings()).push(skopeo_pushed, f"{second_registry.host}/mirror/demo:1")
    assert elsewhere.digest == original
    assert skopeo_digest(f"{second_registry.host}/mirror/demo:1") == original
    # and again: same digest, every blob already there
    recorder = Recorder()
    again = Pusher(other_store, settings(), recorder).push(skopeo_pushed, f"{second_registry.host}/mirror/demo:1")
    assert again.digest == original
    assert recorder.texts() == ["Layer already exists"] * len(demo.diff_ids)


def test_cowstore_pushes_skopeo_and_podman_pull_the_same_files(
    store: Store, demo: Image, plain_registry: RegistryServer, tmp_path: pathlib.Path
) -> None:
    need("skopeo")
    need("podman")
    ref = f"{plain_registry.host}/cowstore/demo:1"
    pushed = Pusher(store, settings()).push("busybox-demo:latest", ref, compression="zstd")
    assert skopeo_digest(ref) == pushed.digest
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'copy'}:1")
    info = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'copy'}:1"))
    assert len(info["Layers"]) == len(demo.diff_ids)  # skopeo verified every blob while copying
    with _Podman() as podman:
        run(*podman, "pull", "--tls-verify=false", "-q", ref)
        root = pathlib.Path(run(*podman, "image", "mount", ref).strip())
        try:
            files = {
                str(path.relative_to(root)): path.read_bytes()
                for path in root.rglob("*")
                if path.is_file() and not path.is_symlink()
            }
        finally:
            run(*podman, "image", "unmount", ref)
    ours = image_files(store, demo)
    init_layer = {".cowstoreenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf"}
    assert files == {k: v for k, v in ours.items() if k not in init_layer or k in files}
    assert "bin/busybox" in files


class _Podman:
    """podman with a private root and run root (vfs), cleaned up on exit."""

    def __enter__(self) -> list[str]:
        self.home = pathlib.Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
        self.args = podman_command(self.home / "root", self.home / "run")
        return self.args

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self.args, "rmi", "-a", "-f"], capture_output=True, timeout=120, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def test_pull_through_cache(
    store: Store, other_store: Store, demo: Image, plain_registry: RegistryServer, tmp_path: pathlib.Path
) -> None:
    """A second docker-registry in proxy mode in front of the first: pulls go through it."""
    Pusher(store, settings()).push("busybox-demo:latest", f"{plain_registry.host}/library/demo:1")
    cache = start_registry(tmp_path / "cache", proxy={"remoteurl": f"http://{plain_registry.host}"})
    try:
        [pulled] = Puller(other_store, settings()).pull(f"{cache.host}/library/demo:1")
        assert pulled.image.id == demo.id
        cached = list((tmp_path / "cache" / "data").rglob("data"))
        assert len(cached) >= len(demo.diff_ids) + 1  # the cache kept the blobs it passed on
    finally:
        cache.stop()
