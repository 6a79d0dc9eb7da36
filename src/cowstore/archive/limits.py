"""Bounds on what one layer tar may hold, so a hostile layer cannot exhaust memory, disk or time.

Kept apart from the tar reader: every command that opens a store needs the limits, and
few need the reader.
"""

from __future__ import annotations

from typing import NamedTuple

from cowstore.errors import InvalidOption


class Limits(NamedTuple):
    """Bounds that keep a hostile layer from exhausting memory, disk or time."""

    max_entries: int = 2_000_000
    max_bytes: int = 256 * 1024**3  # uncompressed payload of one layer
    max_name: int = 255  # one path component
    max_path: int = 4096
    max_extended_header: int = 1024 * 1024  # one PAX or GNU long-name payload
    max_xattr_bytes: int = 64 * 1024  # all xattrs of one entry
    min_free_disk: int = 512 * 1024**2  # staging a layer stops before the disk is this full

    @classmethod
    def parse(cls, items: dict[str, str]) -> Limits:
        """Limits from `--limit key=value` pairs (sizes like 10G; keys with dashes or underscores)."""
        from cowstore.units import parse_size

        values = {}
        for key, value in items.items():
            name = key.replace("-", "_")
            if name not in cls._fields:
                known = ", ".join(k.replace("_", "-") for k in cls._fields)
                raise InvalidOption(f"unknown limit {key!r} (known: {known})")
            values[name] = parse_size(value)
        return cls(**values)
