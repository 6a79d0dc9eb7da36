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
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cowstore import fsutil, mounts
from cowstore.archive.changes import entry_modified, list_entries, sorted_with_parents
from cowstore.drivers import Change, housekeeping, ids
from cowstore.drivers.refcount import RefCount
from cowstore.errors import InvalidOption, MaxDepthExceeded, MountError
from cowstore.safepath import lstat_beneath

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

# Layer ids become directory names next to the driver's own bookkeeping entries.
_RESERVED_IDS = {"l", "mountpoints"}


def check_id(id: str) -> str:
    """Refuse ids that would escape the home or collide with the driver's own entries."""
    if id in _RESERVED_IDS:
        raise InvalidOption(f"invalid layer id {id!r}: the name is reserved by the overlay drivers")
    return ids.check_id(id)


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


def _syscall(number: int, *args: object) -> int:
    """Raw syscall with every argument widened to a C long; raises OSError on failure."""
    call = [a if isinstance(a, (bytes, type(None))) else ctypes.c_long(int(a)) for a in args]
    rc = mounts.libc().syscall(ctypes.c_long(number), *call)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


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
        fsfd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
    except OSError:
        return False
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FD, b"lowerdir+", None, root)
        finally:
            os.close(root)
        return True
    except OSError:
        return False
    finally:
        os.close(fsfd)


@dataclass
class OverlaySpec:
    """What to mount: layer paths relative to `base` (the driver home), nearest lower first.

    Without `upper` the mount is read-only (the kernel needs two lowers then).
    """

    base: pathlib.Path
    lowers: Sequence[str]
    upper: str | None = None
    work: str | None = None
    options: list[tuple[str, str | None]] = field(default_factory=list)


def _depth_error(spec: OverlaySpec, detail: str) -> MaxDepthExceeded:
    return MaxDepthExceeded(f"max depth exceeded: {len(spec.lowers)} lower layers {detail}")


def _mount_new_api(spec: OverlaySpec, target: pathlib.Path) -> None:
    if len(spec.lowers) > KERNEL_MAX_LOWERS:
        raise _depth_error(spec, f"(the kernel mounts at most {KERNEL_MAX_LOWERS})")
    base_fd = os.open(spec.base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fsfd = -1
    step = "fsopen"
    try:
        fsfd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        dirs = [("lowerdir+", p) for p in spec.lowers]
        if spec.upper is not None:
            dirs += [("upperdir", spec.upper), ("workdir", spec.work)]
        for key, rel in dirs:
            step = f"{key} {rel}"
            fd = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
            try:
                _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FD, key.encode(), None, fd)
            finally:
                os.close(fd)
        for key, value in spec.options:
            step = key
            if value is None:
                _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_FLAG, key.encode(), None, 0)
            else:
                _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
        step = "create"
        _syscall(_SYS_FSCONFIG, fsfd, _FSCONFIG_CMD_CREATE, None, None, 0)
        step = "fsmount"
        attrs = _MOUNT_ATTR_RDONLY if spec.upper is None else 0
        mfd = _syscall(_SYS_FSMOUNT, fsfd, _FSMOUNT_CLOEXEC, attrs)
        try:
            step = "move_mount"
            _syscall(_SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mfd)
    except OSError as exc:
        detail = _fs_messages(fsfd) if fsfd >= 0 else ""
        if exc.errno == errno.EINVAL and step.startswith("lowerdir+") and "too many" in detail.lower():
            raise _depth_error(spec, f"({detail})") from None
        raise MountError(f"overlay mount on {target} failed at {step}: {exc.strerror}" + (f" ({detail})" if detail else "")) from None
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
            if mounts.libc().mount(b"overlay", target_b, b"overlay", flags, data) != 0:
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


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def xattr_prefix() -> str:
    """Where overlay keeps its xattrs: trusted.* normally, user.* with userxattr."""
    return "user.overlay." if in_user_namespace() else "trusted.overlay."


def is_opaque(path: str | os.PathLike) -> bool:
    """Whether the upper directory hides everything below it (opaque xattr = "y")."""
    try:
        value = os.getxattr(path, xattr_prefix() + "opaque", follow_symlinks=False)
    except OSError:
        return False
    return value == b"y"


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


def acquire_mount(ref: RefCount, target: pathlib.Path, spec: Callable[[], OverlaySpec], *, classic: bool = False) -> None:
    """Count one more user of `target`; the first user mounts (`spec` is built only then)."""
    if ref.increment(is_mounted(target)) > 1:
        return
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        mount_overlay(spec(), target, classic=classic)
    except BaseException:
        ref.reset()
        raise


def release_mount(ref: RefCount, target: pathlib.Path) -> None:
    """Drop one user of `target`; the last one unmounts and removes the mount point."""
    mounted = is_mounted(target)
    if ref.decrement(mounted) > 0:
        return
    if mounted:
        unmount(target)
    with contextlib.suppress(OSError):
        target.rmdir()


def upper_changes(upper: str | os.PathLike, parent_view: str | os.PathLike | None) -> list[Change]:
    """The changes an upper dir makes to `parent_view` (the parent's mounted tree).

    Gives what `changes_dirs(merged, parent_view)` gives, but visits only the upper
    dir's entries: a lower entry is looked at only when the upper dir names it, and a
    lower directory is listed only when the upper one is opaque (deleted and recreated).
    """
    upper_root = os.fspath(upper)
    old_root = os.fspath(parent_view) if parent_view is not None else None
    found: dict[str, str] = {}
    stack: list[tuple[str, bool]] = [("", old_root is not None)]
    while stack:
        rel, in_old = stack.pop()
        new_entries = list_entries(os.path.join(upper_root, rel))
        for name, nst in new_entries.items():
            path = f"{rel}/{name}" if rel else name
            old_path = os.path.join(old_root, path) if in_old and old_root is not None else None
            ost = fsutil.lstat_or_none(old_path) if old_path is not None else None
            if is_whiteout(nst):
                if ost is not None:
                    found["/" + path] = "D"
                continue
            if ost is None or old_path is None:  # old_path: for the type checker
                found["/" + path] = "A"
                if stat.S_ISDIR(nst.st_mode):
                    stack.append((path, False))
                continue
            new_path = os.path.join(upper_root, path)
            if entry_modified(new_path, nst, old_path, ost):
                found["/" + path] = "C"
            if not stat.S_ISDIR(nst.st_mode):
                continue
            if stat.S_ISDIR(ost.st_mode) and is_opaque(new_path):
                for gone in list_entries(old_path).keys() - _real_names(new_path):
                    found[f"/{path}/{gone}"] = "D"
            stack.append((path, stat.S_ISDIR(ost.st_mode)))
    return sorted_with_parents(found)


def _real_names(path: str) -> set[str]:
    """Names in an upper directory that are real entries (whiteouts hide, not add)."""
    return {name for name, st in list_entries(path).items() if not is_whiteout(st)}


def expand_root_opaque(upper: pathlib.Path, parent_view: pathlib.Path | None) -> None:
    """Make an opaque upper *root* work: overlay ignores the opaque flag on a layer root.

    A layer tar may say "hide everything below" at its top (`.wh..wh..opq` at the root).
    The same effect is spelled out instead: a whiteout for every top-level name the
    parent shows that this layer does not replace, and the opaque flag on each directory
    that replaces a parent directory (one level down, where overlay honours it).
    """
    key = xattr_prefix() + "opaque"
    os.removexattr(upper, key)
    if parent_view is None:
        return
    for name, theirs in list_entries(os.fspath(parent_view)).items():
        mine = fsutil.lstat_or_none(os.path.join(upper, name))
        if mine is None:
            os.mknod(os.path.join(upper, name), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif stat.S_ISDIR(mine.st_mode) and stat.S_ISDIR(theirs.st_mode):
            os.setxattr(os.path.join(upper, name), key, b"y", follow_symlinks=False)


def drop_needless_whiteouts(upper: pathlib.Path, parent_view: pathlib.Path) -> None:
    """Remove whiteout devices that hide nothing in the parent view.

    overlayfs lists a directory that exists only in the upper layer straight from disk,
    so a whiteout there (a tar may white out a name its lower layers never had) would
    show up in readdir as a name that cannot be opened.
    """
    for dirpath, dirnames, filenames in os.walk(upper):
        rel = os.path.relpath(dirpath, upper)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if is_whiteout(st) and lstat_beneath(parent_view, os.path.join(rel, name)) is None:
                os.unlink(path)


def layer_ids(home: pathlib.Path) -> list[str]:
    """Layer directories of an overlay driver home (not `l/`, counts, or staging dirs)."""
    with os.scandir(home) as it:
        return sorted(
            e.name
            for e in it
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in _RESERVED_IDS
        )


def layer_exists(home: pathlib.Path, id: str) -> bool:
    """Whether layer `id` exists in an overlay driver home (an invalid id never does)."""
    try:
        return (home / check_id(id)).is_dir()
    except InvalidOption:
        return False


def remove_layer(home: pathlib.Path, layer: pathlib.Path, id: str, ref: RefCount) -> None:
    """Unmount a layer, then delete it under a `-removing` name.

    Renaming first means a crash half-way through the deletion leaves nothing under
    the layer's id; the driver sweeps `-removing` leftovers when it starts. The caller
    holds the id's lock (`ref`) throughout, which keeps that sweep off this one.
    """
    unmount(layer / "merged")
    ref.reset()
    doomed = housekeeping.transit_path(home, id, housekeeping.REMOVING)
    os.rename(layer, doomed)
    fsutil.remove_tree(doomed)
