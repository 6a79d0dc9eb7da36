"""Read a pool that device-mapper made (Docker's loop-lvm files) on a kernel without it.

The kernel keeps a thin pool's metadata in its own on-disk format; `thin_dump`
(thin-provisioning-tools) prints it as XML, which is restored into this package's
userspace pool model in a scratch directory, over the original data file opened
read-only. The block server then serves each thin device read-only, a read-only loop
device makes it a block device, and its filesystem is mounted read-only without
journal replay (`noload` for ext4, `norecovery` for xfs): a filesystem left unclean by
a crash would otherwise want to write its journal back. Nothing of the original pool
is ever written.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator, Mapping

from cowstore.drivers.devicemapper import server
from cowstore.drivers.devicemapper.thinpool import xmldump
from cowstore.drivers.devicemapper.thinpool.dataio import path_size
from cowstore.errors import Corrupt, NotSupported
from cowstore.host import fsutil, loop
from cowstore.host.mounts import MS_RDONLY, mount, umount

_MIN_METADATA = 256 * 1024 * 1024  # room for the model's trees, sparse
# Mount data per filesystem: read-only, no journal replay (all snapshots share the base's xfs UUID).
_READ_ONLY_OPTIONS = {"ext4": "noload", "xfs": "norecovery,nouuid"}
# (offset, magic) of the superblocks Docker's devmapper driver probes.
_MAGIC = (("xfs", 0, b"XFSB"), ("ext4", 0x438, b"\x53\xef"))


def probe_filesystem(device_file: str | os.PathLike) -> str:
    """The filesystem a thin device holds, by its superblock magic (as Docker probes it)."""
    with open(device_file, "rb") as fh:
        head = fh.read(4096)
    for name, offset, magic in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    raise NotSupported(f"thin device {os.fspath(device_file)} holds neither ext4 nor xfs")


class KernelPool:
    """A kernel-format pool (metadata + data file or device), opened read-only.

    `sizes` gives each thin device's size in bytes (Docker keeps them in its own JSON
    files: the kernel's metadata does not). close() stops the block server and deletes
    the scratch directory; mounts made by `mounted` are undone when their block ends.
    """

    def __init__(self, metadata: str | os.PathLike, data: str | os.PathLike, *, sizes: Mapping[int, int]) -> None:
        self.data = pathlib.Path(data)
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-kpool-"))
        self.devices_dir = self.workdir / "devices"
        try:
            dump = self.workdir / "dump.xml"
            done = subprocess.run(
                ["thin_dump", "-o", str(dump), os.fspath(metadata)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise Corrupt(f"thin_dump cannot read {os.fspath(metadata)}: {done.stderr.strip()[-300:]}")
            model = self.workdir / "metadata"
            with open(model, "wb") as fh:
                fh.truncate(max(path_size(metadata), _MIN_METADATA))
            xmldump.restore(dump, model, self.data, sizes=sizes, read_only=True)
            dump.unlink()
            self.client = server.start_server(
                metadata=model,
                data=self.data,
                mountpoint=self.devices_dir,
                socket=self.workdir / "control.sock",
                log=self.workdir / "server.log",
                min_free_pct=0,
                cgroup="",
                read_only=True,
            )
        except FileNotFoundError as exc:
            fsutil.remove_tree(self.workdir)
            raise NotSupported(f"reading a kernel thin pool needs {exc.filename} (thin-provisioning-tools)") from None
        except BaseException:
            fsutil.remove_tree(self.workdir)
            raise

    @contextlib.contextmanager
    def mounted(self, dev_id: int, target: str | os.PathLike, fstype: str | None = None) -> Iterator[pathlib.Path]:
        """Thin device `dev_id` mounted read-only on `target` for the block."""
        name = f"thin-{dev_id}"
        path = self.client.call("activate", id=dev_id, name=name)
        try:
            fstype = fstype or probe_filesystem(path)
            options = _READ_ONLY_OPTIONS.get(fstype)
            with loop.attached(path, direct_io=True, read_only=True) as device:
                mount(device, target, fstype, MS_RDONLY, options)
            try:
                yield pathlib.Path(target)
            finally:
                umount(target, 0)
        finally:
            loop.detach(path)
            self.client.call("deactivate", name=name)

    def close(self) -> None:
        try:
            server.stop_server(self.client, self.devices_dir)
        finally:
            fsutil.remove_tree(self.workdir)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
