"""Hostile outer archives for `cowstore load`: the docker-save or OCI tar around the layers.

The outer archive is bounded like the layers in it (disk kept free while it is spooled,
extended headers, entry count), and malformed metadata in it is one line, not a traceback.
Each case leaves the store exactly as it was (the `cli` fixture checks).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import tarfile

import pytest

from ..support.tars import layer_tar
from .imagearchives import config_for, docker_archive, oci_layout, sha, tar_directory
from .test_hostile_images import cli, fails  # noqa: F401  (the fixture)

MiB = 1024 * 1024


def _retar(archive: bytes, out: tarfile.TarFile, *, skip: str | None = None) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as source:
        for member in source:
            if member.name != skip:
                out.addfile(member, source.extractfile(member) if member.isfile() else None)


def _good_archive() -> bytes:
    return docker_archive([([layer_tar({"f": b"payload"})], ["outer:1"])])


def test_outer_gzip_bomb_stops_at_min_free_disk(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    archive = tmp_path / "bomb.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as packed, tarfile.open(fileobj=packed, mode="w") as out:
        info = tarfile.TarInfo("zeros")
        info.size = 256 * MiB
        with open("/dev/zero", "rb") as zeros:
            out.addfile(info, zeros)
        _retar(_good_archive(), out)
    assert archive.stat().st_size < 2 * MiB
    fs = os.statvfs(tmp_path)
    keep_free = fs.f_bavail * fs.f_frsize - 64 * MiB
    fails(cli("--limit", f"min-free-disk={keep_free}", "load", "-i", str(archive)), "stopped reading")


def test_outer_pax_header_over_the_limit(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo("padding")
        info.pax_headers = {"comment": "x" * (2 * MiB)}
        out.addfile(info, io.BytesIO())
        _retar(_good_archive(), out)
    archive = tmp_path / "pax.tar"
    archive.write_bytes(buf.getvalue())
    fails(cli("load", "-i", str(archive)), "max-extended-header")


def test_outer_gnu_long_name_over_the_limit(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as out:
        info = tarfile.TarInfo("d/" * 40_000 + "f")
        out.addfile(info, io.BytesIO())
        _retar(_good_archive(), out)
    archive = tmp_path / "long.tar"
    archive.write_bytes(buf.getvalue())
    fails(cli("--limit", "max-extended-header=64K", "load", "-i", str(archive)), "max-extended-header")


def test_outer_entry_count(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    members = {f"junk{i}": b"" for i in range(50)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for name in members:
            out.addfile(tarfile.TarInfo(name), io.BytesIO())
        _retar(_good_archive(), out)
    archive = tmp_path / "many.tar"
    archive.write_bytes(buf.getvalue())
    fails(cli("--limit", "max-entries=20", "load", "-i", str(archive)), "max-entries")


def _gnu_sparse_header(name: str, realsize: bytes) -> bytes:
    """An old-GNU sparse ('S') header: one 8-byte chunk at 0, `realsize` (12 raw bytes) as the file's size."""
    info = tarfile.TarInfo(name)
    info.size = 512
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT)[:512])
    block[156:157] = b"S"
    block[386:410] = b"00000000000\0" + b"00000000010\0"
    block[483:495] = realsize
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


@pytest.mark.parametrize(
    "pax",
    [
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "x", "GNU.sparse.realsize": "zz"},
        {"GNU.sparse.map": "1,2,abc", "GNU.sparse.size": "10"},
        {"GNU.sparse.numblocks": "99999999999", "GNU.sparse.offset": "0", "GNU.sparse.numbytes": "q"},
    ],
)
def test_outer_malformed_pax_sparse(cli, tmp_path: pathlib.Path, pax: dict) -> None:  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        info = tarfile.TarInfo("sparse")
        info.size = 512
        info.pax_headers = pax
        out.addfile(info, io.BytesIO(b"\1" * 512))
        _retar(_good_archive(), out)
    archive = tmp_path / "sparse.tar"
    archive.write_bytes(buf.getvalue())
    fails(cli("load", "-i", str(archive)), "sparse")


@pytest.mark.parametrize("realsize", [b"\xff" * 12, b"\x80" + b"\x7f" * 11])
def test_outer_malformed_gnu_sparse(cli, tmp_path: pathlib.Path, realsize: bytes) -> None:  # noqa: F811
    """A later member of the layer's name (it wins) that is old-GNU sparse with a negative or absurd size."""
    good = _good_archive()
    with tarfile.open(fileobj=io.BytesIO(good)) as source:
        layer_path = next(m.name for m in source if m.name.endswith("layer.tar"))
        end = source.offset
    archive = tmp_path / "gnusparse.tar"
    archive.write_bytes(good[:end] + _gnu_sparse_header(layer_path, realsize) + b"x" * 512 + bytes(1024))
    fails(cli("--limit", "max-bytes=1M", "load", "-i", str(archive)), "sparse")


def test_nested_oci_index_listing_a_string(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    layout = oci_layout(tmp_path / "layout", [layer_tar({"f": b"x"})])
    nested = json.dumps({"schemaVersion": 2, "manifests": ["sha256:" + "0" * 64]}).encode()
    (layout / "blobs" / "sha256" / sha(nested)[7:]).write_bytes(nested)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": sha(nested),
                "size": len(nested),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    fails(cli("load", "-i", str(layout)), "not a JSON object")
    archive = tmp_path / "layout.tar"
    archive.write_bytes(tar_directory(layout))
    fails(cli("load", "-i", str(archive)), "not a JSON object")


def test_deeply_nested_json(cli, tmp_path: pathlib.Path) -> None:  # noqa: F811
    deep = b"[" * 200_000 + b"]" * 200_000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(deep)
        out.addfile(info, io.BytesIO(deep))
    archive = tmp_path / "deep.tar"
    archive.write_bytes(buf.getvalue())
    fails(cli("load", "-i", str(archive)), "nested too deeply")


@pytest.mark.parametrize("history", [["not an object"], [{"created_by": 42}], {"a": 1}, [{"empty_layer": "yes"}]])
def test_history_entries_must_be_objects_of_strings(cli, tmp_path: pathlib.Path, history) -> None:  # noqa: F811
    layer = layer_tar({"f": b"h"})
    config = json.loads(config_for([layer]))
    config["history"] = history
    archive = tmp_path / "history.tar"
    archive.write_bytes(docker_archive([([layer], ["hist:1"])], config_override=json.dumps(config).encode()))
    fails(cli("load", "-i", str(archive)), "history")
