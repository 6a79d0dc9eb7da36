"""The Linux FUSE wire protocol (include/uapi/linux/fuse.h, 7.45), as struct formats.

Debian's libfuse and linux-libc-dev headers predate FUSE_PASSTHROUGH (7.40), so the
layouts that matter are written out here. All integers are native little-endian;
every reply is a `fuse_out_header` followed by the opcode's reply struct.
"""

from __future__ import annotations

import os
import stat
import struct

KERNEL_MAJOR = 7
KERNEL_MINOR = 45  # the newest minor whose layouts this module knows

# Opcodes (enum fuse_opcode).
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
ACCESS = 34
CREATE = 35
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42
FALLOCATE = 43
RENAME2 = 45
LSEEK = 46

# INIT flags (flags | flags2 << 32).
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
ASYNC_DIO = 1 << 15
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36
PASSTHROUGH = 1 << 37

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PASSTHROUGH = 1 << 7

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_in.open_flags / fuse_write_in.write_flags
OPEN_KILL_SUIDGID = 1 << 0
WRITE_KILL_SUIDGID = 1 << 2

GETATTR_FH = 1 << 0
FSYNC_FDATASYNC = 1 << 0

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

# ioctls on /dev/fuse (FUSE_DEV_IOC_MAGIC 229): _IOW(229, 1, struct fuse_backing_map)
# and _IOW(229, 2, uint32_t).
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # followed by ATTR
ATTR_OUT = struct.Struct("<QII")  # followed by ATTR
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QIi")
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
SETXATTR_IN = struct.Struct("<II")
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
FALLOCATE_IN = struct.Struct("<QQQII")
LSEEK_IN = struct.Struct("<QQII")
LSEEK_OUT = struct.Struct("<Q")
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")  # ino off namelen type, then the name padded to 8
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding


def pack_attr(st: os.stat_result) -> bytes:
    """A fuse_attr from an lstat result (the kernel shows these values to stat(2))."""
    return ATTR.pack(
        st.st_ino,
        st.st_size,
        st.st_blocks,
        st.st_atime_ns // 1_000_000_000,
        st.st_mtime_ns // 1_000_000_000,
        st.st_ctime_ns // 1_000_000_000,
        st.st_atime_ns % 1_000_000_000,
        st.st_mtime_ns % 1_000_000_000,
        st.st_ctime_ns % 1_000_000_000,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        _encode_dev(st.st_rdev),
        st.st_blksize,
        0,
    )


def _encode_dev(rdev: int) -> int:
    """The kernel's new_encode_dev: FUSE carries rdev as a 32-bit encoded dev_t."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_dev(rdev: int) -> int:
    """new_decode_dev: the 32-bit rdev of MKNOD back to a userspace dev_t."""
    major = (rdev & 0xFFF00) >> 8
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def pack_timeout(seconds: float) -> tuple[int, int]:
    """(seconds, nanoseconds) as the *_valid fields want them."""
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def dirent_type(mode: int) -> int:
    """The d_type value (DT_*) of a file mode."""
    return stat.S_IFMT(mode) >> 12


def pack_dirent(ino: int, offset: int, name: bytes, dtype: int) -> bytes:
    """One fuse_dirent, padded to a multiple of 8 bytes."""
    record = DIRENT.pack(ino, offset, len(name), dtype) + name
    return record + b"\0" * (-len(record) % 8)
