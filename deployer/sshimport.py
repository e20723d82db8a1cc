"""`import asyncssh` without the subprocesses its import starts.

When asyncssh is imported, its post-quantum module asks ctypes.util.find_library for liboqs (as "oqs"
and "liboqs") and its UMAC module for nettle. On Linux, find_library runs `ldconfig -p`, then gcc and
ld, for each name it does not find: seven processes, ~50 ms of wall time and ~40 ms of CPU at the start
of every flex command on a machine without liboqs, which is most of them, and one `ldconfig -p` for
nettle where it is found. Here, during that import only, the names are answered from the dynamic
loader's cache (/etc/ld.so.cache): a name it does not hold is "not found" at once, a soname it holds
and the loader can load is the answer. Where the cache is unreadable or LD_LIBRARY_PATH is set,
find_library runs as usual. Without liboqs asyncssh simply offers no sntrup761 key exchange, exactly
as before.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any


def _import_asyncssh() -> Any:
    import ctypes.util

    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        cache = _loader_cache()
        if cache is None:
            return real(name)
        soname = _cached_soname(name, cache)
        if soname is None and f"lib{name}.so".encode() not in cache:
            return None
        return soname or real(name)

    ctypes.util.find_library = find_library
    try:
        import asyncssh as module
    finally:
        ctypes.util.find_library = real
    return module


def _loader_cache() -> bytes | None:
    """The dynamic loader's cache, or None where find_library must run as usual (LD_LIBRARY_PATH set,
    no readable /etc/ld.so.cache)."""
    if os.environ.get("LD_LIBRARY_PATH"):
        return None
    try:
        with open("/etc/ld.so.cache", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _cached_soname(name: str, cache: bytes) -> str | None:
    """The soname "lib<name>.so.N" the cache lists, when the dynamic loader can load it (the cache may
    hold only another architecture's copy: find_library would then say None too)."""
    import ctypes
    import re

    found = re.search(rb"[\0/](lib" + re.escape(name.encode()) + rb"\.so\.[0-9][0-9.]*)\0", cache)
    if found is None:
        return None
    soname = found.group(1).decode()
    try:
        ctypes.CDLL(soname)
    except OSError:
        return None
    return soname


if TYPE_CHECKING:
    import asyncssh as asyncssh  # the module itself, for the type checker
else:
    asyncssh = _import_asyncssh()
