"""Per-directory size limits through xfs project quotas (the `size` storage option).

Each limited directory gets its own project id with the inherit flag, so everything
created below it is charged to that project and writes fail with EDQUOT at the limit.
Only xfs mounted with `pquota`/`prjquota` enforces this; anything else raises
NotSupported at construction, when the driver starts, not at the first write.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import pathlib
import stat

from cowstore.errors import NotSupported
from cowstore.host import fsutil
from cowstore.host.libc import LIBC

_FS_IOC_FSGETXATTR = 0x801C581F
_FS_IOC_FSSETXATTR = 0x401C5820
_FS_XFLAG_PROJINHERIT = 0x200
_SYS_QUOTACTL_FD = 443  # unified syscall table: the same on x86_64 and aarch64
_Q_XSETQLIM = 0x5804
_PRJQUOTA = 2
_FS_DQUOT_VERSION = 1
_FS_PROJ_QUOTA = 2
_FS_DQ_BSOFT = 1 << 0
_FS_DQ_BHARD = 1 << 1
# Project ids below this are left to the administrator (/etc/projid conventions).
_FIRST_PROJECT_ID = 100_000


class _Fsxattr(ctypes.Structure):
    _fields_ = [
        ("fsx_xflags", ctypes.c_uint32),
        ("fsx_extsize", ctypes.c_uint32),
        ("fsx_nextents", ctypes.c_uint32),
        ("fsx_projid", ctypes.c_uint32),
        ("fsx_cowextsize", ctypes.c_uint32),
        ("fsx_pad", ctypes.c_ubyte * 8),
    ]


class _FsDiskQuota(ctypes.Structure):
    _fields_ = [
        ("d_version", ctypes.c_int8),
        ("d_flags", ctypes.c_int8),
        ("d_fieldmask", ctypes.c_uint16),
        ("d_id", ctypes.c_uint32),
        ("d_blk_hardlimit", ctypes.c_uint64),
        ("d_blk_softlimit", ctypes.c_uint64),
        ("d_ino_hardlimit", ctypes.c_uint64),
        ("d_ino_softlimit", ctypes.c_uint64),
        ("d_bcount", ctypes.c_uint64),
        ("d_icount", ctypes.c_uint64),
        ("d_itimer", ctypes.c_int32),
        ("d_btimer", ctypes.c_int32),
        ("d_iwarns", ctypes.c_uint16),
        ("d_bwarns", ctypes.c_uint16),
        ("d_itimer_hi", ctypes.c_int8),
        ("d_btimer_hi", ctypes.c_int8),
        ("d_rtbtimer_hi", ctypes.c_int8),
        ("d_padding2", ctypes.c_int8),
        ("d_rtb_hardlimit", ctypes.c_uint64),
        ("d_rtb_softlimit", ctypes.c_uint64),
        ("d_rtbcount", ctypes.c_uint64),
        ("d_rtbtimer", ctypes.c_int32),
        ("d_rtbwarns", ctypes.c_uint16),
        ("d_padding3", ctypes.c_int16),
        ("d_padding4", ctypes.c_char * 8),
    ]


def _get_fsxattr(path: str | os.PathLike) -> _Fsxattr:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = _Fsxattr()
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, buf)
        return buf
    finally:
        os.close(fd)


def project_id(path: str | os.PathLike) -> int:
    """The project id of a directory (0 when none was set)."""
    return _get_fsxattr(path).fsx_projid


class ProjectQuota:
    """Assigns project ids and block limits to directories below `home`."""

    def __init__(self, home: pathlib.Path) -> None:
        backing = fsutil.backing_fs(home)
        if backing != "xfs":
            raise NotSupported(f"size limits need project quotas on xfs; the backing filesystem is {backing}")
        self.home = home
        try:
            self._limit(project_id(home) or _FIRST_PROJECT_ID, 0)
        except OSError as exc:
            raise NotSupported(f"size limits need xfs mounted with the pquota option ({exc.strerror})") from None

    def _quotactl(self, cmd: int, id: int, arg: _FsDiskQuota) -> None:
        qcmd = (cmd << 8) | _PRJQUOTA
        fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rc = LIBC.syscall(
                ctypes.c_long(_SYS_QUOTACTL_FD),
                ctypes.c_long(fd),
                ctypes.c_long(qcmd),
                ctypes.c_long(id),
                ctypes.byref(arg),
            )
        finally:
            os.close(fd)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err), str(self.home))
        self._quotactl_device(qcmd, id, arg)

    def _quotactl_device(self, qcmd: int, id: int, arg: _FsDiskQuota) -> None:
        """Kernels before 5.14 take the block device: make a node for it, as Docker does."""
        node = self.home / f".quota-dev-{os.getpid()}"
        os.mknod(node, stat.S_IFBLK | 0o600, os.stat(self.home).st_dev)
        try:
            rc = LIBC.quotactl(ctypes.c_int(qcmd), os.fsencode(node), ctypes.c_int(id), ctypes.byref(arg))
            err = ctypes.get_errno()
        finally:
            os.unlink(node)
        if rc != 0:
            raise OSError(err, os.strerror(err), str(self.home))

    def _limit(self, id: int, size: int) -> None:
        quota = _FsDiskQuota()
        quota.d_version = _FS_DQUOT_VERSION
        quota.d_flags = _FS_PROJ_QUOTA
        quota.d_fieldmask = _FS_DQ_BSOFT | _FS_DQ_BHARD
        quota.d_id = id
        blocks = (size + 511) // 512  # quota limits are in 512-byte basic blocks
        quota.d_blk_hardlimit = quota.d_blk_softlimit = blocks
        self._quotactl(_Q_XSETQLIM, id, quota)

    def set(self, directory: pathlib.Path, size: int) -> None:
        """Limit `directory` (and everything later created below it) to `size` bytes."""
        lock = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            id = self._next_id(directory.parent)
            self._limit(id, size)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                attrs = _Fsxattr()
                fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, attrs)
                attrs.fsx_projid = id
                attrs.fsx_xflags |= _FS_XFLAG_PROJINHERIT
                fcntl.ioctl(fd, _FS_IOC_FSSETXATTR, attrs)
            finally:
                os.close(fd)
        finally:
            os.close(lock)

    def _next_id(self, siblings: pathlib.Path) -> int:
        """One more than the highest id of home and of the directories in `siblings`.

        `siblings` is where the limited directories live (the home itself for overlay2,
        `home/dir` for vfs). Called under the lock.
        """
        highest = project_id(self.home) or _FIRST_PROJECT_ID
        with os.scandir(siblings) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    highest = max(highest, project_id(entry.path))
        return highest + 1
