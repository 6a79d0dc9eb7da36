"""The hot commands' start-up path (`cowstore.cli.fast`): what it imports, and that it
prints what the click commands print."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from cowstore.store import Store
from tests.cli.test_cli_commands import ok

# Run one command line through the console entry point, then name the modules it loaded.
_PROBE = """
import sys
from cowstore.cli import run
try:
    run(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\n" + repr(sorted(sys.modules)) + "\\n")
sys.exit(code)
"""
# Never loaded by a hot command: the CLI framework, the bench, the archive applier, rich,
# and the standard modules that cost a command milliseconds of its start-up for nothing
# (dataclasses with inspect, tarfile, hashlib with OpenSSL, random, base64, signal).
_HEAVY = (
    "click",
    "rich",
    "cowstore.app.bench",
    "cowstore.archive.apply",
    "cowstore.archive.tarstream",
    "dataclasses",
    "inspect",
    "tarfile",
    "hashlib",
    "random",
    "base64",
    "signal",
)


def _env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's cowstore."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def _heavy(loaded: set[str]) -> list[str]:
    return [m for m in loaded if m.split(".")[0] in _HEAVY or m.startswith(_HEAVY)]


def _loaded_by(code: str) -> set[str]:
    """The modules a child Python has loaded after running `code`."""
    probe = f"import sys\n{code}\nprint(repr(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), check=True)
    return set(eval(done.stdout))  # noqa: S307 - our own repr


def _cowstore(root: pathlib.Path, *args: str) -> tuple[str, set[str]]:
    argv = [sys.executable, "-c", _PROBE, "--root", str(root), "--driver", "vfs", *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout, set(eval(done.stderr.strip().splitlines()[-1]))  # noqa: S307 - our own repr


def test_hot_commands_import_only_what_they_need(root: pathlib.Path) -> None:
    out, _ = _cowstore(root, "create", "--mount", "--name", "web", "busybox-demo")
    container_id, mount_path = out.split()
    assert len(container_id) == 64 and (pathlib.Path(mount_path) / "bin").is_dir()
    for args in (("images",), ("ps", "-a"), ("inspect", "web"), ("umount", "web"), ("mount", "web")):
        _, loaded = _cowstore(root, *args)
        assert not _heavy(loaded), args
    _cowstore(root, "umount", "web")
    _cowstore(root, "rm", "web")


def test_listings_open_the_driver_only_when_they_need_it(root: pathlib.Path) -> None:
    _cowstore(root, "create", "--name", "idle", "busybox-demo")
    for args in (("images",), ("images", "-q"), ("ps", "-a", "-q"), ("ps", "-a", "--no-size")):
        out, loaded = _cowstore(root, *args)
        assert out and "cowstore.drivers.vfs" not in loaded, args
    out, loaded = _cowstore(root, "ps", "-a")  # a container's size is measured by the driver
    assert "idle" in out and "cowstore.drivers.vfs" in loaded
    store = Store(root, lazy_driver=True)
    try:
        assert store.images.images() and store.layers.opened_driver is None
        assert store.driver.name == "vfs" and store.layers.opened_driver is store.driver
    finally:
        store.close()
    listing = [sys.executable, "-c", _PROBE, "--root", str(root), "--driver", "overlay2", "images"]
    done = subprocess.run(listing, capture_output=True, text=True, env=_env(), check=False)
    assert done.returncode == 1 and "was created with the vfs driver" in done.stderr


def test_fast_and_click_print_the_same(root: pathlib.Path) -> None:
    from click.testing import CliRunner

    from cowstore.cli import main

    _cowstore(root, "create", "--name", "db", "busybox-demo")
    for args in (("images",), ("images", "--format", "json"), ("ps", "-a", "-q"), ("inspect", "db")):
        fast, _ = _cowstore(root, *args)
        slow = ok(CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", *args]))
        assert fast == slow, args
    details = json.loads(_cowstore(root, "inspect", "db")[0])
    assert details[0]["Name"] in ("db", "/db")


def test_import_and_load_of_a_file_skip_the_cli_framework(root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from cowstore.cli import main

    from ..support.tars import E, build

    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(build(E("etc", "dir", mode=0o755), E("etc/motd", data=b"hi\n")))
    out, loaded = _cowstore(root, "import", str(tar), "motd:1")
    assert out.startswith("sha256:") and not {"click", "rich", "dataclasses"} & {m.split(".")[0] for m in loaded}
    saved = tmp_path / "saved.tar"
    ok(CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", "save", "-o", str(saved), "motd:1"]))
    ok(CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", "rmi", "motd:1"]))
    out, loaded = _cowstore(root, "load", "-i", str(saved))
    assert out == "Loaded image: motd:1\n" and not {"click", "rich", "dataclasses"} & loaded
    slow = ok(CliRunner().invoke(main, ["--root", str(root), "--driver", "vfs", "load", "-i", str(saved)]))
    assert slow == out


def test_the_drivers_of_hot_commands_import_nothing_heavy() -> None:
    modules = (
        "cowstore.store",
        "cowstore.drivers.overlay.overlay2",
        "cowstore.drivers.overlay.overlay",
        "cowstore.drivers.vfs",
    )
    assert not _heavy(_loaded_by(f"for m in {modules!r}: __import__(m)"))


def test_a_store_on_overlay2_never_loads_the_legacy_overlay_driver(tmp_path: pathlib.Path) -> None:
    loaded = _loaded_by(f"from cowstore.store import Store\nStore({str(tmp_path)!r}, 'overlay2').close()")
    assert "cowstore.drivers.overlay.overlay2" in loaded
    assert "cowstore.drivers.overlay.overlay" not in loaded


def _leave_after(text: str, code: int, stdout: int | None) -> subprocess.CompletedProcess[bytes]:
    """A process that buffers `text` on stdout, then leaves as after a hot command exiting `code`."""
    probe = f"import sys\nfrom cowstore.cli import _RanHere, leave\nsys.stdout.write({text!r})\nleave(_RanHere({code}))"
    env = _env()
    env.pop("PYTHONUNBUFFERED", None)  # the output must still be in the buffer at the end
    return subprocess.run([sys.executable, "-c", probe], stdout=stdout, stderr=subprocess.PIPE, env=env, check=False)


def test_leaving_without_teardown_flushes_the_output_first() -> None:
    done = _leave_after("buffered\n", 3, subprocess.PIPE)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"buffered\n", b"")
    with open("/dev/full", "wb") as full:
        done = _leave_after("lost\n", 0, full.fileno())
    assert done.returncode == 1 and done.stderr.decode().startswith("cowstore: [Errno 28]")
