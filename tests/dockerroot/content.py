"""What the data roots of these tests hold: image layers with every kind of entry, and
a container's changes, both as a shell script for dockerd and as a changeset tar."""

from __future__ import annotations

import io
import struct
import tarfile

from cowstore.app.demo import build_image_archive

from ..support.tars import E, build

CAPABILITY = struct.pack("<IIIII", 0x02000000, 1 << 13, 0, 0, 0).decode("utf-8", "surrogateescape")
# The env marker of each engine's -init layer: the one difference a container may show.
INIT_MARKERS = frozenset({".dockerenv", ".cowstoreenv"})

CONTAINER_SCRIPT = """set -e
echo changed >> /etc/passwd
chmod 600 /etc/group
rm /usr/bin/hello
rm -rf /var/old && mkdir /var/old && echo fresh > /var/old/c
mkdir -p /data/sub && echo new > /data/a && ln /data/a /data/b && ln -s ../data/a /data/sym
chown 1000:1000 /data/a
echo again > /etc/hardA
mkfifo /data/fifo
rm /home/user/f
"""

# The same kinds of change as a changeset, for the data roots the tests build themselves.
CONTAINER_CHANGES = build(
    E("etc", "dir", mode=0o755),
    E("etc/hardA", data=b"again\n"),
    E("etc/group", data=b"root:x:0:\n", mode=0o600),
    E("usr", "dir", mode=0o755),
    E("usr/bin", "dir", mode=0o755),
    E("usr/bin/.wh.suid"),
    E("var", "dir", mode=0o755),
    E("var/old", "dir", mode=0o700),
    E("var/old/.wh..wh..opq", mode=0o700),
    E("var/old/c", data=b"fresh\n", mode=0o600),
    E("data", "dir", mode=0o755),
    E("data/sub", "dir", mode=0o755),
    E("data/a", data=b"new\n", uid=1000, gid=1000),
    E("data/b", "link", target="data/a", uid=1000, gid=1000),
    E("data/sym", "symlink", target="../data/a"),
    E("data/fifo", "fifo"),
    E("home", "dir", mode=0o755),
    E("home/user", "dir", mode=0o750, uid=1000, gid=1000),
    E("home/user/.wh.f"),
)


def busybox_layers() -> list[bytes]:
    """The demo image's two layers: Debian's static busybox with its applets, then /etc."""
    with tarfile.open(fileobj=io.BytesIO(build_image_archive())) as demo:
        return [demo.extractfile(f"layer{n}/layer.tar").read() for n in range(2)]  # type: ignore[union-attr]


def small_base() -> bytes:
    """A base layer without busybox, for data roots built entry by entry."""
    return build(
        E("etc", "dir", mode=0o755),
        E("etc/group", data=b"root:x:0:\n"),
        E("etc/motd", data=b"hello\n"),
        E("usr", "dir", mode=0o755),
        E("usr/bin", "dir", mode=0o755),
        E("usr/bin/hello", data=b"#!/bin/sh\necho hello\n", mode=0o755),
    )


def feature_layers() -> list[bytes]:
    """Hard links, a capability xattr, setuid, owners, a fifo and a device; then whiteouts and an opaque dir."""
    kinds = build(
        E("etc", "dir", mode=0o755),
        E("etc/hardA", data=b"hard\n"),
        E("etc/hardB", "link", target="etc/hardA"),
        E("usr", "dir", mode=0o755),
        E("usr/bin", "dir", mode=0o755),
        E("usr/bin/capped", data=b"#!/bin/sh\n", mode=0o755, pax={"SCHILY.xattr.security.capability": CAPABILITY}),
        E("usr/bin/suid", data=b"s", mode=0o4755),
        E("home", "dir", mode=0o755),
        E("home/user", "dir", mode=0o750, uid=1000, gid=1000),
        E("home/user/f", data=b"owned", mode=0o640, uid=1000, gid=1000),
        E("var", "dir", mode=0o755),
        E("var/old", "dir", mode=0o755),
        E("var/old/a", data=b"a"),
        E("var/fifo", "fifo"),
        E("var/null", "chr", mode=0o666, dev=(1, 3)),
    )
    whiteouts = build(
        E("etc", "dir", mode=0o755),
        E("etc/.wh.motd"),
        E("var", "dir", mode=0o755),
        E("var/old", "dir", mode=0o755),
        E("var/old/.wh..wh..opq"),
        E("var/old/b", data=b"b"),
    )
    return [kinds, whiteouts]
