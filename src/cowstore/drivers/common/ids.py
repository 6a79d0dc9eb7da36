"""Validation of driver-level layer ids, which become directory names."""

import re

from cowstore.errors import InvalidOption

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_id(id: str) -> str:
    """Refuse ids that could name something outside the driver's own directories."""
    if not _ID.fullmatch(id) or ".." in id:
        raise InvalidOption(f"invalid layer id {id!r}: use letters, digits, '_', '.', '-'")
    return id
