"""The `cowstore` command line: image and container groups plus Docker's shortcuts.

When a store service (`cowstore system service`) listens for the store, the hot
commands are sent to it by `cowstore.cli.client`, which runs first and imports almost
nothing; otherwise, and for every other command, the command runs in this process.
Two ways in, one behaviour. The hot commands a script runs by the thousand (create,
mount, umount, rm, images, ps, inspect) are parsed by `cowstore.cli.fast` with no CLI
framework, so a call costs the interpreter's start and the work itself; everything
else, and any form of those the fast parser does not know (help, unusual options),
goes to the click group (`cowstore.cli.group.main`), whose commands are registered
here and imported only when they run.
"""

from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False  # typing itself would cost the thin client's path its import
if TYPE_CHECKING:
    from typing import NoReturn

# Command name -> "module:attribute". Each command's module is imported only when that
# command runs (or help lists it), so `cowstore images` never loads the bench or rich.
_COMMANDS = {
    "image": "cowstore.cli.images:image_group",
    "container": "cowstore.cli.containers:container_group",
    "images": "cowstore.cli.images:image_ls",
    "ps": "cowstore.cli.containers:container_ls",
    "import": "cowstore.cli.images:image_import",
    "save": "cowstore.cli.images:image_save",
    "load": "cowstore.cli.images:image_load",
    "rmi": "cowstore.cli.images:image_rm",
    "tag": "cowstore.cli.images:image_tag",
    "history": "cowstore.cli.images:image_history",
    "create": "cowstore.cli.containers:container_create",
    "mount": "cowstore.cli.containers:container_mount",
    "umount": "cowstore.cli.containers:container_umount",
    "diff": "cowstore.cli.containers:container_diff",
    "commit": "cowstore.cli.containers:container_commit",
    "export": "cowstore.cli.containers:container_export",
    "rm": "cowstore.cli.containers:container_rm",
    "cp": "cowstore.cli.containers:container_cp",
    "inspect": "cowstore.cli.system:inspect",
    "info": "cowstore.cli.system:info",
    "demo": "cowstore.cli.system:demo",
    "system": "cowstore.cli.system:system_group",
    "check": "cowstore.cli.maintenance:check",
    "bench": "cowstore.app.bench.command:bench_command",
    "btrfs": "cowstore.cli.maintenance:btrfs_group",
    "login": "cowstore.cli.registry:login",
    "logout": "cowstore.cli.registry:logout",
    "pull": "cowstore.cli.registry:pull",
    "push": "cowstore.cli.registry:push",
    "devicemapper": "cowstore.cli.maintenance:devicemapper_group",
    "docker-root": "cowstore.cli.dockerroot:docker_root_group",
    "snapshotter": "cowstore.cli.snapshotter:snapshotter_group",
}


class _RanHere(SystemExit):
    """A hot command ran in this process and closed everything it opened."""


def run(argv: list[str] | None = None) -> None:
    """The `cowstore` command: the store service, else the fast path when it knows the
    command line, else click. Ends with SystemExit."""
    from cowstore.cli.client import try_service

    args = sys.argv[1:] if argv is None else argv
    code = try_service(args)
    if code is not None:
        sys.exit(code)
    from cowstore.cli.fast import try_fast

    code = try_fast(args)
    if code is not None:
        raise _RanHere(code)
    main = importlib.import_module("cowstore.cli.group").main
    main(args, prog_name="cowstore")


def console() -> None:
    """The `cowstore` console script."""
    try:
        run()
    except SystemExit as done:
        leave(done)


def leave(done: SystemExit) -> NoReturn:
    """Exit as `done` says; after a hot command run in this process, without the
    interpreter's teardown.

    Freeing every module and object at exit costs a command 10-15 ms, as much as its
    work; a hot command has closed its store and files by now, so only the standard
    streams are left to flush. A reader that went away (`| head`) is not an error here.
    Other commands exit as Python does.
    """
    if not isinstance(done, _RanHere):
        raise done
    code = done.code if isinstance(done.code, int) else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    except OSError as exc:  # output that could not be written (a full disk): say so
        os.write(2, f"cowstore: {exc}\n".encode())
        code = code or 1
    os._exit(code)


def __getattr__(name: str) -> object:  # typing's Any would cost the client path its import
    """`main`, the click group, is loaded on first use (it imports click)."""
    if name == "main":
        return importlib.import_module("cowstore.cli.group").main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["console", "leave", "main", "run"]
