"""Helpers shared by the transport tests: fast settings, a local host, waiting for a pid to go."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from deployer.connection import TransportSettings
from deployer.models import Host


def fast_settings(tmp_path: Path, **overrides: object) -> TransportSettings:
    """Small timeouts and backoffs so fault tests take a second, and no ~/.ssh of the developer."""
    values: dict[str, object] = {
        "connect_timeout": 3.0, "login_timeout": 3.0, "keepalive_interval": 0.2, "keepalive_count": 2,
        "retry_initial": 0.02, "retry_max": 0.2, "reconnect_after": 0.0, "kill_after": 0.5,
        "timeout_grace": 1.0, "known_hosts": tmp_path / "default_known_hosts", "ssh_config": None,
    }
    values.update(overrides)
    return TransportSettings(**values)  # type: ignore[arg-type]


def local_host(name: str = "local") -> Host:
    """A `connection: local` host."""
    return Host(name=name, address="localhost", connection="local")


def is_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):  # ESRCH: it went between open and read
        return False
    return state != "Z"


async def wait_gone(pid: int, within: float = 3.0) -> bool:
    """True once pid is gone, False if it still runs after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        await asyncio.sleep(0.02)
    return not is_alive(pid)


async def read_pid(path: Path, within: float = 3.0) -> int:
    """The pid a command wrote to path."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no pid written to {path}")


def can_mount_tmpfs() -> bool:
    """True when this process may mount a tmpfs (root)."""
    return os.geteuid() == 0
