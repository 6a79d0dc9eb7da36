"""The `dm.*` storage options, parsed and checked the way Docker's devmapper driver does.

Options that only make sense with kernel device-mapper (deferred removal, udev sync)
are accepted when false and refused when true, so a daemon.json written for Docker
either works or says why not.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from cowstore.drivers.common.options import parse_bool
from cowstore.errors import InvalidOption, NotSupported
from cowstore.units import parse_size

_DEFAULTS = {
    "dm.basesize": "10G",
    "dm.loopdatasize": "100G",
    "dm.loopmetadatasize": "2G",
    "dm.fs": "ext4",
    "dm.blocksize": "64K",
    "dm.min_free_space": "10%",
    "dm.no_space_policy": "error",
    "dm.blkdiscard": "true",
    "dm.server_cgroup": "/sys/fs/cgroup/memory/cowstore-thinpool",
    "dm.datadev": "",
    "dm.metadatadev": "",
}
_MULTI = ("dm.mkfsarg", "dm.mountopt")
_BOOL_FALSE_ONLY = ("dm.use_deferred_removal", "dm.use_deferred_deletion", "dm.override_udev_sync_check")


@dataclass(frozen=True)
class DmOptions:
    """The parsed options, with Docker's defaults."""

    base_size: int
    data_size: int
    metadata_size: int
    fs: str
    block_size: int
    min_free_pct: int
    no_space_policy: str
    blkdiscard: bool
    server_cgroup: str
    data_dev: str
    metadata_dev: str
    mkfs_args: list[str] = field(default_factory=list)
    mount_opts: list[str] = field(default_factory=list)


def parse_options(options: Mapping[str, str]) -> DmOptions:
    """Docker's names and value syntax; InvalidOption or NotSupported with Docker's wording."""
    raw: dict[str, str] = dict(_DEFAULTS)
    multi: dict[str, list[str]] = {key: [] for key in _MULTI}
    for given, value in options.items():
        key = given.lower()
        if key in _MULTI:
            multi[key].extend(v for v in value.split("\n") if v)
        elif key in _BOOL_FALSE_ONLY:
            if parse_bool("devmapper", given, value):
                raise NotSupported(f"devmapper: {key} needs kernel device-mapper, which this pool does not use")
        elif key in _DEFAULTS:
            raw[key] = value
        else:
            raise InvalidOption(f"devmapper: Unknown option {given}")
    if raw["dm.fs"] not in ("ext4", "xfs"):
        raise InvalidOption(f"devmapper: Unsupported filesystem {raw['dm.fs']}")
    pct = raw["dm.min_free_space"]
    if not pct.endswith("%") or not pct[:-1].isdigit() or not 0 <= int(pct[:-1]) <= 99:
        raise InvalidOption(f"devmapper: Invalid min free space value {pct}: use a percentage 0% to 99%")
    if raw["dm.no_space_policy"] not in ("error", "queue"):
        raise InvalidOption("devmapper: dm.no_space_policy must be error or queue")
    block_size = parse_size(raw["dm.blocksize"])
    if block_size % 65536 or not 65536 <= block_size <= 1 << 30:
        raise InvalidOption("devmapper: dm.blocksize must be a multiple of 64K up to 1G")
    return DmOptions(
        base_size=parse_size(raw["dm.basesize"]),
        data_size=parse_size(raw["dm.loopdatasize"]),
        metadata_size=parse_size(raw["dm.loopmetadatasize"]),
        fs=raw["dm.fs"],
        block_size=block_size,
        min_free_pct=int(pct[:-1]),
        no_space_policy=raw["dm.no_space_policy"],
        blkdiscard=parse_bool("devmapper", "dm.blkdiscard", raw["dm.blkdiscard"]),
        server_cgroup=raw["dm.server_cgroup"],
        data_dev=raw["dm.datadev"],
        metadata_dev=raw["dm.metadatadev"],
        mkfs_args=multi["dm.mkfsarg"],
        mount_opts=multi["dm.mountopt"],
    )


def check_host(opts: DmOptions) -> None:
    """NotSupported unless this host can serve thin devices as loop-backed block devices."""
    if os.geteuid() != 0:
        raise NotSupported("devicemapper needs root (loop devices and mounts)")
    if not os.path.exists("/dev/fuse"):
        raise NotSupported("devicemapper needs /dev/fuse to serve thin devices")
    if not os.path.exists("/dev/loop-control"):
        raise NotSupported("devicemapper needs loop devices (modprobe loop)")
    if shutil.which(f"mkfs.{opts.fs}") is None:
        raise NotSupported(f"devicemapper needs mkfs.{opts.fs}")


def backing_files(home: pathlib.Path, opts: DmOptions) -> tuple[pathlib.Path, pathlib.Path]:
    """dm.datadev / dm.metadatadev, or sparse files grown (never shrunk) to the loop sizes."""
    files = []
    for device, name, size in (
        (opts.data_dev, "data", opts.data_size),
        (opts.metadata_dev, "metadata", opts.metadata_size),
    ):
        if device:
            files.append(pathlib.Path(device))
            continue
        path = home / "devicemapper" / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        files.append(path)
    return files[0], files[1]
