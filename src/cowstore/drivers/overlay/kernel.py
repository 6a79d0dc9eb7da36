"""Kernel overlayfs plumbing shared by the overlay and overlay2 drivers.

Two ways to mount. The new mount API (fsopen/fsconfig/fsmount/move_mount, called
through ctypes) passes every layer as an O_PATH descriptor with `lowerdir+`, so no
option string exists and the only limit is the kernel's 500 lower layers. Kernels
without `lowerdir+` (before 6.8) get classic mount(2), where the whole option string
must fit in one page: the kernel truncates it *silently*, which would mount a wrong
tree, so the length is checked here first. Relative paths (Docker's short links) stretch
that page further; they are resolved by a forked child that chdir's into the driver
home, so the parent process's working directory never changes under other threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cowstore.drivers.common.refcount import RefCount
from cowstore.drivers.driver import MountSpec
from cowstore.errors import MaxDepthExceeded, MountError
from cowstore.host import fsutil, mounts
from cowstore.host.libc import LIBC, syscall

# OVL_MAX_STACK in fs/overlayfs/params.h: the most lower layers one mount may have.
KERNEL_MAX_LOWERS = 500

# The new mount API syscalls have the same numbers on every architecture (>= 424).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOUNT_ATTR_RDONLY = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100

_PARAMS = pathlib.Path("/sys/module/overlay/parameters")


@functools.cache
def in_user_namespace() -> bool:
    """True inside a user namespace, where overlay needs `userxattr` and trusted.* is off limits."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as fh:
            return fh.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def mount_options(*, redirect_dir: bool = False, metacopy: bool = False) -> list[tuple[str, str | None]]:
    """The feature options every overlay mount of these drivers carries.

    `index=off` keeps a layer mountable by several overlays at once (Docker's choice);
    redirect_dir and metacopy are pinned off unless asked for, whatever the module
    defaults say, because both put things into the upper dir that a tar cannot express.
    An option is only passed when the kernel has its module parameter, i.e. knows it.
    """
    opts: list[tuple[str, str | None]] = []
    if (_PARAMS / "index").exists():
        opts.append(("index", "off"))
    if (_PARAMS / "redirect_dir").exists():
        opts.append(("redirect_dir", "on" if redirect_dir else "off"))
    if (_PARAMS / "metacopy").exists():
        opts.append(("metacopy", "on" if metacopy else "off"))
    if in_user_namespace():
        opts.append(("userxattr", None))
    return opts


# containerd (mount/mount_linux.go) rewrites lowerdir= relative to the lower dirs' common
# parent once the options reach a page less this margin, and refuses data over a page.
_CONTAINERD_COMPACT_MARGIN = 512


def _containerd_data_size(options: Sequence[str]) -> int:
    """Bytes of mount(2) data containerd passes for these overlay options, after its compaction."""
    data = [o for o in options if o not in ("ro", "rw")]
    if sum(len(o) for o in options) >= os.sysconf("SC_PAGESIZE") - _CONTAINERD_COMPACT_MARGIN:
        for index, option in enumerate(data):
            if option.startswith("lowerdir="):
                dirs = option.removeprefix("lowerdir=").split(":")
                common = os.path.dirname(os.path.commonprefix(dirs))
                if len(dirs) > 1 and common not in ("", "/"):
                    data[index] = "lowerdir=" + ":".join(d[len(common) + 1 :] for d in dirs)
    return len(",".join(data))


def external_mount(
    lowers: Sequence[pathlib.Path],
    upper: pathlib.Path | None,
    work: pathlib.Path | None,
    options: list[tuple[str, str | None]],
) -> MountSpec:
    """An overlay mount for containerd to perform: absolute paths, read-only without an upper.

    containerd makes it with classic mount(2), so the option string must fit one page
    (4095 bytes); with overlay2's short links (`l/<26 chars>`, which containerd's
    compaction turns into bare names) that leaves room for about 140 lower layers.
    """
    opts = [k if v is None else f"{k}={v}" for k, v in options]
    if upper is not None and work is not None:
        opts += [f"workdir={work}", f"upperdir={upper}"]
    else:
        opts.insert(0, "ro")
    opts.append("lowerdir=" + ":".join(str(p) for p in lowers))
    size = _containerd_data_size(opts)
    limit = os.sysconf("SC_PAGESIZE") - 1
    if size > limit:
        raise MaxDepthExceeded(
            f"max depth exceeded: {len(lowers)} lower layers need {size} bytes of overlay mount options, "
            f"containerd passes at most {limit} to mount(2)"
        )
    return MountSpec("overlay", "overlay", tuple(opts))


def _fs_messages(fsfd: int) -> str:
    """The kernel's explanation of a failed fsconfig, read from the context descriptor."""
    lines = []
    while True:
        try:
            msg = os.read(fsfd, 1024)
        except OSError:
            break
        if not msg:
            break
        lines.append(msg.decode(errors="replace").strip())
    return "; ".join(lines)


@functools.cache
def new_mount_api() -> bool:
    """Whether fsopen works and overlay accepts `lowerdir+` by descriptor (Linux 6.8+)."""
    try:
        fsfd = syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    except OSError:
        return False
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FD, b"lowerdir+", None, root)
        finally:
            os.close(root)
        return True
    except OSError:
        return False
    finally:
        os.close(fsfd)


class OverlaySpec(NamedTuple):
    """What to mount: layer paths relative to `base` (the driver home), nearest lower first.

    Without `upper` the mount is read-only (the kernel needs two lowers then).
    """

    base: pathlib.Path
    lowers: Sequence[str]
    upper: str | None = None
    work: str | None = None
    options: Sequence[tuple[str, str | None]] = ()


def _depth_error(spec: OverlaySpec, detail: str) -> MaxDepthExceeded:
    return MaxDepthExceeded(f"max depth exceeded: {len(spec.lowers)} lower layers {detail}")


def _mount_new_api(spec: OverlaySpec, target: pathlib.Path) -> None:
    if len(spec.lowers) > KERNEL_MAX_LOWERS:
        raise _depth_error(spec, f"(the kernel mounts at most {KERNEL_MAX_LOWERS})")
    base_fd = os.open(spec.base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fsfd = -1
    step = "fsopen"
    try:
        fsfd = syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        dirs = [("lowerdir+", p) for p in spec.lowers]
        if spec.upper is not None and spec.work is not None:
            dirs += [("upperdir", spec.upper), ("workdir", spec.work)]
        for key, rel in dirs:
            step = f"{key} {rel}"
            fd = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
            try:
                syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FD, key.encode(), None, fd)
            finally:
                os.close(fd)
        for key, value in spec.options:
            step = key
            if value is None:
                syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FLAG, key.encode(), None, 0)
            else:
                syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
        step = "create"
        syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_CMD_CREATE, None, None, 0)
        step = "fsmount"
        attrs = _MOUNT_ATTR_RDONLY if spec.upper is None else 0
        mfd = syscall(_SYS_FSMOUNT, fsfd, _FSMOUNT_CLOEXEC, attrs)
        try:
            step = "move_mount"
            syscall(_SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mfd)
    except OSError as exc:
        detail = _fs_messages(fsfd) if fsfd >= 0 else ""
        if exc.errno == errno.EINVAL and step.startswith("lowerdir+") and "too many" in detail.lower():
            raise _depth_error(spec, f"({detail})") from None
        raise MountError(
            f"overlay mount on {target} failed at {step}: {exc.strerror}" + (f" ({detail})" if detail else "")
        ) from None
    finally:
        if fsfd >= 0:
            os.close(fsfd)
        os.close(base_fd)


def classic_data(spec: OverlaySpec) -> str:
    """The mount(2) option string for `spec`, paths relative to `spec.base`."""
    parts = [k if v is None else f"{k}={v}" for k, v in spec.options]
    parts.append("lowerdir=" + ":".join(spec.lowers))
    if spec.upper is not None:
        parts += [f"upperdir={spec.upper}", f"workdir={spec.work}"]
    return ",".join(parts)


def _mount_classic(spec: OverlaySpec, target: pathlib.Path) -> None:
    data = classic_data(spec).encode()
    limit = os.sysconf("SC_PAGESIZE") - 1
    if len(data) > limit:
        raise _depth_error(spec, f"need {len(data)} bytes of mount options, more than the {limit} mount(2) takes")
    flags = mounts.MS_RDONLY if spec.upper is None else 0
    target_b = os.fsencode(os.path.abspath(target))
    pid = os.fork()
    if pid == 0:  # child: resolve the relative layer paths from the driver home
        code = 0
        try:
            os.chdir(spec.base)
            if LIBC.mount(b"overlay", target_b, b"overlay", flags, data) != 0:
                code = ctypes.get_errno() or errno.EIO
        except BaseException:  # noqa: BLE001 - a forked child must never return into the caller's code
            code = errno.EIO
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise MountError(f"overlay mount on {target} failed: {os.strerror(code) if code > 0 else f'signal {-code}'}")


def mount_overlay(spec: OverlaySpec, target: pathlib.Path, *, classic: bool = False) -> None:
    """Mount `spec` on `target` through the new mount API when available, else mount(2)."""
    if not classic and new_mount_api():
        _mount_new_api(spec, target)
    else:
        _mount_classic(spec, target)


def unmount(target: pathlib.Path) -> None:
    """Lazily unmount `target` (a busy mount must not fail a put or remove)."""
    mounts.umount(target, mounts.MNT_DETACH)


def is_mounted(target: pathlib.Path) -> bool:
    """Whether an overlay is mounted on `target`, by device number: two stats instead of
    a parse of the whole mount table, on the hot path of every get and put."""
    try:
        return os.lstat(target).st_dev != os.lstat(target.parent).st_dev
    except FileNotFoundError:
        return False


def acquire_mount(
    ref: RefCount, target: pathlib.Path, spec: Callable[[], OverlaySpec], *, classic: bool = False
) -> None:
    """Count one more user of `target`; the first user mounts (`spec` is built only then)."""
    if ref.increment(is_mounted(target)) > 1:
        return
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        mount_overlay(spec(), target, classic=classic)
    except BaseException:
        ref.reset()
        raise


def release_mount(ref: RefCount, target: pathlib.Path, *, holds_work: bool = False) -> None:
    """Drop one user of `target`; the last one unmounts and removes the mount point.

    With `holds_work`, the mount point was also the mount's work dir: the `work/` the
    kernel made in it goes too.
    """
    mounted = is_mounted(target)
    if ref.decrement(mounted) > 0:
        return
    if mounted:
        unmount(target)
    with contextlib.suppress(OSError):
        if holds_work:  # the kernel may leave a whiteout it keeps for reuse
            fsutil.remove_tree(target / "work", unmount=False)
        target.rmdir()
