"""Raw btrfs ioctls through `fcntl.ioctl`, with no libbtrfs and no `btrfs` command.

A subprocess of the `btrfs` tool costs ~21 ms; the ioctls behind it cost 0.03-3 ms, which
is what keeps a snapshot-based container create under 10 ms. Structure layouts and
request numbers are those of <linux/btrfs.h> and <linux/btrfs_tree.h> (x86_64 and
aarch64 share them). Argument structs of 4096 bytes are passed as `bytearray`s, because
`fcntl.ioctl` refuses immutable buffers over 1024 bytes and copies small ones.

Every function raises OSError with the kernel's errno; callers turn that into a
cowstore error with context, since only they know what the user was trying to do.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

FIRST_FREE_OBJECTID = 256  # inode number of every subvolume's root directory
LAST_FREE_OBJECTID = 0xFFFFFFFFFFFFFF00

ROOT_TREE_OBJECTID = 1
QUOTA_TREE_OBJECTID = 8

INODE_ITEM_KEY = 1
INODE_REF_KEY = 12
INODE_EXTREF_KEY = 13
ROOT_REF_KEY = 156
QGROUP_INFO_KEY = 242

IOC_SYNC = 0x9408
IOC_SUBVOL_CREATE = 0x5000940E
IOC_SNAP_DESTROY = 0x5000940F
IOC_TREE_SEARCH = 0xD0009411
IOC_INO_LOOKUP = 0xD0009412
IOC_SPACE_INFO = 0xC0109414
IOC_SNAP_CREATE_V2 = 0x50009417
IOC_DEV_INFO = 0xD000941E
IOC_FS_INFO = 0x8400941F
IOC_BALANCE_V2 = 0xC4009420
IOC_QUOTA_CTL = 0xC0109428
IOC_QGROUP_CREATE = 0x4010942A
IOC_QGROUP_LIMIT = 0x8030942B
IOC_QUOTA_RESCAN_WAIT = 0x942E
IOC_GET_SUBVOL_INFO = 0x81F8943C

SUBVOL_RDONLY = 1 << 1
QUOTA_CTL_ENABLE = 1
QUOTA_CTL_DISABLE = 2
QGROUP_LIMIT_MAX_RFER = 1 << 0

BLOCK_GROUP_DATA = 1 << 0
BLOCK_GROUP_SYSTEM = 1 << 1
BLOCK_GROUP_METADATA = 1 << 2
SPACE_INFO_GLOBAL_RSV = 1 << 49

BALANCE_DATA = 1 << 0
BALANCE_METADATA = 1 << 2
BALANCE_ARGS_USAGE = 1 << 1

_VOL_ARGS_SIZE = 4096
_NAME_MAX = 255
_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # btrfs_ioctl_search_key, 104 bytes
_SEARCH_HEADER = struct.Struct("=3Q2I")  # transid, objectid, offset, type, len


def _check_name(name: str) -> bytes:
    raw = os.fsencode(name)
    if not raw or len(raw) > _NAME_MAX or b"/" in raw or raw in (b".", b".."):
        raise OSError(22, "invalid subvolume name", name)
    return raw


def subvol_create(dir_fd: int, name: str) -> None:
    """Create an empty subvolume `name` in the directory open at `dir_fd`."""
    args = bytearray(_VOL_ARGS_SIZE)
    raw = _check_name(name)
    args[8 : 8 + len(raw)] = raw
    fcntl.ioctl(dir_fd, IOC_SUBVOL_CREATE, args)


def snapshot(source_fd: int, dir_fd: int, name: str, *, readonly: bool = False) -> None:
    """Snapshot the subvolume open at `source_fd` as `name` in the directory `dir_fd`."""
    args = bytearray(_VOL_ARGS_SIZE)
    raw = _check_name(name)
    struct.pack_into("=qQQ", args, 0, source_fd, 0, SUBVOL_RDONLY if readonly else 0)
    args[56 : 56 + len(raw)] = raw
    fcntl.ioctl(dir_fd, IOC_SNAP_CREATE_V2, args)


def snap_destroy(dir_fd: int, name: str) -> None:
    """Delete subvolume `name` (which must have no nested subvolumes) from `dir_fd`."""
    args = bytearray(_VOL_ARGS_SIZE)
    raw = _check_name(name)
    args[8 : 8 + len(raw)] = raw
    fcntl.ioctl(dir_fd, IOC_SNAP_DESTROY, args)


def is_subvolume(st: os.stat_result) -> bool:
    """Whether a stat result (of something on btrfs) is a subvolume's root directory."""
    return st.st_ino == FIRST_FREE_OBJECTID and (st.st_mode & 0o170000) == 0o040000


def ino_lookup(fd: int, tree_id: int = 0, objectid: int = FIRST_FREE_OBJECTID) -> tuple[int, str]:
    """(tree id, path of directory `objectid` relative to its subvolume root).

    With `tree_id` 0 the tree is the subvolume `fd` lives in, so the default arguments
    give the id of that subvolume. The path ends with '/' unless it is empty.
    """
    args = bytearray(_VOL_ARGS_SIZE)
    struct.pack_into("=QQ", args, 0, tree_id, objectid)
    fcntl.ioctl(fd, IOC_INO_LOOKUP, args)
    found_tree = struct.unpack_from("=Q", args, 0)[0]
    name = bytes(args[16:]).split(b"\0", 1)[0]
    return found_tree, os.fsdecode(name)


def subvol_id(fd: int) -> int:
    """The subvolume (tree) id that the file open at `fd` belongs to."""
    return ino_lookup(fd)[0]


@dataclass(frozen=True)
class SubvolInfo:
    """The root item facts of one subvolume (BTRFS_IOC_GET_SUBVOL_INFO)."""

    id: int
    parent_id: int
    dirid: int
    generation: int  # last transaction that changed the subvolume's tree
    flags: int
    uuid: UUID
    parent_uuid: UUID  # the source's uuid for a snapshot, nil for a plain subvolume
    ctransid: int  # last transaction that changed an inode
    otransid: int  # transaction that created the subvolume or snapshot


def subvol_info(fd: int) -> SubvolInfo:
    """Root item facts of the subvolume whose root directory is open at `fd`."""
    args = bytearray(504)
    fcntl.ioctl(fd, IOC_GET_SUBVOL_INFO, args)
    treeid = struct.unpack_from("=Q", args, 0)[0]
    parent_id, dirid, generation, flags = struct.unpack_from("=4Q", args, 264)
    uid, puid = bytes(args[296:312]), bytes(args[312:328])
    ctransid, otransid = struct.unpack_from("=2Q", args, 344)
    return SubvolInfo(
        treeid, parent_id, dirid, generation, flags, UUID(bytes=uid), UUID(bytes=puid), ctransid, otransid
    )


@dataclass(frozen=True)
class Item:
    """One b-tree item returned by a tree search."""

    transid: int  # generation of the leaf holding the item, not of the item
    objectid: int
    type: int
    offset: int
    data: bytes


def tree_search(
    fd: int,
    tree_id: int,
    *,
    min_objectid: int = 0,
    max_objectid: int = 2**64 - 1,
    min_type: int = 0,
    max_type: int = 255,
    min_offset: int = 0,
    max_offset: int = 2**64 - 1,
    min_transid: int = 0,
) -> Iterator[Item]:
    """Items of tree `tree_id` between two keys (needs CAP_SYS_ADMIN).

    The key range is a range over (objectid, type, offset) in key order, as in the
    kernel; the type and offset bounds are not separate filters, so callers check
    `item.type`. `min_transid` skips whole leaves older than that transaction, which
    is what makes "what changed since generation N" cheap.
    """
    objectid, type_, offset = min_objectid, min_type, min_offset
    while True:
        args = bytearray(4096)
        _SEARCH_KEY.pack_into(
            args,
            0,
            tree_id,
            objectid,
            max_objectid,
            offset,
            max_offset,
            min_transid,
            2**64 - 1,
            type_,
            max_type,
            4096,
            0,
            0,
            0,
            0,
            0,
        )
        fcntl.ioctl(fd, IOC_TREE_SEARCH, args)
        count = struct.unpack_from("=I", args, 64)[0]
        if count == 0:
            return
        pos = _SEARCH_KEY.size
        obj = typ = off = 0  # the key of the last item: where the next search starts
        for _ in range(count):
            transid, obj, off, typ, length = _SEARCH_HEADER.unpack_from(args, pos)
            pos += _SEARCH_HEADER.size
            data = bytes(args[pos : pos + length])
            pos += length
            yield Item(transid, obj, typ, off, data)
        if off < 2**64 - 1:
            objectid, type_, offset = obj, typ, off + 1
        elif typ < 255:
            objectid, type_, offset = obj, typ + 1, 0
        elif obj < 2**64 - 1:
            objectid, type_, offset = obj + 1, 0, 0
        else:
            return
        if (objectid, type_, offset) > (max_objectid, max_type, max_offset):
            return


def child_subvolumes(fd: int, parent_id: int) -> list[tuple[int, int, str]]:
    """(subvolume id, directory inode, name) of subvolumes directly inside `parent_id`.

    Read from the root tree's ROOT_REF items, so finding nested subvolumes costs one
    search instead of a walk over every file of the layer.
    """
    children = []
    for item in tree_search(
        fd,
        ROOT_TREE_OBJECTID,
        min_objectid=parent_id,
        max_objectid=parent_id,
        min_type=ROOT_REF_KEY,
        max_type=ROOT_REF_KEY,
    ):
        if item.type != ROOT_REF_KEY:
            continue
        dirid, _sequence, name_len = struct.unpack_from("=QQH", item.data, 0)
        name = os.fsdecode(item.data[18 : 18 + name_len])
        children.append((item.offset, dirid, name))
    return children


def quota_ctl(fd: int, cmd: int) -> None:
    """Enable (QUOTA_CTL_ENABLE) or disable (QUOTA_CTL_DISABLE) qgroups on the filesystem."""
    args = bytearray(struct.pack("=QQ", cmd, 0))
    fcntl.ioctl(fd, IOC_QUOTA_CTL, args)


def qgroup_limit(fd: int, max_referenced: int, qgroupid: int = 0) -> None:
    """Limit the bytes a qgroup may reference; qgroup 0 means that of `fd`'s subvolume.

    Raises OSError ENOTCONN when quotas are not enabled.
    """
    args = bytearray(struct.pack("=6Q", qgroupid, QGROUP_LIMIT_MAX_RFER, max_referenced, 0, 0, 0))
    fcntl.ioctl(fd, IOC_QGROUP_LIMIT, args)


def qgroup_destroy(fd: int, qgroupid: int) -> None:
    """Delete the qgroup `qgroupid` (level 0: equal to a subvolume id)."""
    args = bytearray(struct.pack("=QQ", 0, qgroupid))
    fcntl.ioctl(fd, IOC_QGROUP_CREATE, args)


def quota_rescan_wait(fd: int) -> None:
    """Block until a running qgroup rescan has finished (returns at once if none runs)."""
    fcntl.ioctl(fd, IOC_QUOTA_RESCAN_WAIT)


def qgroup_usage(fd: int, qgroupid: int) -> tuple[int, int] | None:
    """(referenced, exclusive) bytes of a qgroup; None when quotas are off or it is unknown."""
    try:
        items = list(
            tree_search(
                fd,
                QUOTA_TREE_OBJECTID,
                min_objectid=0,
                max_objectid=0,
                min_type=QGROUP_INFO_KEY,
                max_type=QGROUP_INFO_KEY,
                min_offset=qgroupid,
                max_offset=qgroupid,
            )
        )
    except FileNotFoundError:
        return None
    for item in items:
        if item.type == QGROUP_INFO_KEY and item.offset == qgroupid:
            _gen, rfer, _rfer_cmpr, excl, _excl_cmpr = struct.unpack_from("=5Q", item.data, 0)
            return rfer, excl
    return None


def sync(fd: int) -> None:
    """Write dirty data and commit the running transaction (`btrfs filesystem sync`).

    Inode items reach the b-tree late: a plain overwrite updates its inode item only
    when the data is written back, other updates wait in memory ("delayed inodes")
    until a commit. A tree search sees every change only after this.
    """
    fcntl.ioctl(fd, IOC_SYNC)


def changed_inodes(fd: int, tree_id: int, since: int) -> dict[int, bool]:
    """{inode number: is a directory} of inodes whose item changed after transaction `since`."""
    changed = {}
    for item in tree_search(
        fd,
        tree_id,
        min_objectid=FIRST_FREE_OBJECTID,
        max_objectid=LAST_FREE_OBJECTID,
        min_type=INODE_ITEM_KEY,
        max_type=INODE_ITEM_KEY,
        min_transid=since + 1,
    ):
        if item.type != INODE_ITEM_KEY:
            continue
        transid = struct.unpack_from("=Q", item.data, 8)[0]
        if transid > since:
            mode = struct.unpack_from("=I", item.data, 52)[0]
            changed[item.objectid] = (mode & 0o170000) == 0o040000
    return changed


def inode_names(fd: int, tree_id: int, ino: int) -> list[tuple[int, str]]:
    """(parent directory inode, name) of every hard link of inode `ino`."""
    names = []
    for item in tree_search(
        fd, tree_id, min_objectid=ino, max_objectid=ino, min_type=INODE_REF_KEY, max_type=INODE_EXTREF_KEY
    ):
        pos = 0
        while pos < len(item.data):
            if item.type == INODE_REF_KEY:
                parent = item.offset
                _index, length = struct.unpack_from("=QH", item.data, pos)
                pos += 10
            elif item.type == INODE_EXTREF_KEY:
                parent, _index, length = struct.unpack_from("=QQH", item.data, pos)
                pos += 18
            else:
                break
            names.append((parent, os.fsdecode(item.data[pos : pos + length])))
            pos += length
    return names


def space_info(fd: int) -> list[tuple[int, int, int]]:
    """(block group flags, allocated bytes, used bytes) per chunk type and profile."""
    args = bytearray(16 + 24 * 32)
    struct.pack_into("=QQ", args, 0, 32, 0)
    fcntl.ioctl(fd, IOC_SPACE_INFO, args)
    total = struct.unpack_from("=Q", args, 8)[0]
    return [struct.unpack_from("=3Q", args, 16 + 24 * i) for i in range(min(total, 32))]


def fs_info(fd: int) -> tuple[int, int, UUID]:
    """(max device id, number of devices, filesystem uuid)."""
    args = bytearray(1024)
    fcntl.ioctl(fd, IOC_FS_INFO, args)
    max_id, num_devices = struct.unpack_from("=QQ", args, 0)
    return max_id, num_devices, UUID(bytes=bytes(args[16:32]))


def dev_info(fd: int, devid: int) -> tuple[int, int, str] | None:
    """(allocated bytes, device size, device path) of device `devid`; None if no such id."""
    args = bytearray(4096)
    struct.pack_into("=Q", args, 0, devid)
    try:
        fcntl.ioctl(fd, IOC_DEV_INFO, args)
    except FileNotFoundError:
        return None
    used, total = struct.unpack_from("=QQ", args, 24)
    path = os.fsdecode(bytes(args[3072:]).split(b"\0", 1)[0])
    return used, total, path


def balance(fd: int, *, data_usage: int | None, metadata_usage: int | None = None) -> tuple[int, int]:
    """Relocate data/metadata chunks at most `*_usage` percent full; (considered, relocated).

    Blocks until the balance has finished. Relocating the contents of mostly-empty
    chunks into others returns their space to the unallocated pool.
    """
    args = bytearray(1024)
    flags = 0
    if data_usage is not None:
        flags |= BALANCE_DATA
        struct.pack_into("=Q", args, 16 + 8, data_usage)
        struct.pack_into("=Q", args, 16 + 64, BALANCE_ARGS_USAGE)
    if metadata_usage is not None:
        flags |= BALANCE_METADATA
        struct.pack_into("=Q", args, 152 + 8, metadata_usage)
        struct.pack_into("=Q", args, 152 + 64, BALANCE_ARGS_USAGE)
    struct.pack_into("=Q", args, 0, flags)
    fcntl.ioctl(fd, IOC_BALANCE_V2, args)
    _expected, considered, completed = struct.unpack_from("=3Q", args, 424)
    return considered, completed
