"""`import asyncssh` without the subprocesses its import starts.

When asyncssh is imported, its post-quantum module asks ctypes.util.find_library for liboqs (as "oqs"
and "liboqs"). On Linux, find_library runs `ldconfig -p`, then gcc and ld, for each name it does not
find: seven processes, ~50 ms of wall time and ~40 ms of CPU at the start of every flex command on a
machine without liboqs, which is most of them. Here a name the dynamic loader's cache
(/etc/ld.so.cache) does not hold is answered "not found" at once, during that import only; where the
cache is unreadable or LD_LIBRARY_PATH is set, find_library runs as usual. Without liboqs asyncssh
simply offers no sntrup761 key exchange, exactly as before.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any


def _import_asyncssh() -> Any:
    import ctypes.util

    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        if name in ("oqs", "liboqs") and not _loader_may_find(name):
            return None
        return real(name)

    ctypes.util.find_library = find_library
    try:
        import asyncssh as module
    finally:
        ctypes.util.find_library = real
    return module


def _loader_may_find(name: str) -> bool:
    if os.environ.get("LD_LIBRARY_PATH"):
        return True
    try:
        with open("/etc/ld.so.cache", "rb") as handle:
            cache = handle.read()
    except OSError:
        return True
    return f"lib{name}.so".encode() in cache


if TYPE_CHECKING:
    import asyncssh as asyncssh  # the module itself, for the type checker
else:
    asyncssh = _import_asyncssh()
