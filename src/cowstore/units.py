"""Sizes as Docker parses and prints them, so option values and `info` lines transfer."""

import re

from cowstore.errors import InvalidOption

_RAM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Parse `10G`, `64k`, `512MiB` or `1048576` the way Docker's RAMInBytes does (1024-based)."""
    match = _RAM.match(text)
    if not match:
        raise InvalidOption(f"invalid size {text!r}: use a number with an optional k/m/g/t/p suffix, e.g. 10G")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** _POWERS[unit])


def human_size(size: float) -> str:
    """Format bytes like Docker's HumanSize: decimal units, 4 significant digits, no space."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    index = 0
    while size >= 1000 and index < len(units) - 1:
        size /= 1000.0
        index += 1
    return f"{size:.4g}{units[index]}"
