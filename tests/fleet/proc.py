"""Process helpers for the test fleet: identity by (pid, start time), and /proc scans.

A pid alone is not an identity (pids are reused), so every process the fleet signals is
remembered as a :class:`ProcId` — the pid plus its start time in clock ticks since boot
(field 22 of ``/proc/PID/stat``) — and is only signalled while both still match.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The few fields of ``/proc/PID/stat`` the fleet needs."""

    pid: int
    comm: str
    state: str
    ppid: int
    start: int


def read_stat(pid: int) -> Stat | None:
    """Parse ``/proc/PID/stat``; None when the process is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: it runs from the first "(" to the last ")".
    open_paren, close_paren = raw.index("("), raw.rindex(")")
    rest = raw[close_paren + 2 :].split()
    return Stat(
        pid=pid,
        comm=raw[open_paren + 1 : close_paren],
        state=rest[0],
        ppid=int(rest[1]),
        start=int(rest[19]),
    )


@dataclass(frozen=True)
class ProcId:
    """A process identity that survives pid reuse: pid plus start time."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcId | None:
        """The identity of the running process ``pid``, or None when there is none."""
        stat = read_stat(pid)
        return None if stat is None else cls(pid, stat.start)

    @classmethod
    def parse(cls, text: str) -> ProcId | None:
        """Read back what :meth:`dump` wrote; None on garbage."""
        try:
            pid, start = (int(part) for part in text.split())
        except ValueError:
            return None
        return cls(pid, start)

    def dump(self) -> str:
        """A one-line text form (``"pid start"``) for owner files."""
        return f"{self.pid} {self.start}\n"

    def stat(self) -> Stat | None:
        """The current stat of this very process, or None once it is gone or reused."""
        stat = read_stat(self.pid)
        if stat is None or stat.start != self.start:
            return None
        return stat

    def alive(self) -> bool:
        """True while this process exists and is not a zombie."""
        stat = self.stat()
        return stat is not None and stat.state not in ("Z", "X")

    def stopped(self) -> bool:
        """True while this process is stopped (SIGSTOP)."""
        stat = self.stat()
        return stat is not None and stat.state in ("T", "t")

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if this is still the same process; True when it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def all_pids() -> list[int]:
    """Every pid visible in /proc."""
    return [int(name) for name in os.listdir(_PROC) if name.isdigit()]


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, from one scan of /proc (no CONFIG_PROC_CHILDREN needed)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None:
            children.setdefault(stat.ppid, []).append(pid)
    return children


def namespace_id(pid: int, kind: str) -> str | None:
    """The namespace link of ``pid`` (e.g. ``"pid:[4026532]"``), None when gone."""
    try:
        return os.readlink(_PROC / str(pid) / "ns" / kind)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids_in_namespaces(kind: str, namespaces: set[str]) -> list[int]:
    """Pids (as seen from here) of every process in one of ``namespaces`` of ``kind``."""
    if not namespaces:
        return []
    return sorted(pid for pid in all_pids() if namespace_id(pid, kind) in namespaces)


def netns_file_id(path: Path) -> str | None:
    """The ``net:[inode]`` form of a named network namespace file (/run/netns/NAME)."""
    try:
        return f"net:[{path.stat().st_ino}]"
    except FileNotFoundError:
        return None


def listening_sockets(pid: int, port: int) -> set[int]:
    """Socket inodes listening on TCP ``port`` in the network namespace of ``pid``."""
    wanted = f":{port:04X}"
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1].endswith(wanted) and fields[3] == "0A":
                inodes.add(int(fields[9]))
    return inodes


def signal_all(ids: list[ProcId], sig: int = signal.SIGKILL) -> None:
    """Signal every process in ``ids`` that is still the same process (no waiting)."""
    for proc in ids:
        proc.signal(sig)
