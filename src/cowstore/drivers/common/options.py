"""Parsing of driver option values shared by several drivers."""

from __future__ import annotations

from cowstore.errors import InvalidOption

_TRUE = frozenset({"1", "t", "true", "on", "yes", "y"})
_FALSE = frozenset({"0", "f", "false", "off", "no", "n"})


def parse_bool(driver: str, key: str, value: str) -> bool:
    """A boolean option value, spelled as Go's strconv.ParseBool and Docker's users do."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidOption(f"{driver}: option {key} needs true or false, not {value!r}")
