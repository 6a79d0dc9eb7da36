"""The store service (`cowstore system service`) and the thin client in `cowstore.cli.run`:
the same output either way, a silent fallback when no service answers, and what the
service refuses."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from cowstore.cli.client import MAGIC
from cowstore.host.service import listening

from ..support.tars import E, build

IMAGE = "busybox-demo"
# Run a command line through the console entry point; the modules it loaded go to $PROBE_OUT.
_PROBE = """
import os, sys
from cowstore.cli import run
try:
    run(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
with open(os.environ["PROBE_OUT"], "w") as out:
    out.write("\\n".join(sorted(sys.modules)))
sys.exit(code)
"""
_AGO = re.compile(r"(Less than a second|\d+ seconds|About a minute) ago")
# Never loaded when the service answers: the store, the CLI framework, typing, json, socket.
_NOT_ON_CLIENT_PATH = ("cowstore.store", "cowstore.cli.fast", "click", "typing", "json", "socket", "pathlib")


class Cli:
    """`cowstore --root ROOT --driver vfs ...` run as its own process."""

    def __init__(self, root: pathlib.Path, scratch: pathlib.Path) -> None:
        self.root = root
        self.probe_out = scratch / "modules"
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PROBE_OUT=str(self.probe_out))
        self.env.pop("COWSTORE_HOST", None)

    def __call__(
        self, *args: str, direct: bool = False, cwd: pathlib.Path | None = None, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """One command; `direct` runs it in its own process (a socket no service listens on)."""
        host = ["--host", f"unix://{self.root}/none.sock"] if direct else []
        argv = [sys.executable, "-c", _PROBE, "--root", str(self.root), "--driver", "vfs", *host, *args]
        done = subprocess.run(argv, capture_output=True, input=stdin, env=self.env, check=False, timeout=60, cwd=cwd)
        return subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(), done.stderr.decode())

    def modules(self) -> set[str]:
        return set(self.probe_out.read_text().split())

    def served(self, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        """One command, asserting the service answered it (the client loaded no store)."""
        done = self(*args, cwd=cwd)
        assert not self.modules() & set(_NOT_ON_CLIENT_PATH), args
        return done


class Service:
    """A `cowstore system service` process on a root, stopped by SIGTERM."""

    def __init__(self, cli: Cli, at: pathlib.Path | None = None) -> None:
        self.socket = at or cli.root / "cowstore.sock"
        argv = [sys.executable, "-m", "cowstore.cli", "--root", str(cli.root), "--driver", "vfs", "system", "service"]
        argv += ["--socket", f"unix://{at}"] if at else []
        self.process = subprocess.Popen(argv, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not listening(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the service did not come up: {self.process.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.process.communicate()


def _exchange(path: pathlib.Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.fixture
def cli(root: pathlib.Path, tmp_path: pathlib.Path) -> Cli:
    return Cli(root, tmp_path)


@pytest.fixture
def service(cli: Cli) -> Iterator[Service]:
    running = Service(cli)
    try:
        yield running
    finally:
        running.stop()


def _timeless(text: str) -> str:
    """`text` with its relative times, and so its table's column widths, made alike."""
    return re.sub(" +", " ", _AGO.sub("AGO", text))


def _same(served: subprocess.CompletedProcess[str], direct: subprocess.CompletedProcess[str]) -> None:
    assert (served.returncode, _timeless(served.stdout), served.stderr) == (
        direct.returncode,
        _timeless(direct.stdout),
        direct.stderr,
    )


def test_every_hot_command_prints_the_same_through_the_service(cli: Cli, service: Service) -> None:
    created = cli.served("create", "--mount", "--name", "web", IMAGE)
    container_id, mount_path = created.stdout.split()
    assert created.returncode == 0 and len(container_id) == 64 and (pathlib.Path(mount_path) / "bin").is_dir()
    assert cli.served("create", "--name", "db", IMAGE).returncode == 0
    assert (pathlib.Path(cli.served("mount", "db").stdout.strip()) / "bin").is_dir()
    for args in (
        ("images",),
        ("images", "-q"),
        ("images", "--format", "json"),
        ("image", "ls"),
        ("ps", "-a"),
        ("ps", "-aq"),
        ("ps", "--no-size", "--format", "json"),
        ("container", "ls", "-a"),
        ("inspect", "web"),
        ("inspect", "--type", "image", IMAGE),
        ("image", "inspect", IMAGE),
        ("container", "inspect", "db"),
        ("inspect", "nothing-by-this-name"),
        ("create", "no-such-image"),
        ("create", "--name", "web", IMAGE),
        ("mount", "nothing"),
        ("umount", "nothing"),
        ("rm", "nothing"),
        ("rm", "web"),
    ):
        _same(cli.served(*args), cli(*args, direct=True))
    assert json.loads(cli.served("inspect", "db").stdout)[0]["Name"] in ("db", "/db")
    for args in (("umount", "db"), ("rm", "db"), ("umount", "web"), ("rm", "-f", "web")):
        done = cli.served(*args)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{args[-1]}\n", ""), args
    assert cli.served("ps", "-aq").stdout == ""


def test_import_and_load_of_a_file_run_in_the_service(cli: Cli, service: Service, tmp_path: pathlib.Path) -> None:
    """Paths are the client's, relative to its directory; output and errors are as in-process."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "rootfs.tar").write_bytes(build(E("etc", "dir", mode=0o755), E("etc/motd", data=b"hello\n")))
    assert cli("save", "-o", str(work / "saved.tar"), IMAGE, direct=True).returncode == 0
    imported = cli.served("import", "rootfs.tar", "motd:1", cwd=work)
    assert imported.returncode == 0 and imported.stdout.startswith("sha256:"), imported.stderr
    again = cli.served("image", "import", "-m", "again", "rootfs.tar", "motd:2", cwd=work)
    assert again.returncode == 0 and again.stdout.startswith("sha256:"), again.stderr
    assert '"again"' in cli("image", "history", "--format", "json", "motd:2", direct=True).stdout
    assert cli("rmi", IMAGE, direct=True).returncode == 0
    loaded = cli.served("load", "-i", "saved.tar", cwd=work)
    assert (loaded.returncode, loaded.stdout) == (0, f"Loaded image: {IMAGE}:latest\n"), loaded.stderr
    for args in (("load", "-q", "--input", "saved.tar"), ("import", "missing.tar"), ("load", "-i", "missing.tar")):
        _same(cli.served(*args, cwd=work), cli(*args, direct=True, cwd=work))
    from_stdin = cli("import", "-", "motd:3", stdin=(work / "rootfs.tar").read_bytes())
    assert from_stdin.returncode == 0 and "cowstore.store" in cli.modules()


def test_what_the_service_declines_runs_in_the_client(cli: Cli, service: Service) -> None:
    for args in (("image", "history", IMAGE), ("images", "--help"), ("--no-sync", "images"), ("--debug", "ps")):
        done = cli(*args)
        assert done.returncode == 0 and "cowstore.cli.fast" in cli.modules(), args
        _same(done, cli(*args, direct=True))
    other = cli("--driver", "overlay2", "images")
    assert other.returncode == 1 and "created with the vfs driver" in other.stderr
    assert "click" not in cli.modules() and "cowstore.store" in cli.modules()


def test_no_service_stale_socket_or_killed_service_fall_back(cli: Cli) -> None:
    direct = cli("images", direct=True)
    _same(cli("images"), direct)  # no socket at all
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(cli.root / "cowstore.sock"))
    stale.close()  # the file stays, nobody listens
    _same(cli("images"), direct)
    service = Service(cli)  # replaces the stale socket
    try:
        cli.served("images")
        service.process.kill()
        service.process.wait()
        assert (cli.root / "cowstore.sock").exists()
        _same(cli("images"), direct)
        created = cli("create", "--name", "after", IMAGE)
        assert created.returncode == 0 and "cowstore.store" in cli.modules()
    finally:
        service.stop()
    service = Service(cli)
    try:
        assert cli.served("rm", "after").stdout == "after\n"
    finally:
        service.stop()


def test_stop_removes_the_socket_and_a_second_service_is_refused(cli: Cli) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        service = Service(cli)
        try:
            assert stat.S_IMODE(os.stat(service.socket).st_mode) == 0o600
            second = subprocess.run(
                [sys.executable, "-m", "cowstore.cli", "--root", str(cli.root), "--driver", "vfs", "system", "service"],
                capture_output=True,
                text=True,
                env=cli.env,
                timeout=60,
                check=False,
            )
            assert second.returncode == 1
            assert second.stderr == f"cowstore: a store service already listens on {service.socket}\n"
        finally:
            assert service.stop(sig) == 0
        assert not service.socket.exists()


def test_malformed_requests_get_one_line_and_the_service_goes_on(cli: Cli, service: Service) -> None:
    for data in (
        b"GET / HTTP/1.0\r\n\r\n",
        MAGIC + (1 << 30).to_bytes(4, "big"),
        MAGIC + (100).to_bytes(4, "big") + b"short",
        MAGIC + (3).to_bytes(4, "big") + b"a\0b",
        b"",
    ):
        reply = _exchange(service.socket, data)
        assert reply.startswith(b"E") and reply.endswith(b"\n") and reply.count(b"\n") == 1, data
    assert cli.served("images").returncode == 0


@pytest.fixture
def open_directory() -> Iterator[pathlib.Path]:
    """A directory every user may enter (the store root and pytest's are root's alone)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="svc-peer-", dir="/var/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


def test_other_users_are_refused(cli: Cli, open_directory: pathlib.Path) -> None:
    """A peer whose uid is not the socket owner's gets a refusal (the socket is opened to all
    here, as its 0600 mode would otherwise keep the peer out before the check)."""
    service = Service(cli, open_directory / "cowstore.sock")
    try:
        os.chmod(service.socket, 0o666)
        _refused(cli, service.socket)
    finally:
        service.stop()


def _refused(cli: Cli, path: pathlib.Path) -> None:
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(sys.stdin.buffer.read())\n"
        "s.shutdown(socket.SHUT_WR)\n"
        "sys.stdout.write(s.recv(4096).decode())\n"
    )
    payload = b"\0".join([b"/", str(cli.root).encode(), b"", b"images"])
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script, str(path)],
        input=MAGIC + len(payload).to_bytes(4, "big") + payload,
        capture_output=True,
        user=65534,
        cwd="/",
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = f"Epermission denied: uid 65534 may not use the store service of {cli.root.resolve()}\n"
    assert done.stdout.decode() == expected


def test_a_service_that_dies_mid_request(cli: Cli) -> None:
    """The request arrived, no reply came: a listing is run again in the client; a command
    that writes is not (it may have run), and says so."""
    with socket.socket(socket.AF_UNIX) as dying:
        dying.bind(str(cli.root / "cowstore.sock"))
        dying.listen(4)

        def swallow() -> None:
            for _ in range(2):
                conn, _ = dying.accept()
                with conn:
                    length = int.from_bytes(conn.recv(8, socket.MSG_WAITALL)[4:], "big")
                    conn.recv(length, socket.MSG_WAITALL)

        thread = threading.Thread(target=swallow, daemon=True)
        thread.start()
        listed = cli("images")
        assert listed.returncode == 0 and IMAGE in listed.stdout and "cowstore.cli.fast" in cli.modules()
        created = cli("create", "--name", "maybe", IMAGE)
        thread.join(timeout=30)
    assert created.returncode == 1 and created.stdout == ""
    assert created.stderr.endswith("went away before answering in full; the command may or may not have run\n")
    assert cli("ps", "-aq", direct=True).stdout == ""


# Start a command with descriptor argv[1] as descriptor 3 and the variables of systemd's
# socket activation naming this process, as systemd starts a socket-activated unit.
_ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def test_socket_activation_uses_the_passed_socket_and_leaves_it(cli: Cli) -> None:
    path = cli.root / "activated.sock"
    with socket.socket(socket.AF_UNIX) as passed:
        passed.bind(str(path))
        passed.listen(8)
        argv = ["-m", "cowstore.cli", "--root", str(cli.root), "--driver", "vfs", "system", "service"]
        process = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATE, str(passed.fileno()), *argv],
            pass_fds=(passed.fileno(),),
            env=cli.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            env = dict(cli.env, COWSTORE_HOST=f"unix://{path}")
            probe = [sys.executable, "-c", _PROBE, "--root", str(cli.root), "--driver", "vfs", "images", "-q"]
            # The passed socket takes the connection at once; the reply comes once the service runs.
            done = subprocess.run(probe, capture_output=True, text=True, env=env, check=True, timeout=60)
            assert "cowstore.store" not in cli.modules() and len(done.stdout.split()) == 1
            assert not (cli.root / "cowstore.sock").exists()
        finally:
            process.send_signal(signal.SIGTERM)
            _, log = process.communicate(timeout=20)
        assert process.returncode == 0, log
        assert path.exists() and "serving" in log
