"""The hot commands without a CLI framework: create, mount, umount, rm, images, ps, inspect,
and `import` and `load` of a file.

A script that creates and mounts a thousand containers pays the CLI's start-up a
thousand times; with click that start-up dwarfs the work (Docker's client answers in
tens of milliseconds). So the command lines of these commands are parsed here, by a
parser that knows exactly their options, and run through the same bodies as their
click commands (`cowstore.cli.verbs`). Anything else — another command, help, an
option or a spelling this parser does not know, a malformed value — is left to click
(`try_fast` returns None before doing anything), which then behaves as it always did.
So is `import` or `load` on a terminal, where click shows a progress bar, or from stdin.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cowstore.cli import verbs
from cowstore.cli.app import App, split_opts
from cowstore.cli.render import echo
from cowstore.errors import CowstoreError, InvalidOption

if TYPE_CHECKING:
    from cowstore.store import Store

# An option's action: True/False (a flag setting that value), "value" (the last one
# given wins) or "append" (repeatable).
Options = dict[str, tuple[str, Any]]

_GLOBAL: Options = {
    "--root": ("root", "value"),
    "--driver": ("driver", "value"),
    "-s": ("driver", "value"),
    "--storage-opt": ("opts", "append"),
    "--sync": ("sync", True),
    "--no-sync": ("sync", False),
    "--limit": ("limits", "append"),
    "--debug": ("debug", True),
    "--host": ("host", "value"),
    "-H": ("host", "value"),
}
_QUIET: Options = {"-q": ("quiet", True), "--quiet": ("quiet", True)}
_FORMAT: Options = {"--format": ("fmt", "value")}
_SIZE: Options = {"-s": ("size", True), "--size": ("size", True), "-S": ("size", False), "--no-size": ("size", False)}


class _Command:
    """One command's options, how many arguments it takes, and what runs it."""

    def __init__(
        self,
        options: Options,
        arity: str,
        body: Callable[[Store, dict[str, Any]], None],
        choices: dict[str, tuple[str, ...]] | None = None,
        defaults: dict[str, Any] | None = None,
        *,
        batch: bool = False,
        listing: bool = False,
    ) -> None:
        self.options = options
        self.arity = arity  # "none", "one", "some" or "many": see _arity_ok
        self.body = body
        self.choices = choices or {}
        self.defaults = defaults or {}
        self.batch = batch  # reads a file and runs long: never on a terminal (click's progress bar)
        self.listing = listing  # reads the database alone: the driver is opened only if needed


_TABLE_OR_JSON: dict[str, tuple[str, ...]] = {"fmt": ("table", "json")}
_JSON: dict[str, tuple[str, ...]] = {"fmt": ("json",)}

_CREATE = _Command(
    {"--name": ("name", "value"), "--storage-opt": ("opts", "append"), "--mount": ("mount", True)},
    "one",
    lambda store, a: verbs.create(store, a["args"][0], a.get("name"), a["storage_opts"], a.get("mount", False)),
)
_MOUNT = _Command({}, "one", lambda store, a: verbs.mount(store, a["args"][0]))
_UMOUNT = _Command({}, "many", lambda store, a: verbs.umount(store, a["args"]))
_RM = _Command(
    {"-f": ("force", True), "--force": ("force", True)},
    "many",
    lambda store, a: verbs.remove(store, a["args"], a.get("force", False)),
)
_IMAGES = _Command(
    {**_QUIET, **_FORMAT},
    "none",
    lambda store, a: verbs.list_images(store, a.get("quiet", False), a["fmt"]),
    _TABLE_OR_JSON,
    {"fmt": "table"},
    listing=True,
)
_PS = _Command(
    {**_QUIET, "-a": ("all", True), "--all": ("all", True), **_SIZE, **_FORMAT},
    "none",
    lambda store, a: verbs.list_containers(store, a.get("quiet", False), a["size"], a["fmt"]),
    _TABLE_OR_JSON,
    {"fmt": "table", "size": True},
    listing=True,
)
_INSPECT = _Command(
    {"--type": ("kind", "value"), **_FORMAT},
    "many",
    lambda store, a: verbs.inspect(store, a["args"], a.get("kind")),
    {**_JSON, "kind": ("container", "image")},
)
_IMAGE_INSPECT = _Command(_FORMAT, "many", lambda store, a: verbs.inspect_images(store, a["args"]), _JSON)
_CONTAINER_INSPECT = _Command(
    {**_SIZE, **_FORMAT},
    "many",
    lambda store, a: verbs.inspect_containers(store, a["args"], a["size"]),
    _JSON,
    {"size": True},
)

_IMPORT = _Command(
    {"-m": ("message", "value"), "--message": ("message", "value")},
    "some",
    lambda store, a: echo(
        verbs.import_file(store, a["cwd"], a["args"][0], (a["args"][1:] or (None,))[0], a["message"]).id
    ),
    defaults={"message": ""},
    batch=True,
)
_LOAD = _Command(
    {"-i": ("source", "value"), "--input": ("source", "value"), **_QUIET},
    "none",
    lambda store, a: verbs.load(store, a["cwd"], a["source"], a.get("quiet", False)),
    defaults={"source": "-"},
    batch=True,
)

COMMANDS: dict[tuple[str, ...], _Command] = {
    ("create",): _CREATE,
    ("container", "create"): _CREATE,
    ("mount",): _MOUNT,
    ("container", "mount"): _MOUNT,
    ("umount",): _UMOUNT,
    ("container", "umount"): _UMOUNT,
    ("rm",): _RM,
    ("container", "rm"): _RM,
    ("images",): _IMAGES,
    ("image", "ls"): _IMAGES,
    ("ps",): _PS,
    ("container", "ls"): _PS,
    ("inspect",): _INSPECT,
    ("image", "inspect"): _IMAGE_INSPECT,
    ("container", "inspect"): _CONTAINER_INSPECT,
    ("import",): _IMPORT,
    ("image", "import"): _IMPORT,
    ("load",): _LOAD,
    ("image", "load"): _LOAD,
}


def _parse(tokens: list[str], options: Options, stop_at_positional: bool) -> tuple[dict[str, Any], list[str]] | None:
    """Options and positional arguments of `tokens`; None for anything this parser does not know.

    With `stop_at_positional`, parsing ends at the first positional argument (the
    command name after the global options), which is returned with what follows.
    """
    values: dict[str, Any] = {}
    positional: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--" or token == "-":
            return None
        if not token.startswith("-"):
            if stop_at_positional:
                return values, tokens[index - 1 :]
            positional.append(token)
            continue
        name, eq, inline = token.partition("=")
        if name not in options:
            flags = [f"-{c}" for c in token[1:]] if not token.startswith("--") and not eq else []
            if len(flags) < 2 or not all(f in options and options[f][1] in (True, False) for f in flags):
                return None
            for flag in flags:
                values[options[flag][0]] = options[flag][1]
            continue
        dest, action = options[name]
        if action in (True, False):
            if eq:
                return None
            values[dest] = action
            continue
        if not eq:
            if index >= len(tokens):
                return None
            inline = tokens[index]
            index += 1
        if action == "append":
            values.setdefault(dest, []).append(inline)
        else:
            values[dest] = inline
    return (values, []) if stop_at_positional else (values, positional)


def _arity_ok(arity: str, count: int) -> bool:
    """ "none", "one", "some" (one or two: a source and an optional reference) or "many"."""
    if arity == "some":
        return count in (1, 2)
    return count == 0 if arity == "none" else count == 1 if arity == "one" else count > 0


def _command(rest: list[str]) -> tuple[_Command, list[str]] | None:
    for words in (tuple(rest[:2]), tuple(rest[:1])):
        if words in COMMANDS:
            return COMMANDS[words], rest[len(words) :]
    return None


def plan(
    argv: list[str], environ: Mapping[str, str] = os.environ, cwd: str = "", interactive: bool | None = None
) -> tuple[App, _Command, dict[str, Any]] | None:
    """What to run for `argv`, or None to leave the command line to click (nothing done yet).

    `environ` holds the variables the options fall back on, `cwd` the directory relative
    paths are resolved against and `interactive` whether the output goes to a terminal
    (the store service passes its client's; by default, this process's)."""
    parsed = _parse(argv, _GLOBAL, stop_at_positional=True)
    if parsed is None or not parsed[1]:
        return None
    globals_, rest = parsed
    found = _command(rest)
    if found is None:
        return None
    command, tail = found
    if command.batch and (sys.stdout.isatty() and sys.stderr.isatty() if interactive is None else interactive):
        return None
    parsed = _parse(tail, command.options, stop_at_positional=False)
    if parsed is None:
        return None
    values, args = parsed
    if not _arity_ok(command.arity, len(args)):
        return None
    for dest, allowed in command.choices.items():
        if dest in values and values[dest] not in allowed:
            return None
    arguments = {**command.defaults, **values, "args": tuple(args), "cwd": cwd}
    if command.batch and "-" in (*args[:1], arguments.get("source")):
        return None  # from stdin: the service could not read it
    storage_opts = split_opts(arguments.pop("opts", []))
    driver_opts = split_opts(globals_.get("opts", []))
    limit_opts = split_opts(globals_.get("limits", []))
    if storage_opts is None or driver_opts is None or limit_opts is None:
        return None
    arguments["storage_opts"] = storage_opts
    limits = None
    if limit_opts:
        from cowstore.archive.limits import Limits

        try:
            limits = Limits.parse(limit_opts)
        except InvalidOption:
            return None
    root = globals_.get("root") or environ.get("COWSTORE_ROOT") or None
    if root is not None and os.path.isfile(root):
        return None
    state = App(
        pathlib.Path(root) if root is not None else None,
        globals_.get("driver") or environ.get("COWSTORE_DRIVER") or None,
        driver_opts,
        globals_.get("debug", False),
        globals_.get("sync", True),
        limits,
    )
    return state, command, arguments


def run_plan(state: App, command: _Command, arguments: dict[str, Any]) -> int:
    """Run a planned command on `state`'s store (left open); its exit code, errors on stderr."""
    try:
        command.body(state.open(lazy_driver=command.listing), arguments)
    except (CowstoreError, OSError, sqlite3.Error) as exc:
        if state.debug:
            raise
        message = str(exc) if isinstance(exc, CowstoreError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"cowstore: {message}\n")
        return 1
    return 0


def try_fast(argv: list[str]) -> int | None:
    """Run `argv` if it is a hot command this parser knows; its exit code, or None for click."""
    planned = plan(argv)
    if planned is None:
        return None
    state, command, arguments = planned
    try:
        return run_plan(state, command, arguments)
    finally:
        state.close()
