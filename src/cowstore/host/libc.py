"""The C library, for the system calls Python's os module does not offer.

One handle, loaded once with errno capture, so every caller reads the errno of its
own call (ctypes keeps a private copy per thread).
"""

from __future__ import annotations

import ctypes
import os


def _load() -> ctypes.CDLL:
    """glibc by its soname; searching for it (ctypes.util runs `ldconfig -p`) only where that fails."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


LIBC = _load()
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def last_error(what: str = "") -> OSError:
    """The OSError for the errno the last ctypes call of this thread left."""
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), what) if what else OSError(err, os.strerror(err))


def syscall(number: int, *args: object) -> int:
    """A raw system call with integer arguments widened to C longs; OSError on failure."""
    call = [a if isinstance(a, (bytes, type(None))) else ctypes.c_long(int(a)) for a in args]  # type: ignore[call-overload]
    rc = LIBC.syscall(ctypes.c_long(number), *call)
    if rc < 0:
        raise last_error()
    return rc
