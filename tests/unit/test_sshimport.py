"""Every flex command imports asyncssh; that import must not start a compiler to look for liboqs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

COUNT_SPAWNS = """
import subprocess, sys
spawned = []
real = subprocess.Popen.__init__
def counted(self, args, *rest, **kwargs):
    spawned.append(" ".join(args) if isinstance(args, (list, tuple)) else str(args))
    real(self, args, *rest, **kwargs)
subprocess.Popen.__init__ = counted
import deployer.sshconnection, asyncssh, ctypes.util
assert ctypes.util.find_library.__module__ == "ctypes.util", "find_library left patched"
print("\\n".join(spawned))
"""


def test_importing_the_ssh_transport_runs_no_liboqs_search() -> None:
    done = subprocess.run([sys.executable, "-c", COUNT_SPAWNS], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    spawned = [line for line in done.stdout.splitlines() if line]
    assert not [cmd for cmd in spawned if "oqs" in cmd], spawned  # was: ldconfig, gcc and ld for 2 names
    assert spawned == [], spawned  # nor `ldconfig -p` for nettle: the loader's cache answers


def test_asyncssh_gets_the_same_answers_as_find_library() -> None:
    """UMAC (nettle) is offered exactly where ctypes would have found it."""
    import ctypes.util

    from deployer.sshimport import asyncssh

    umac = b"umac-64@openssh.com" in asyncssh.mac.get_mac_algs()
    assert umac == (ctypes.util.find_library("nettle") is not None)


def test_a_library_in_the_loader_cache_is_named_without_a_subprocess(monkeypatch) -> None:
    from deployer import sshimport

    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    cache = sshimport._loader_cache()
    if cache is not None:
        assert (sshimport._cached_soname("c", cache) or "").startswith("libc.so.")  # in every glibc cache
        assert sshimport._cached_soname("flex-no-such-library", cache) is None
    assert sshimport._cached_soname("c", b"\0libc.so.99\0") is None  # listed, but the loader cannot load it
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/oqs/lib")
    assert sshimport._loader_cache() is None  # find_library runs as usual
