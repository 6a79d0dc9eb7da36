"""Hostile images through `cowstore load`/`import` (catalogue cases 36, 37, 39, 44, 45).

Each must fail with one line naming the problem, exit non-zero, and leave the store
exactly as it was.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import pathlib
import stat

import pytest
import zstandard
from click.testing import CliRunner, Result

from cowstore.cli import main
from cowstore.store import Store

from ..support.tars import layer_tar
from .imagearchives import docker_archive, sha, snapshot, tar_of


@pytest.fixture
def cli(tmp_path: pathlib.Path):
    root = tmp_path / "root"

    def invoke(*args: str, input: bytes | None = None) -> Result:
        return CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", "--no-sync", *args], input=input)

    base = tmp_path / "base.tar"
    base.write_bytes(docker_archive([([layer_tar({"keep": b"stored before"})], ["base:1"])]))
    assert invoke("load", "-i", str(base)).exit_code == 0
    invoke.root = root  # type: ignore[attr-defined]
    with Store(root, "vfs") as store:
        invoke.before = snapshot(store)  # type: ignore[attr-defined]
    yield invoke
    with Store(root, "vfs") as store:
        assert snapshot(store) == invoke.before
        assert store.check(verify_content=True) == []
    Store(root, "vfs").shutdown()


def fails(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("cowstore: ") and text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_36_gzip_bomb_stops_at_the_limit(cli, tmp_path: pathlib.Path) -> None:
    layer = layer_tar({"zeros": bytes(64 * 1024 * 1024)})  # ~64 KiB once gzip'ed
    archive = tmp_path / "bomb.tar"
    archive.write_bytes(docker_archive([([layer], ["bomb:1"])], compression="gzip"))
    assert archive.stat().st_size < 1024 * 1024
    fails(cli("--limit", "max-bytes=8M", "load", "-i", str(archive)), "limit")


def test_36_rootfs_bomb_via_import(cli) -> None:
    payload = lzma.compress(layer_tar({"big": bytes(32 * 1024 * 1024)}))
    fails(cli("--limit", "max-bytes=4M", "import", "-", "bomb:2", input=payload), "limit")


def test_37_zstd_window_too_large(cli) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=31, enable_ldm=True)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as writer:
        writer.write(layer_tar({"f": b"x" * 100_000}))
    fails(cli("import", "-", "zstd:1", input=out.getvalue()), "zstd")


def test_39_entry_count_limit(cli) -> None:
    many = layer_tar({f"f{i}": b"" for i in range(300)})
    fails(cli("--limit", "max-entries=100", "import", "-", "many:1", input=many), "entries")


@pytest.mark.parametrize(
    "bad_id",
    ["sha256:../../../../etc/passwd", "sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32],
)
def test_44_digest_abuse_in_config(cli, tmp_path: pathlib.Path, bad_id: str) -> None:
    layer = layer_tar({"f": b"x"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [bad_id]}, "os": "linux"}).encode()
    archive = tmp_path / "bad.tar"
    archive.write_bytes(docker_archive([([layer], ["bad:1"])], config_override=config))
    result = cli("load", "-i", str(archive))
    assert result.exit_code == 1 and result.stderr.startswith("cowstore: ")


def test_44_dotdot_layer_path_in_manifest(cli, tmp_path: pathlib.Path) -> None:
    manifest = [{"Config": "../../c.json", "RepoTags": ["x:1"], "Layers": ["../../../etc/passwd"]}]
    archive = tmp_path / "bad.tar"
    archive.write_bytes(tar_of({"manifest.json": json.dumps(manifest).encode()}))
    result = cli("load", "-i", str(archive))
    assert result.exit_code == 1 and result.stderr.startswith("cowstore: ")


def test_45_helper_binaries_in_layers_are_never_run(cli, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    script = f"#!/bin/sh\ntouch {marker}\n".encode()
    bait = dict.fromkeys(("usr/bin/xz", "usr/bin/unpigz", "usr/bin/gzip", "bin/tar", "usr/bin/zstd"), script)
    layer = layer_tar(bait, dirs=("usr", "usr/bin", "bin"))
    archive = tmp_path / "bait.tar"
    archive.write_bytes(docker_archive([([layer], ["bait:1"])], compression="gzip"))
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{cli.root}:{env_path}"
    try:
        assert cli("load", "-i", str(archive)).exit_code == 0
        assert cli("create", "--name", "b", "bait:1").exit_code == 0
        assert cli("commit", "b", "bait:2").exit_code == 0
        assert cli("save", "-o", str(tmp_path / "out.tar"), "bait:2").exit_code == 0
        assert cli("export", "-o", str(tmp_path / "fs.tar"), "b").exit_code == 0
        assert cli("rm", "b").exit_code == 0
        assert cli("rmi", "bait:2", "bait:1").exit_code == 0
    finally:
        os.environ["PATH"] = env_path
    assert not marker.exists()


def test_layer_with_setuid_and_devices_stays_private(cli, tmp_path: pathlib.Path) -> None:
    result = cli("import", "-", "suid:1", input=layer_tar({"bin/su": b"#!"}, dirs=("bin",)))
    assert result.exit_code == 0
    assert stat.S_IMODE(os.stat(cli.root).st_mode) == 0o700
    assert cli("rmi", "suid:1").exit_code == 0


def test_digest_of_layer_blob_mismatch(cli, tmp_path: pathlib.Path) -> None:
    good = layer_tar({"f": b"good"})
    evil = layer_tar({"f": b"evil"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(good)]}, "os": "linux"}).encode()
    archive = tmp_path / "swap.tar"
    archive.write_bytes(docker_archive([([evil], ["swap:1"])], config_override=config))
    fails(cli("load", "-i", str(archive)), "digest")
