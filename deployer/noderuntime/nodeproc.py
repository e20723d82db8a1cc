"""/proc and signal helpers of the flex node runtime (Linux, python3 3.8+, stdlib only).

Identity of a process is (boot_id, pid, start_time) where start_time is field 22 of /proc/<pid>/stat
(clock ticks since boot, kept as a decimal string so it compares exactly): a pid reused by another
process has another start time, and a reboot changes boot_id. Zombies count as dead.
"""

from __future__ import annotations

import errno
import os
import time

try:  # the signal module's functions and numbers without its enums (enum: ~4 ms of import per verb)
    import _signal as signal
except ImportError:  # pragma: no cover - CPython has _signal
    import signal

from nodecommon import suppress

_BOOT_TIME = None
# signal names and numbers of this platform (not every architecture numbers them alike); the
# alphabetically first of two names for one number is Python's own (SIGABRT, SIGCHLD, SIGIO)
_SIGNAL_NAMES = sorted(n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_"))
SIGNALS = {name: int(getattr(signal, name)) for name in _SIGNAL_NAMES}
SIGNAL_NAMES = {}
for _name in _SIGNAL_NAMES:
    SIGNAL_NAMES.setdefault(SIGNALS[_name], _name)


def boot_id() -> str:
    """The kernel's boot id (changes on every reboot); "" when unreadable."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def boot_time() -> float:
    """Wall-clock time of the boot (btime of /proc/stat), cached."""
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = 0.0
        with suppress(OSError, ValueError), open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    _BOOT_TIME = float(line.split()[1])
    return _BOOT_TIME


def read_stat(pid: int):
    """Fields of /proc/<pid>/stat as a dict (pid, comm, state, ppid, pgrp, session, start_ticks); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    head, sep, tail = raw.rpartition(")")
    if not sep:
        return None
    rest = tail.split()
    try:
        return {"pid": pid, "comm": head.partition("(")[2], "state": rest[0], "ppid": int(rest[1]),
                "pgrp": int(rest[2]), "session": int(rest[3]), "start_ticks": rest[19]}
    except (IndexError, ValueError):
        return None


def start_time(pid: int):
    """The process start time (field 22, clock ticks since boot) as a string; None if gone or a zombie."""
    stat = read_stat(pid)
    if stat is None or stat["state"] in ("Z", "X"):
        return None
    return stat["start_ticks"]


def started_at(start_ticks: str) -> float:
    """Wall-clock time a process started, from its start_time string."""
    return boot_time() + int(start_ticks) / float(os.sysconf("SC_CLK_TCK"))


def is_alive(pid, start: str, boot: str = "") -> bool:
    """Whether pid is still the process that started at `start` (and, when given, in this boot)."""
    if not pid or not start:
        return False
    if boot and boot != boot_id():
        return False
    return start_time(int(pid)) == str(start)


def list_pids() -> list:
    """Every pid in /proc."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list:
    """Live (non-zombie) pids whose process group is pgid."""
    if not pgid or pgid <= 1:
        return []
    try:
        os.killpg(pgid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return []
    out = []
    for pid in list_pids():
        stat = read_stat(pid)
        if stat is not None and stat["pgrp"] == pgid and stat["state"] not in ("Z", "X"):
            out.append(pid)
    return out


def group_is_ours(state: dict) -> bool:
    """Whether state's process group still belongs to this allocation (same boot, leader not replaced)."""
    pgid = state.get("pgid")
    if not pgid or state.get("boot_id") != boot_id():
        return False
    leader = read_stat(int(pgid))
    # a live leader with another start time means the pgid now names another process's group
    return leader is None or str(leader["start_ticks"]) == str(state.get("start_time"))


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to process group pgid; False when the group no longer exists."""
    if not pgid or pgid <= 1:
        return False
    try:
        os.killpg(int(pgid), sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def wait_group_empty(pgid: int, timeout: float, tick=None) -> bool:
    """Poll until no live process is left in pgid or timeout passes; tick() runs between polls."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        if tick is not None:
            tick()
        time.sleep(0.02)


def signal_number(value) -> int:
    """A signal from "SIGTERM", "TERM", "15" or 15; ValueError when unknown."""
    if isinstance(value, bool):
        raise TypeError(f"not a signal: {value!r}")
    if isinstance(value, int):
        num = value
    else:
        text = str(value).strip().upper()
        if text.isdigit():
            num = int(text)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            if name not in SIGNALS:
                raise ValueError(f"unknown signal {value!r}")
            num = SIGNALS[name]
    if num <= 0 or num >= 65:
        raise ValueError(f"signal out of range: {value!r}")
    return num


def signal_name(num: int) -> str:
    """SIGTERM for 15 (or the number as text when it has no name)."""
    return SIGNAL_NAMES.get(num, str(num))


def read_environ(pid: int):
    """The environment of pid as a dict; None when unreadable (another user's process, gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def read_environ_var(pid: int, name: str):
    """One variable of pid's environment (None when absent or unreadable), without decoding the rest."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    prefix = name.encode("utf-8") + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode("utf-8", "replace")
    return None


def read_cmdline(pid: int, limit: int = 300) -> str:
    """pid's command line joined with spaces, cut to limit characters."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return ""
    text = " ".join(p.decode("utf-8", "replace") for p in raw.rstrip(b"\0").split(b"\0"))
    return text[:limit]


def close_fds_from(low: int, keep: int = -1) -> None:
    """Close every open descriptor >= low but keep (those /proc/self/fd lists; a range when it cannot
    be read: closerange up to a limit of a million descriptors can take a second where close_range is
    missing)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(low, 65536)
    for fd in fds:
        if fd >= low and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, already closed


def exec_detached(argv: list, cwd: str, env, stdout: int, stderr: int, keep: int = -1) -> None:
    """In a freshly forked child: become the leader of a session of its own in cwd, stdin /dev/null,
    stdout and stderr on the given descriptors, no other descriptor but keep, no pending alarm and
    the default disposition of the signals Python ignores; then exec argv (env None: this process's).
    Never returns; OSError when argv cannot be executed (or cwd entered)."""
    signal.alarm(0)  # an alarm outlives exec
    for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these, and an ignored signal outlives exec
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    os.setsid()
    os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(stdout if stdout >= 0 else null, 1)
    os.dup2(stderr, 2)
    close_fds_from(3, keep=keep)
    if env is None:
        os.execvp(argv[0], argv)
    os.execvpe(argv[0], argv, env)


def read_to_end(fd: int) -> bytes:
    """Everything a pipe's read end gives until EOF; the descriptor is closed."""
    data = b""
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(fd)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
