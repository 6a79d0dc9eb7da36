"""The hostile-layer catalogue, cases 1-30 (users-security-libs.md part B.3), and more.

Harness: a sentinel tree outside the layer is hashed before and after each case; it must
be byte-identical (content, modes, owners, xattrs, links), and nothing may appear next
to it. "R" cases must raise an ArchiveError naming the entry; "C" cases may succeed but
every write lands inside the layer.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import stat

import pytest

from cowstore.archive import apply_layer
from cowstore.archive.tarstream import Limits
from cowstore.errors import ArchiveError

from ..support.tars import E, build, pad, pax_record, raw_header


def fingerprint(root: pathlib.Path) -> dict[str, tuple]:
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                data = hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            xattrs = () if stat.S_ISLNK(st.st_mode) else tuple(sorted(os.listxattr(p, follow_symlinks=False)))
            result[os.path.relpath(p, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                data,
                xattrs,
                st.st_mtime_ns,
            )
    return result


class Env:
    """A layer directory and, beside it, a sentinel tree that must never change."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.top = tmp
        self.layer = tmp / "store" / "layer"
        self.layer.mkdir(parents=True)
        self.sentinel = tmp / "sentinel"
        (self.sentinel / "dir").mkdir(parents=True)
        (self.sentinel / "file").write_text("precious")
        (self.sentinel / "victim").write_text("victim")
        (self.sentinel / "dir" / "inner").write_text("inner")
        os.symlink("file", self.sentinel / "link")
        os.chmod(self.sentinel / "file", 0o600)
        self.before = fingerprint(self.sentinel)
        self.siblings = sorted(os.listdir(tmp))

    def apply(self, data: bytes, whiteouts: str = "oci", limits: Limits | None = None) -> int:
        return apply_layer(io.BytesIO(data), self.layer, whiteouts=whiteouts, limits=limits)

    def rejected(self, data: bytes, match: str | None = None, **kw) -> ArchiveError:
        with pytest.raises(ArchiveError) as info:
            self.apply(data, **kw)
        if match:
            assert match in str(info.value)
        return info.value

    def check(self) -> None:
        assert fingerprint(self.sentinel) == self.before
        assert sorted(os.listdir(self.top)) == self.siblings
        root_files = {p for p in os.listdir("/") if p.startswith("evil")}
        assert not root_files
        assert not os.path.exists("/etc/evil")


@pytest.fixture
def env(tmp_path: pathlib.Path):
    e = Env(tmp_path)
    yield e
    e.check()


# ---- paths and names ----------------------------------------------------------------


def test_01_dotdot_file(env: Env) -> None:
    err = env.rejected(build(E("../escape")), "escapes the layer root")
    assert err.entry == "../escape"


def test_02_normalizes_outside(env: Env) -> None:
    env.rejected(build(E("a/../../escape")), "escapes")


def test_03_absolute_name_is_contained(env: Env) -> None:
    env.apply(build(E(f"/{env.sentinel}/file", data=b"pwned")))
    assert (env.layer / str(env.sentinel).lstrip("/") / "file").read_bytes() == b"pwned"


def test_04_root_entry_only_touches_layer(env: Env) -> None:
    parent_mode = os.stat(env.layer.parent).st_mode
    env.apply(build(E("./", kind="dir", mode=0o777, uid=1000, mtime=12345)))
    assert os.stat(env.layer.parent).st_mode == parent_mode


@pytest.mark.parametrize("name", ["", ".", "..", "./..", "a\0b"])
def test_05_empty_dot_and_nul_names(env: Env, name: str) -> None:
    if "\0" in name:
        data = pad(raw_header(b"ok")) + bytes(1024)
        data = data.replace(b"ok\0", b"a\0b", 1)
        with pytest.raises(ArchiveError):
            env.apply(build(E("x", pax={"path": "a\0b"})))
        return
    with pytest.raises(ArchiveError):
        env.apply(build(E(name)))


def test_06_component_and_path_too_long(env: Env) -> None:
    env.rejected(build(E("a" * 256)), "name too long")
    deep = "/".join(["d" * 200] * 25)
    env.rejected(build(E(deep)), "path too long")
    assert os.listdir(env.layer) == []


def test_07_deep_nesting_without_recursion_error(env: Env) -> None:
    entries = []
    path = ""
    for _ in range(2000):
        path = f"{path}d/" if path else "d/"
        entries.append(E(path.rstrip("/"), kind="dir", mode=0o755))
    entries.append(E(path + "f", data=b"deep"))
    env.apply(build(*entries))
    from cowstore.host import fsutil

    fsutil.remove_tree(env.layer / "d")
    assert not (env.layer / "d").exists()


def test_08_non_utf8_names(env: Env) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    env.apply(build(E(name, data=b"latin-1")))
    assert os.listdir(os.fsencode(env.layer)) == [b"caf\xe9"]


# ---- symlinks -----------------------------------------------------------------------


def test_09_symlink_to_root_then_write_through(env: Env) -> None:
    """A layer never writes through a symlink it created (docs/semantics.md): refused, nothing written."""
    env.rejected(build(E("link", kind="symlink", target="/"), E("link/etc/evil", data=b"x")), "own layer")
    assert not (env.layer / "etc" / "evil").exists()


def test_10_relative_symlink_out(env: Env) -> None:
    """Writing through the layer's own link is refused (resolved in the root, it would dangle anyway)."""
    entries = (E("link", kind="symlink", target=f"../../../../../../{env.sentinel}"), E("link/pwned", data=b"x"))
    env.rejected(build(*entries), "own layer")


def test_11_symlink_across_layers(env: Env) -> None:
    env.apply(build(E("etc", kind="symlink", target=str(env.sentinel))))
    env.rejected(build(E("etc/passwd", data=b"root::0:0")), "No such file")
    # once the target exists inside the root, the link resolves there, as under chroot
    inside = str(env.sentinel).lstrip("/")
    env.apply(build(E(inside, kind="dir"), E("etc/passwd", data=b"root::0:0")))
    assert (env.layer / inside / "passwd").read_bytes() == b"root::0:0"


def test_12_symlink_replaced_by_file(env: Env) -> None:
    env.apply(build(E("x", kind="symlink", target=str(env.sentinel / "file")), E("x", data=b"overwrite")))
    assert (env.layer / "x").read_bytes() == b"overwrite"
    assert not (env.layer / "x").is_symlink()


def test_13_symlink_loop(env: Env) -> None:
    env.rejected(build(E("a", kind="symlink", target="b"), E("b", kind="symlink", target="a"), E("a/f")), "own layer")


def test_14_metadata_through_lower_symlink(env: Env) -> None:
    env.apply(build(E("d", kind="symlink", target=str(env.sentinel / "dir"))))
    env.apply(build(E("d", kind="dir", mode=0o777, uid=0, pax={"SCHILY.xattr.user.evil": "1"})))
    assert (env.layer / "d").is_dir() and not (env.layer / "d").is_symlink()


def test_14b_dir_mtime_pass_skips_replaced_dir(env: Env) -> None:
    env.apply(build(E("d", kind="dir", mtime=5), E("d", kind="symlink", target=str(env.sentinel / "dir"))))
    assert (env.layer / "d").is_symlink()


@pytest.mark.parametrize("target", ["", "x" * 5000])
def test_15_bad_symlink_targets(env: Env, target: str) -> None:
    with pytest.raises(ArchiveError):
        env.apply(build(E("l", kind="symlink", target=target)))


# ---- hard links ---------------------------------------------------------------------


def test_16_hardlink_dotdot(env: Env) -> None:
    env.rejected(build(E("l", kind="link", target=f"../../{env.sentinel.name}/file")), "escapes")


def test_17_absolute_hardlink(env: Env) -> None:
    env.rejected(build(E("l", kind="link", target="/etc/shadow")), "not in layer")
    env.apply(build(E("etc/shadow", data=b"s"), E("l", kind="link", target="/etc/shadow")))
    assert os.stat(env.layer / "l").st_ino == os.stat(env.layer / "etc" / "shadow").st_ino


def test_18_hardlink_to_outward_symlink(env: Env) -> None:
    env.apply(build(E("s", kind="symlink", target=str(env.sentinel / "file")), E("h", kind="link", target="s")))
    assert (env.layer / "h").is_symlink()
    assert os.lstat(env.layer / "h").st_ino == os.lstat(env.layer / "s").st_ino


def test_19_hardlink_through_symlinked_dir(env: Env) -> None:
    entries = (E("dir", kind="symlink", target=str(env.sentinel)), E("h", kind="link", target="dir/file"))
    env.rejected(build(*entries), "not in layer")


@pytest.mark.parametrize("case", ["dir", "self", "later"])
def test_20_hardlink_to_dir_self_or_later(env: Env, case: str) -> None:
    entries = {
        "dir": (E("d", kind="dir"), E("h", kind="link", target="d")),
        "self": (E("h", kind="link", target="h"),),
        "later": (E("h", kind="link", target="f"), E("f", data=b"x")),
    }[case]
    with pytest.raises(ArchiveError):
        env.apply(build(*entries))


def test_21_file_replacing_hardlink_does_not_write_through(env: Env) -> None:
    env.apply(build(E("a", data=b"old"), E("b", kind="link", target="a"), E("b", data=b"new content")))
    assert (env.layer / "a").read_bytes() == b"old"
    assert (env.layer / "b").read_bytes() == b"new content"


# ---- whiteouts ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh..", ".wh...", "etc/.wh..", ".wh."])
def test_22_to_24_dot_whiteouts_rejected(env: Env, name: str) -> None:
    env.apply(build(E("etc", kind="dir")))
    env.rejected(build(E(name)), "invalid whiteout")
    assert env.layer.is_dir() and (env.layer / "etc").is_dir()


def test_25_whiteout_through_symlinked_parent(env: Env) -> None:
    env.apply(build(E("ln", kind="symlink", target=str(env.sentinel))))
    env.apply(build(E("ln/.wh.victim")))
    env.rejected(build(E("dangling", kind="symlink", target="/nonexistent"), E("dangling/.wh.victim")), "own layer")


def test_26_whiteout_of_symlink_removes_only_link(env: Env) -> None:
    env.apply(build(E("etc/passwd", data=b"p"), E("localetc", kind="symlink", target="etc")))
    env.apply(build(E(".wh.localetc")))
    assert not os.path.lexists(env.layer / "localetc")
    assert (env.layer / "etc" / "passwd").exists()


def test_27_opaque_in_symlinked_dir(env: Env) -> None:
    env.apply(build(E("o", kind="symlink", target=str(env.sentinel))))
    env.apply(build(E("o/.wh..wh..opq")))


@pytest.mark.parametrize("order", ["whiteout_first", "entry_first"])
def test_28_whiteout_and_entry_in_one_layer(env: Env, order: str) -> None:
    env.apply(build(E("x", data=b"lower")))
    entries = [E(".wh.x"), E("x", data=b"this layer")]
    if order == "entry_first":
        entries.reverse()
    env.apply(build(*entries))
    assert (env.layer / "x").read_bytes() == b"this layer"


def test_29_aufs_metadata_never_materialized(env: Env) -> None:
    env.apply(build(E(".wh..wh.plnk", kind="dir"), E(".wh..wh.plnk/123.456", data=b"x"), E(".wh..wh.aufs")))
    assert os.listdir(env.layer) == []
    env.rejected(build(E("h", kind="link", target=".wh..wh.plnk/123.456")), "not in layer")


def test_30_smuggled_overlay_whiteouts(env: Env) -> None:
    env.rejected(build(E("w", kind="chr", dev=(0, 0))), "overlay whiteout")
    env.rejected(build(E("d", kind="dir", pax={"SCHILY.xattr.trusted.overlay.opaque": "y"})), "overlay metadata")
    env.rejected(build(E("f", pax={"SCHILY.xattr.user.overlay.redirect": "/x"})), "overlay metadata")


# ---- beyond 1-30: parser strictness and limits ----------------------------------------


def test_truncated_and_garbage(env: Env) -> None:
    good = build(E("f", data=b"x" * 3000))
    env.rejected(good[:1500], "truncated")
    env.rejected(good + b"garbage", "after the end")
    env.rejected(b"\x89PNG\r\n\x1a\n" + bytes(600), "not a valid tar header")


def test_pax_size_disagreeing_with_header(env: Env) -> None:
    data = pad(raw_header(b"PaxHeaders/f", b"x", size=len(pax_record("size", b"5")))) + pad(pax_record("size", b"5"))
    data += pad(raw_header(b"f", b"0", size=3)) + pad(b"abc") + bytes(1024)
    env.rejected(data, "disagrees")


def test_pax_before_gnu_longname(env: Env) -> None:
    rec = pax_record("mtime", b"1")
    data = pad(raw_header(b"PaxHeaders/x", b"x", size=len(rec))) + pad(rec)
    data += pad(raw_header(b"././@LongLink", b"L", size=4)) + pad(b"abc\0")
    data += pad(raw_header(b"f", b"0")) + bytes(1024)
    env.rejected(data, "ambiguous")


def test_header_only_type_with_payload(env: Env) -> None:
    data = pad(raw_header(b"l", b"2", size=5, linkname=b"x")) + pad(b"hello") + bytes(1024)
    env.rejected(data, "ambiguous")


def test_zero_length_pax_record(env: Env) -> None:
    data = pad(raw_header(b"PaxHeaders/x", b"x", size=4)) + pad(b"0 a\n") + pad(raw_header(b"f")) + bytes(1024)
    env.rejected(data, "PAX record")


def test_limits(env: Env) -> None:
    env.rejected(build(E("a"), E("b"), E("c")), "entries", limits=Limits(max_entries=2))
    env.rejected(build(E("a", data=b"x" * 100)), "limit", limits=Limits(max_bytes=50))
    env.rejected(build(E("a", pax={"SCHILY.xattr.user.big": "x" * 70000})), "xattrs")


def test_unknown_type_rejected(env: Env) -> None:
    data = pad(raw_header(b"v", b"V")) + bytes(1024)
    env.rejected(data, "unsupported")


def test_devices_fifos_and_setuid_kept_inside(env: Env) -> None:
    env.apply(
        build(
            E("dev/sda", kind="blk", dev=(8, 0), mode=0o666),
            E("fifo", kind="fifo"),
            E("bin/sh", data=b"#!", mode=0o4755),
        )
    )
    assert stat.S_ISBLK(os.lstat(env.layer / "dev" / "sda").st_mode)
    assert stat.S_ISFIFO(os.lstat(env.layer / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(env.layer / "bin" / "sh").st_mode) == 0o4755


def test_capability_survives_chown(env: Env) -> None:
    cap = bytes.fromhex("0100000200040000000000000000000000000000")
    env.apply(
        build(
            E("ping", data=b"elf", uid=1, mode=0o755, pax={"SCHILY.xattr.security.capability": cap.decode("latin-1")})
        )
    )
    value = os.getxattr(env.layer / "ping", "security.capability")
    assert value == cap.decode("latin-1").encode("utf-8") or value == cap


def test_extreme_times(env: Env) -> None:
    env.apply(build(E("old", mtime=-100), E("future", mtime=10_000_000_000), E("frac", pax={"mtime": "1.5"})))
    assert os.lstat(env.layer / "old").st_mtime == -100


@pytest.mark.parametrize("mode", ["overlay", "aufs"])
def test_driver_whiteout_modes(env: Env, mode: str) -> None:
    env.apply(build(E("d", kind="dir"), E("d/.wh..wh..opq"), E(".wh.gone")), whiteouts=mode)
    if mode == "overlay":
        assert stat.S_ISCHR(os.lstat(env.layer / "gone").st_mode)
        assert os.getxattr(env.layer / "d", "trusted.overlay.opaque") == b"y"
    else:
        assert (env.layer / ".wh.gone").is_file()
        assert (env.layer / "d" / ".wh..wh..opq").is_file()
