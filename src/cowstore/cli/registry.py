"""`cowstore login`, `logout`, `pull` and `push`: the registry commands, with Docker's and podman's flags.

Progress goes to the terminal as one rich bar per layer and phase (download, extract,
compress, upload); when output is not a terminal, as plain lines (`<layer>: Pull
complete`); with `-q`, only the result.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from cowstore import distribution
from cowstore.cli.app import app
from cowstore.cli.output import interactive
from cowstore.distribution.progress import Progress, Silent
from cowstore.errors import InvalidArgument


def _tls_options(command: Any) -> Any:
    """--cert-dir, --tls-verify/--no-tls-verify and --authfile, shared by the four commands."""
    command = click.option(
        "--authfile",
        envvar="REGISTRY_AUTH_FILE",
        default=None,
        help="Credential file [default: ${XDG_RUNTIME_DIR}/containers/auth.json, then ~/.docker/config.json; "
        "env REGISTRY_AUTH_FILE].",
    )(command)
    command = click.option(
        "--tls-verify/--no-tls-verify",
        default=True,
        show_default=True,
        help="Verify the registry's certificate; --no-tls-verify also allows plain HTTP.",
    )(command)
    return click.option(
        "--cert-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="CA (*.crt) and client certificates (*.cert, *.key) [default: /etc/containers/certs.d/HOST:PORT, "
        "/etc/docker/certs.d/HOST:PORT].",
    )(command)


def _settings(cert_dir: str | None, tls_verify: bool, authfile: str | None) -> distribution.Settings:
    return distribution.Settings(cert_dir=cert_dir, tls_verify=tls_verify, authfile=authfile)


class _Lines:
    """Plain progress lines, for logs and pipes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def begin(self, key: str, phase: str, total: int | None) -> None:
        pass

    def advance(self, key: str, phase: str, amount: int) -> None:
        pass

    def status(self, key: str, text: str) -> None:
        with self._lock:
            click.echo(f"{key}: {text}")

    def message(self, text: str) -> None:
        with self._lock:
            click.echo(text)


class _Bars:
    """Rich bars on stderr, one per layer and phase; a layer's state shows on its latest bar."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._tasks: dict[tuple[str, str], Any] = {}
        self._latest: dict[str, str] = {}  # key -> the phase begun last
        self._lock = threading.Lock()

    def begin(self, key: str, phase: str, total: int | None) -> None:
        with self._lock:
            self._tasks[(key, phase)] = self._bar.add_task(f"{key} {phase}", total=total)
            self._latest[key] = phase

    def advance(self, key: str, phase: str, amount: int) -> None:
        task = self._tasks.get((key, phase))
        if task is not None:
            self._bar.advance(task, amount)

    def status(self, key: str, text: str) -> None:
        with self._lock:
            phase = "download" if text == "Download complete" else self._latest.get(key)
            task = self._tasks.get((key, phase)) if phase else None
        if task is None:
            self._bar.console.print(f"{key}: {text}", highlight=False)
        else:
            self._bar.update(task, description=f"{key} {phase}: {text}")

    def message(self, text: str) -> None:
        self._bar.console.print(text, highlight=False)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Progress]:
    if quiet:
        yield Silent()
        return
    if not interactive():
        yield _Lines()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield _Bars(bar)


@click.command("login")
@click.argument("registry")
@click.option("-u", "--username", default=None, help="User name (prompted for on a terminal).")
@click.option("-p", "--password", default=None, help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_tls_options
def login(
    registry: str,
    username: str | None,
    password: str | None,
    password_stdin: bool,
    cert_dir: str | None,
    tls_verify: bool,
    authfile: str | None,
) -> None:
    """Log in to a registry: check the credentials, then keep them for pull and push."""
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if username is None:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    if username is None:
        if not sys.stdin.isatty():
            raise click.UsageError("give --username (and --password-stdin) when standard input is not a terminal")
        username = click.prompt("Username")
    if password is None:
        if not sys.stdin.isatty():
            raise click.UsageError("give --password-stdin when standard input is not a terminal")
        password = click.prompt("Password", hide_input=True)
    if not username:
        raise InvalidArgument("the user name must not be empty")
    credential = distribution.Credential(username, password or "")
    distribution.login(registry, credential, _settings(cert_dir, tls_verify, authfile))
    click.echo("Login Succeeded!")


@click.command("logout")
@click.argument("registry")
@click.option("--authfile", envvar="REGISTRY_AUTH_FILE", default=None, help="Credential file [default: as for login].")
def logout(registry: str, authfile: str | None) -> None:
    """Forget the credentials kept for a registry."""
    distribution.logout(registry, authfile)
    click.echo(f"Removed login credentials for {distribution.login_host(registry)}")


@click.command("pull")
@click.argument("reference")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]", help="Platform to pull [default: this host's].")
@click.option("-a", "--all-tags", is_flag=True, help="Pull every tag of the repository.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pulled reference.")
@_tls_options
def pull(
    reference: str,
    platform: str | None,
    all_tags: bool,
    quiet: bool,
    cert_dir: str | None,
    tls_verify: bool,
    authfile: str | None,
) -> None:
    """Pull an image (or every tag with -a) from a registry."""
    store = app().store
    chosen = distribution.Platform.parse(platform)
    with _progress(quiet) as progress:
        puller = distribution.Puller(store, _settings(cert_dir, tls_verify, authfile), progress)
        pulled = puller.pull(reference, platform=chosen, all_tags=all_tags)
    for item in pulled:
        click.echo(str(item.reference.with_tag(item.reference.tag)) if item.reference.tag else str(item.reference))


@click.command("push")
@click.argument("source")
@click.argument("destination", required=False)
@click.option(
    "--compression",
    type=click.Choice(distribution.COMPRESSIONS),
    default=None,
    help="Compress layers with this [default: keep the blobs as pulled, else gzip].",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the manifest digest.")
@_tls_options
def push(
    source: str,
    destination: str | None,
    compression: str | None,
    quiet: bool,
    cert_dir: str | None,
    tls_verify: bool,
    authfile: str | None,
) -> None:
    """Push an image to a registry (to DESTINATION when given, e.g. HOST:PORT/NAME:TAG)."""
    store = app().store
    with _progress(quiet) as progress:
        pusher = distribution.Pusher(store, _settings(cert_dir, tls_verify, authfile), progress)
        pushed = pusher.push(source, destination, compression=compression)
    if quiet:
        click.echo(pushed.digest)
