"""containerd's filter language, for List (`ctr snapshots ls` and the garbage collector's Walk).

A filter is selectors joined by commas, all of which must match; several filters match
when any does. A selector is a field path, optionally an operator and a value:

    kind==active,labels."containerd.io/gc.root"==check-walk
    parent!=""          name~=^sha256:          labels.l          (present)

Fields are `[A-Za-z0-9_]+` or double-quoted; values run to the next comma or space, or
are quoted with `"`, and for `~=` (a regular expression, matched anywhere) also with `/`
or `|`. The scanner follows containerd's (filters/scanner.go) character for character,
so what containerd accepts parses the same here and anything else is INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cowstore.errors import InvalidArgument

Adaptor = Callable[[list[str]], tuple[str, bool]]  # field path -> (value, present)

_QUOTES = '/|"'
_OPERATORS = ("==", "!=", "~=")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_NUMERIC = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}


class FilterSyntaxError(InvalidArgument):
    """A filter does not parse."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "field", "value", "quoted", "sep", "op", "eof"
    text: str
    pos: int


def _is_field(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def _tokens(text: str) -> list[_Token]:
    """containerd's scanner: after an operator, the next bare word is a value."""
    found: list[_Token] = []
    pos, value_mode = 0, False
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            found.append(_Token("eof", "", pos))
            return found
        ch, start = text[pos], pos
        if ch in _QUOTES:
            end = text.find(ch, pos + 1)
            while end != -1 and _escaped(text, end):
                end = text.find(ch, end + 1)
            if end == -1 or "\n" in text[pos:end]:
                raise FilterSyntaxError(f"filters: parse error at {pos} of {text!r}: quoted literal not terminated")
            pos = end + 1
            found.append(_Token("quoted", text[start:pos], start))
        elif ch in ",.":
            value_mode = False
            pos += 1
            found.append(_Token("sep", ch, start))
        elif ch in "=!~":
            while pos < len(text) and text[pos] in "=!~":
                pos += 1
            value_mode = True
            found.append(_Token("op", text[start:pos], start))
        elif value_mode:
            while pos < len(text) and text[pos] != "," and not text[pos].isspace():
                pos += 1
            value_mode = False
            found.append(_Token("value", text[start:pos], start))
        elif _is_field(ch):
            while pos < len(text) and _is_field(text[pos]):
                pos += 1
            found.append(_Token("field", text[start:pos], start))
        else:
            raise FilterSyntaxError(f"filters: parse error at {pos} of {text!r}: unexpected input {ch!r}")


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - 1 - backslashes >= 0 and text[index - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _unquote(quoted: str) -> str:
    """Go string syntax inside the delimiters (which may also be `/` or `|`)."""
    quote, body, out, i = quoted[0], quoted[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == quote:
            out.append(quote)
            i += 2
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in _NUMERIC or nxt.isdigit():
            base, width = _NUMERIC.get(nxt, (8, 3))
            start = i + 1 if base == 8 else i + 2
            digits = body[start : start + width]
            try:
                out.append(chr(int(digits, base)) if len(digits) == width else "")
            except ValueError:
                raise FilterSyntaxError(f"filters: illegal numeric escape in {quoted!r}") from None
            i = start + width
        else:
            raise FilterSyntaxError(f"filters: illegal escape sequence in {quoted!r}")
    return "".join(out)


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str | None  # None: the field must be present
    value: str = ""

    def matches(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(list(self.fieldpath))
        if self.operator is None:
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        try:
            return re.search(self.value, value) is not None
        except re.error:
            return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def _error(self, token: _Token, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"filters: parse error at {token.pos} of {self.text!r}: {message}")

    def _next(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def selectors(self) -> list[Selector]:
        found = [self.selector()]
        while True:
            token = self._next()
            if token.kind == "eof":
                return found
            if token.kind != "sep" or token.text != ",":
                raise self._error(token, f"unexpected input: {token.text}")
            found.append(self.selector())

    def selector(self) -> Selector:
        path = [self.field()]
        while self._peek().kind == "sep" and self._peek().text == ".":
            self._next()
            path.append(self.field())
        if self._peek().kind in ("sep", "eof"):
            return Selector(tuple(path), None)
        token = self._next()
        if token.kind != "op":
            raise self._error(token, 'expected an operator ("=="|"!="|"~=")')
        if token.text not in _OPERATORS:
            raise self._error(token, f"unsupported operator {token.text!r}")
        value = self._next()
        if value.kind in ("value", "field"):
            return Selector(tuple(path), token.text, value.text)
        if value.kind == "quoted" and (token.text == "~=" or value.text[0] == '"'):
            return Selector(tuple(path), token.text, _unquote(value.text))
        raise self._error(value, "expected value or quoted")

    def field(self) -> str:
        token = self._next()
        if token.kind == "field":
            return token.text
        if token.kind == "quoted" and token.text[0] == '"':
            return _unquote(token.text)
        raise self._error(token, "expected field or quoted")


def parse(filters: Sequence[str]) -> list[list[Selector]]:
    """The filters as alternatives of selector conjunctions; none (or an empty one) matches all."""
    parsed = [_Parser(text).selectors() for text in filters if text]
    return [] if "" in filters else parsed


def matches(alternatives: list[list[Selector]], adaptor: Adaptor) -> bool:
    if not alternatives:
        return True
    return any(all(s.matches(adaptor) for s in selectors) for selectors in alternatives)
