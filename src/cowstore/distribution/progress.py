"""What a pull or push reports while it runs; the CLI draws it (bars on a terminal, lines otherwise).

Calls come from the transfer threads as well as the main one: implementations lock.
`key` is a layer's short id (12 hex digits of its blob digest), `phase` one of
download, extract, compress, upload.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def begin(self, key: str, phase: str, total: int | None) -> None:
        """A phase of one layer starts (`total` bytes when known)."""

    def advance(self, key: str, phase: str, amount: int) -> None:
        """`amount` more bytes of that phase are done (negative after a resumed upload rewinds)."""

    def status(self, key: str, text: str) -> None:
        """A layer reached a state worth a line: "Already exists", "Pull complete", "Pushed"."""

    def message(self, text: str) -> None:
        """A line about the whole operation ("Digest: sha256:...")."""


class Silent:
    """Reports nothing (library use, `-q`)."""

    def begin(self, key: str, phase: str, total: int | None) -> None:
        pass

    def advance(self, key: str, phase: str, amount: int) -> None:
        pass

    def status(self, key: str, text: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
