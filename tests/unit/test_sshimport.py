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
    assert len(spawned) <= 1, spawned  # at most ldconfig -p for nettle, which the loader's cache holds


def test_a_library_in_the_loader_cache_or_on_ld_library_path_is_looked_up(monkeypatch) -> None:
    from deployer import sshimport

    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    cache = Path("/etc/ld.so.cache")
    if cache.exists():
        assert sshimport._loader_may_find("c")  # libc.so is in every glibc cache
        assert not sshimport._loader_may_find("flex-no-such-library")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/oqs/lib")
    assert sshimport._loader_may_find("flex-no-such-library")
