"""Apply a layer tar to a directory, safely, with OCI whiteout semantics.

Every name is resolved with openat2(RESOLVE_IN_ROOT) relative to the layer root, and the
last component is always created or changed without following symlinks, so nothing in a
hostile tar (`..`, absolute names, symlinks or hard links pointing out, whiteouts through
symlinked directories) can touch a file outside the layer. Existing entries are unlinked
and recreated, never written through, which keeps hard-linked copies (legacy overlay)
and lower layers intact.

Three whiteout modes serve the drivers: `oci` deletes what a whiteout names (a full
filesystem view: vfs, btrfs, devicemapper, naive apply); `overlay` turns whiteouts into
overlayfs' own markers (0:0 character devices, the opaque xattr) in an upper directory;
`aufs` keeps `.wh.` files as they are, since aufs branches store them that way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from cowstore.archive import tarstream
from cowstore.archive.ownentries import OwnEntries
from cowstore.archive.tarstream import Limits, Observed, TarEntry, TarReader
from cowstore.archive.whiteouts import (
    META_PREFIX,
    OPAQUE_MARKER,
    OVERLAY_OPAQUE,
    OVERLAY_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
    overlay_xattr,
)
from cowstore.errors import ArchiveError, BreakoutError, InvalidOption
from cowstore.host import fsutil
from cowstore.host.safepath import Root

if TYPE_CHECKING:
    from cowstore.digest import Reader

_NS_LIMIT = 2**63 - 1
_DEFAULT_ACL = "system.posix_acl_default"
_T = TypeVar("_T")
WHITEOUT_MODES = ("oci", "overlay", "aufs")


def clean_name(name: str, entry: str) -> list[str]:
    """Split a tar name into components, resolving `.` and `..` lexically.

    Absolute names become relative to the root (as moby does); a `..` that climbs above
    the root is a breakout. Empty components and NUL bytes are refused.
    """
    if name and name[0] not in "/." and "/." not in name and "//" not in name and name[-1] != "/" and "\0" not in name:
        return name.split("/")  # nothing to resolve: the names of almost every entry
    if "\0" in name:
        raise ArchiveError("NUL byte in name", entry)
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BreakoutError("path escapes the layer root", entry)
            parts.pop()
            continue
        parts.append(part)
    return parts


class LayerApplier:
    """Applies entries of one layer tar to one root directory."""

    def __init__(self, root: str | os.PathLike, whiteouts: str, limits: Limits) -> None:
        if whiteouts not in WHITEOUT_MODES:
            raise InvalidOption(f"unknown whiteout mode {whiteouts!r} (use one of {', '.join(WHITEOUT_MODES)})")
        self.root = Root(root)
        self.whiteouts = whiteouts
        self.limits = limits
        self.unpacked: set[str] = set()
        self.dir_times: list[tuple[str, int]] = []
        self._dirs: dict[str, int] = {}
        self._dir_facts: dict[str, tuple[int, bool]] = {}  # parent dir -> (gid, default ACL?)
        self.own = OwnEntries()
        self._ids = (os.geteuid(), os.getegid())
        self._inexact_modes = 0o7000 | _umask()  # mode bits a file cannot be created with as is

    def close(self) -> None:
        self._forget_dirs()
        self.root.close()

    def _forget_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        self._dir_facts.clear()

    @overload
    def _parent(self, parts: list[str], create: Literal[True]) -> int: ...

    @overload
    def _parent(self, parts: list[str], create: bool) -> int | None: ...

    def _parent(self, parts: list[str], create: bool) -> int | None:
        """O_PATH fd of the parent directory of `parts` (cached until something is removed)."""
        rel = "/".join(parts[:-1])
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        try:
            fd = self.root.make_dirs(rel) if create else self.root.open_dir(rel)
        except (FileNotFoundError, NotADirectoryError):
            if create:
                raise
            return None
        self._dirs[rel] = fd
        return fd

    def apply(self, reader: TarReader) -> int:
        size = 0
        for entry in reader:
            try:
                size += self._apply_entry(reader, entry)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.errno == errno.ELOOP:
                    reason = "too many levels of symbolic links"
                raise ArchiveError(f"cannot apply entry ({reason})", entry.name) from None
        self._set_dir_times()
        return size

    def _check_lengths(self, parts: list[str], entry: TarEntry) -> None:
        # A character encodes to at most 4 bytes: most names are clearly short enough.
        if len(entry.name) * 4 <= self.limits.max_path and max(map(len, parts)) * 4 <= self.limits.max_name:
            return
        for part in parts:
            if len(os.fsencode(part)) > self.limits.max_name:
                raise ArchiveError("name too long", entry.name)
        if len(os.fsencode("/".join(parts))) > self.limits.max_path:
            raise ArchiveError("path too long", entry.name)

    def _apply_entry(self, reader: TarReader, entry: TarEntry) -> int:
        parts = clean_name(entry.name, entry.name)
        if not parts:
            if entry.kind != tarstream.DIRECTORY:
                raise ArchiveError("entry without a name", entry.name)
            return 0  # the layer root itself: its metadata belongs to the driver
        self._check_lengths(parts, entry)
        for key in entry.xattrs:
            if key.startswith(OVERLAY_XATTR_PREFIXES):
                raise ArchiveError(f"overlay metadata xattr {key} in a layer", entry.name)
        if META_PREFIX in entry.name and any(part.startswith(META_PREFIX) for part in parts[:-1]):
            return 0  # inside aufs bookkeeping dirs (.wh..wh.plnk/...): never materialised
        base = parts[-1]
        self.own.check_parent(parts, entry.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(parts, entry)
            return 0
        if entry.kind == tarstream.CHARDEV and entry.devmajor == 0 and entry.devminor == 0:
            raise ArchiveError("overlay whiteout device (char 0:0) in a layer", entry.name)
        rel = "/".join(parts)
        if entry.kind == tarstream.HARDLINK:
            target = clean_name(entry.linkname, entry.name)
            if not target or target == parts:
                raise ArchiveError("hard link to itself or to the root", entry.name)
            if "/".join(target) not in self.unpacked:  # one answer on every driver: docs/semantics.md
                raise ArchiveError(
                    f"hard link target {entry.linkname!r} not in layer (a lower layer's file)", entry.name
                )
        if entry.kind == tarstream.SYMLINK:
            target_len = len(os.fsencode(entry.linkname))
            if target_len == 0 or target_len >= self.limits.max_path:
                raise ArchiveError("symlink target empty or too long", entry.name)
        self.unpacked.add(rel)
        self.own.record(rel, entry.kind)
        if entry.kind == tarstream.DIRECTORY:
            self._make_dir(parts, entry)
            self.dir_times.append((rel, _mtime_ns(entry)))
            return 0
        if entry.kind == tarstream.REGULAR:
            return self._create(parts, lambda pfd: self._write_file(reader, entry, pfd, parts))
        if entry.kind == tarstream.SYMLINK:
            self._create(parts, lambda pfd: os.symlink(entry.linkname, base, dir_fd=pfd))
            pfd = self._parent(parts, create=True)
            os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(base, ns=(_mtime_ns(entry),) * 2, dir_fd=pfd, follow_symlinks=False)
            return 0
        if entry.kind == tarstream.HARDLINK:
            self._create(parts, lambda pfd: self._link(entry, pfd, base))
            return 0
        if entry.kind in (tarstream.CHARDEV, tarstream.BLOCKDEV):
            kind = stat.S_IFCHR if entry.kind == tarstream.CHARDEV else stat.S_IFBLK
            device = os.makedev(entry.devmajor, entry.devminor)
            self._create(parts, lambda pfd: os.mknod(base, kind | 0o600, device, dir_fd=pfd))
        else:
            self._create(parts, lambda pfd: os.mkfifo(base, 0o600, dir_fd=pfd))
        pfd = self._parent(parts, create=True)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            self._set_xattrs(f"/proc/self/fd/{fd}", entry)
            os.chmod(f"/proc/self/fd/{fd}", entry.mode)
            os.utime(f"/proc/self/fd/{fd}", ns=(_mtime_ns(entry),) * 2)
        finally:
            os.close(fd)
        return 0

    def _create(self, parts: list[str], make: Callable[[int], _T]) -> _T:
        """Run `make(parent fd)`, which creates the last component exclusively; if something is
        in the way, remove it (never writing through it) and make again.

        Trying first spares a lookup for every entry of a layer, where almost every name is new.
        """
        try:
            return make(self._parent(parts, create=True))
        except FileExistsError:
            pfd = self._parent(parts, create=True)
            existing = _lstat(parts[-1], pfd)
            if existing is not None:
                self._remove(pfd, parts[-1], existing)
            return make(self._parent(parts, create=True))

    def _make_dir(self, parts: list[str], entry: TarEntry) -> None:
        """A directory entry: made, or an existing directory kept (its contents stay); anything else replaced."""
        base = parts[-1]
        pfd = self._parent(parts, create=True)
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            existing = _lstat(base, pfd)
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                self._create(parts, lambda fd: os.mkdir(base, 0o700, dir_fd=fd))
                pfd = self._parent(parts, create=True)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._set_owner_xattrs_mode(fd, entry)
        finally:
            os.close(fd)
        self._dir_facts.pop("/".join(parts), None)  # its group or ACL may have changed

    def _write_file(self, reader: TarReader, entry: TarEntry, pfd: int, parts: list[str]) -> int:
        """Create and fill a regular file, skipping the chown and chmod it does not need.

        A file is born with its final mode when the umask leaves that mode alone, it has
        no setuid, setgid or sticky bit (those must follow the chown, which clears them)
        and its directory has no default ACL (which would stand in for the umask). It is
        born with its final owner when that is this process's uid and gid and its
        directory's group is that gid too (with a setgid directory, or a filesystem
        mounted `grpid`, a new file takes its directory's group).
        """
        gid, default_acl = self._facts(parts, pfd)
        exact = not entry.mode & self._inexact_modes and not default_acl
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, entry.mode if exact else 0o600, dir_fd=pfd)
        try:
            for chunk in reader.read_payload():
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            if (entry.uid, entry.gid) != self._ids or gid != self._ids[1]:
                os.fchown(fd, entry.uid, entry.gid)
            self._set_xattrs(fd, entry)
            if not exact:
                os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(_mtime_ns(entry),) * 2)
        finally:
            os.close(fd)
        return entry.size

    def _facts(self, parts: list[str], pfd: int) -> tuple[int, bool]:
        """(group, whether it has a default ACL) of the directory `pfd` holding `parts`, looked up once."""
        rel = "/".join(parts[:-1])
        facts = self._dir_facts.get(rel)
        if facts is None:
            try:
                os.getxattr(f"/proc/self/fd/{pfd}", _DEFAULT_ACL)
                default_acl = True
            except OSError as exc:
                default_acl = exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
            facts = self._dir_facts[rel] = (os.fstat(pfd).st_gid, default_acl)
        return facts

    def _link(self, entry: TarEntry, pfd: int, base: str) -> None:
        target = clean_name(entry.linkname, entry.name)
        tfd = self._parent(target, create=False)
        target_st = _lstat(target[-1], tfd)
        if target_st is None:
            raise ArchiveError("hard link target not in layer", entry.name)
        if stat.S_ISDIR(target_st.st_mode):
            raise ArchiveError("hard link to a directory", entry.name)
        # linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _set_owner_xattrs_mode(self, fd: int, entry: TarEntry) -> None:
        """chown, then xattrs, then chmod: chown clears setuid bits and file capabilities."""
        os.fchown(fd, entry.uid, entry.gid)
        self._set_xattrs(fd, entry)
        os.fchmod(fd, entry.mode)

    def _set_xattrs(self, target: int | str, entry: TarEntry) -> None:
        for key, value in entry.xattrs.items():
            try:
                os.setxattr(target, key, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                    raise

    def _remove(self, pfd: int, base: str, st: os.stat_result) -> None:
        """Remove an existing entry in the way of a new one (never writing through it).

        Removing a directory or a symlink can change what cached directory fds mean, so
        the cache is dropped; callers fetch their parent fd again afterwards.
        """
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                fsutil.empty_dir(fd)
            finally:
                os.close(fd)
            os.rmdir(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._forget_dirs()

    def _apply_whiteout(self, parts: list[str], entry: TarEntry) -> None:
        base = parts[-1]
        parent_rel = "/".join(parts[:-1])
        if self.whiteouts == "aufs":
            if base.startswith(META_PREFIX) and base != OPAQUE_MARKER:
                return  # aufs' own bookkeeping (.wh..wh.plnk, .wh..wh.aufs) never comes from a layer
            pfd = self._parent(parts, create=True)
            existing = _lstat(base, pfd)
            if existing is not None:
                self._remove(pfd, base, existing)
                pfd = self._parent(parts, create=True)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                self._set_owner_xattrs_mode(fd, entry)
            finally:
                os.close(fd)
            return
        if base == OPAQUE_MARKER:
            self._apply_opaque(parts, parent_rel, entry)
            return
        if base.startswith(META_PREFIX):
            return  # other aufs metadata: never materialised
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", ".."):
            raise ArchiveError("invalid whiteout name", entry.name)
        victim_rel = f"{parent_rel}/{victim}" if parent_rel else victim
        if victim_rel in self.unpacked:
            return  # a whiteout hides lower layers only, never this layer's own entry
        if self.whiteouts == "overlay":
            pfd = self._parent(parts, create=True)
            existing = _lstat(victim, pfd)
            if existing is not None:
                self._remove(pfd, victim, existing)
                pfd = self._parent(parts, create=True)
            os.mknod(victim, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            os.chown(victim, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            self.unpacked.add(victim_rel)
            return
        found = self._parent(parts, create=False)
        if found is None:
            return
        pfd = found
        existing = _lstat(victim, pfd)
        if existing is not None:
            self._remove(pfd, victim, existing)

    def _apply_opaque(self, parts: list[str], parent_rel: str, entry: TarEntry) -> None:
        pfd = self._parent(parts, create=self.whiteouts == "overlay")
        if pfd is None:
            return  # nothing below to hide
        if self.whiteouts == "overlay":
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.setxattr(fd, overlay_xattr(OVERLAY_OPAQUE), b"y")
            finally:
                os.close(fd)
            return
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            prefix = f"{parent_rel}/" if parent_rel else ""
            for name in os.listdir(fd):
                if f"{prefix}{name}" in self.unpacked:
                    continue
                existing = _lstat(name, fd)
                if existing is not None:
                    self._remove(fd, name, existing)
        finally:
            os.close(fd)

    def _set_dir_times(self) -> None:
        """Directory times last, deepest first; skip what is no longer a directory."""
        for rel, mtime_ns in reversed(self.dir_times):
            try:
                fd = self.root.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)


def _umask() -> int:
    """This process's umask, read without changing it (another thread may be creating files)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    return 0o777  # unknown: no mode is taken as exact


def _lstat(name: str, dir_fd: int | None) -> os.stat_result | None:
    if dir_fd is None:
        return None
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _mtime_ns(entry: TarEntry) -> int:
    return max(-_NS_LIMIT, min(_NS_LIMIT, int(entry.mtime * 1_000_000_000)))


def apply_layer(
    stream: Reader,
    root: str | os.PathLike,
    *,
    whiteouts: str = "oci",
    limits: Limits | None = None,
) -> int:
    """Extract the uncompressed layer tar `stream` into directory `root`.

    A stream wrapped in `Observed` has its observer see the tar as it is applied.

    Returns the sum of the regular files' sizes (Docker's applied size). Raises
    ArchiveError naming the entry for anything malformed, hostile or over a limit; the
    caller discards the layer then, since it may be partly written.
    """
    if isinstance(stream, Observed) and stream.limits is not None:
        limits = stream.limits
    limits = limits or Limits()
    reader = TarReader(stream, limits)
    applier = LayerApplier(root, whiteouts, limits)
    try:
        if reader.observer is not None:
            reader.observer.start(applier.root)
        return applier.apply(reader)
    finally:
        applier.close()
