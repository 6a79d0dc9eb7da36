"""Docker data roots built from Docker's documented layouts, for drivers dockerd cannot run here.

`RootBuilder` writes what moby 20.10 writes: `image/<driver>/imagedb` (config bytes named
by their sha256), `repositories.json`, `layerdb/sha256/<chain>/{diff,size,cache-id,parent,
tar-split.json.gz}` (tar-split in vbatts/tar-split's JSON lines, CRC-64/ISO per file),
`layerdb/mounts/<container>/{mount-id,init-id,parent}` and `containers/<id>/config.v2.json`,
plus the driver's storage:

- aufs: `diff/<id>` holds the layer tar extracted as is (whiteouts stay `.wh.` files),
  `layers/<id>` the ancestors nearest first, `mnt/<id>` an empty mount point; container
  branches also get aufs's `.wh..wh.plnk`/`.wh..wh.aufs` bookkeeping;
- vfs: `dir/<id>` holds the complete tree;
- devicemapper: cowstore's own devicemapper driver (Docker's deviceset layout and
  JSON, ext4 or xfs on the base device, every layer a snapshot of its parent) fills the pool;
  then its metadata is dumped and written back in the kernel's format by
  `thin_restore`, as a pool made by device-mapper would be; each container's ext4 is
  left flagged as needing journal recovery, as a crash leaves it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile

from cowstore.archive import apply_layer
from cowstore.digest import chain_id, random_id, sha256_bytes
from cowstore.drivers import Driver
from cowstore.drivers.devicemapper.thinpool import ThinPool, xmldump

from ..images.imagearchives import config_for
from .drivers import open_or_skip
from .tars import E, build

_ISO_POLY = 0xD800000000000000
_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (_ISO_POLY if _c & 1 else 0)
    _CRC_TABLE.append(_c)

DOCKER_INIT = build(
    *(E(p, "dir", mode=0o755) for p in ("dev", "dev/pts", "dev/shm", "etc", "proc", "sys")),
    *(E(p, mode=0o755) for p in (".dockerenv", "etc/resolv.conf", "etc/hosts", "etc/hostname", "dev/console")),
    E("etc/mtab", "symlink", target="/proc/mounts"),
)


def crc64(data: bytes) -> int:
    """CRC-64 with the ISO polynomial, as Go's hash/crc64 computes it for tar-split."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def tar_split(tar: bytes) -> bytes:
    """tar-split.json.gz of a tar: raw segments between file payloads, and a record per entry."""
    lines, pos = [], 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        for member in archive:
            lines.append({"type": 2, "payload": base64.b64encode(tar[pos : member.offset_data]).decode()})
            size = member.size if member.isreg() else 0
            payload = tar[member.offset_data : member.offset_data + size]
            crc = base64.b64encode(crc64(payload).to_bytes(8, "big")).decode() if size else None
            record: dict = {"type": 1, "name": member.name, "payload": crc}
            if size:
                record["size"] = size
            lines.append(record)
            pos = member.offset_data + size
    lines.append({"type": 2, "payload": base64.b64encode(tar[pos:]).decode()})
    text = "".join(json.dumps({**line, "position": n}) + "\n" for n, line in enumerate(lines))
    return gzip.compress(text.encode())


def _write(path: pathlib.Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


class _Aufs:
    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        for sub in ("diff", "layers", "mnt"):
            (home / sub).mkdir(parents=True)

    def add(self, id: str, parent: str | None, tar: bytes, *, container: bool = False) -> None:
        branch = self.home / "diff" / id
        branch.mkdir()
        (self.home / "mnt" / id).mkdir()
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(branch, numeric_owner=True, filter="fully_trusted")
        parents = [parent, *(self.home / "layers" / parent).read_text().split()] if parent else []
        (self.home / "layers" / id).write_text("".join(f"{p}\n" for p in parents))
        if container:  # aufs's own bookkeeping in a writable branch: never content
            (branch / ".wh..wh.plnk").mkdir(mode=0o700)
            (branch / ".wh..wh.plnk" / "1234.5678").write_bytes(b"pseudo-link")
            (branch / ".wh..wh.aufs").write_bytes(b"")
            (branch / ".wh..wh.orph").mkdir(mode=0o700)

    def finish(self) -> None:
        pass


class _Vfs:
    def __init__(self, home: pathlib.Path) -> None:
        self.home = home / "dir"
        self.home.mkdir(parents=True)

    def add(self, id: str, parent: str | None, tar: bytes, *, container: bool = False) -> None:
        target = self.home / id
        if parent:
            subprocess.run(["cp", "-a", str(self.home / parent), str(target)], check=True)
        else:
            target.mkdir()
        apply_layer(io.BytesIO(tar), target)

    def finish(self) -> None:
        pass


class _DeviceMapper:
    """Layers made by cowstore's devicemapper driver, then the pool rewritten in kernel format."""

    def __init__(self, home: pathlib.Path, fs: str = "ext4") -> None:
        self.home = home
        # mkfs.xfs refuses filesystems under 300 MiB; thin devices are sparse, so this costs nothing.
        xfs = {"dm.fs": "xfs", "dm.basesize": "320M"} if fs == "xfs" else {}
        self.driver = open_or_skip("devicemapper", home, **xfs)

    def add(self, id: str, parent: str | None, tar: bytes, *, container: bool = False) -> None:
        self.driver.create_rw(id, parent)
        self.driver.apply_diff(id, parent, io.BytesIO(tar))
        if container and not id.endswith("-init"):
            leave_journal_unclean(self.driver, id)

    def finish(self) -> None:
        self.driver.cleanup()
        to_kernel_format(self.home / "devicemapper")
        shutil.rmtree(self.home / "mountpoints", ignore_errors=True)  # cowstore's mount counts


def leave_journal_unclean(driver: Driver, id: str) -> None:
    """Leave layer `id`'s filesystem (of a devicemapper driver) needing journal recovery, as a
    crash of a running container leaves it: a read-only mount must then skip the replay.
    ext4 gets the flag set; xfs is shut down after flushing its log, with no unmount record."""
    if driver.opts.fs == "xfs":  # type: ignore[attr-defined]
        mounted = driver.get(id)
        try:
            (mounted.parent / "unlogged").write_bytes(b"x")  # beside the layer's rootfs/, not in it
            subprocess.run(["xfs_io", "-x", "-c", "shutdown -f", str(mounted)], check=True, capture_output=True)
        finally:
            driver.put(id)
        return
    info = driver.devices.info(id)  # type: ignore[attr-defined]
    path = driver.devices.activate(id, info["device_id"])  # type: ignore[attr-defined]
    try:
        subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", path], check=True, capture_output=True)
    finally:
        driver.devices.deactivate(id)  # type: ignore[attr-defined]


def to_kernel_format(files: pathlib.Path) -> None:
    """Rewrite the pool metadata `files/metadata` (cowstore's, its server stopped) in the
    kernel's format with thin_restore, and drop what only cowstore's pool server keeps."""
    meta, data = files / "metadata", files / "data"
    with ThinPool.open(meta, data, min_free_pct=0) as pool:
        (files / "dump.xml").write_text(xmldump.dump(pool))
    kernel = files / "metadata.kernel"
    with open(kernel, "wb") as fh:
        fh.truncate(meta.stat().st_size)
    restore = ["thin_restore", "-i", str(files / "dump.xml"), "-o", str(kernel)]
    subprocess.run(restore, check=True, capture_output=True)
    subprocess.run(["thin_check", str(kernel)], check=True, capture_output=True)
    os.replace(kernel, meta)
    for leftover in ("dump.xml", "control.sock", "server.log"):
        (files / leftover).unlink(missing_ok=True)
    shutil.rmtree(files / "mapper", ignore_errors=True)


class RootBuilder:
    """A Docker data root of `driver` (aufs, vfs or devicemapper on `fs`) under `path`, built object by object."""

    def __init__(self, path: pathlib.Path, driver: str, fs: str = "ext4") -> None:
        self.path = path
        self.driver = driver
        self.store = path / "image" / driver
        for sub in ("imagedb/content/sha256", "imagedb/metadata/sha256", "layerdb/sha256", "layerdb/mounts"):
            (self.store / sub).mkdir(parents=True)
        (path / "containers").mkdir()
        home = path / driver
        self.storage = (
            _DeviceMapper(home, fs) if driver == "devicemapper" else {"aufs": _Aufs, "vfs": _Vfs}[driver](home)
        )
        self.cache_ids: dict[str, str] = {}  # chain id -> storage id
        self.repositories: dict[str, dict[str, str]] = {}

    def add_layer(self, tar: bytes, parent_chain: str | None) -> str:
        """Register a layer tar on top of a chain; returns its chain id."""
        diff_id = sha256_bytes(tar)
        chain = chain_id(parent_chain, diff_id)
        if chain in self.cache_ids:
            return chain
        cache_id = random_id()
        self.storage.add(cache_id, self.cache_ids[parent_chain] if parent_chain else None, tar)
        self.cache_ids[chain] = cache_id
        layer = self.store / "layerdb" / "sha256" / chain[7:]
        _write(layer / "diff", diff_id)
        _write(layer / "cache-id", cache_id)
        _write(layer / "size", str(sum(m.size for m in tarfile.open(fileobj=io.BytesIO(tar)) if m.isreg())))
        _write(layer / "tar-split.json.gz", tar_split(tar))
        if parent_chain:
            _write(layer / "parent", parent_chain)
        return chain

    def add_image(self, layers: list[bytes], tags: list[str], comment: str = "test") -> str:
        """Register an image of these layer tars with these tags; returns its id."""
        top = None
        for tar in layers:
            top = self.add_layer(tar, top)
        raw = config_for(layers, comment)
        image_id = sha256_bytes(raw)
        _write(self.store / "imagedb" / "content" / "sha256" / image_id[7:], raw)
        _write(self.store / "imagedb" / "metadata" / "sha256" / image_id[7:] / "lastUpdated", "2023-05-01T10:00:00Z")
        for tag in tags:
            self.repositories.setdefault(tag.rpartition(":")[0], {})[tag] = image_id
        _write(self.store / "repositories.json", json.dumps({"Repositories": self.repositories}))
        return image_id

    def add_container(self, image_id: str, name: str, changes: bytes, ref: str) -> str:
        """A container of `image_id` named `name` whose read-write layer holds `changes`."""
        raw = (self.store / "imagedb" / "content" / "sha256" / image_id[7:]).read_bytes()
        top = None
        for diff_id in json.loads(raw)["rootfs"]["diff_ids"]:
            top = chain_id(top, diff_id)
        container_id = hashlib.sha256(name.encode()).hexdigest()
        mount_id = random_id()
        init_id = f"{mount_id}-init"
        self.storage.add(init_id, self.cache_ids[top] if top else None, DOCKER_INIT, container=True)
        self.storage.add(mount_id, init_id, changes, container=True)
        mounts = self.store / "layerdb" / "mounts" / container_id
        _write(mounts / "mount-id", mount_id)
        _write(mounts / "init-id", init_id)
        if top:
            _write(mounts / "parent", top)
        config = {"ID": container_id, "Name": f"/{name}", "Image": image_id, "Driver": self.driver}
        config["Config"] = {"Image": ref}
        _write(self.path / "containers" / container_id / "config.v2.json", json.dumps(config))
        return container_id

    def finish(self) -> pathlib.Path:
        self.storage.finish()
        return self.path
