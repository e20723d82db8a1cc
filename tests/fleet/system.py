"""System plumbing for the test fleet: tools, preflight checks, `ip -batch`, mounts, locks.

Everything here runs as root on one Linux machine. Nothing uses a shell: argv lists only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


class FleetError(RuntimeError):
    """The fleet could not be brought up, changed or torn down."""


class FleetUnavailable(FleetError):
    """This machine cannot run a fleet at all (not root, no namespaces, no sshd); tests skip."""


#: Where fleets keep their state: one directory per fleet id. Not under /tmp, because every
#: host mounts its own tmpfs over /tmp and its sshd must still read its config and keys.
BASE_DIR = Path("/run/flex-fleet")

#: A clean PATH for everything started inside the hosts (the test runner's env does not leak in).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Tool -> the Debian package that provides it.
TOOLS: dict[str, str] = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
}

HOW_TO_RUN = (
    "run the fleet tests as root on a Linux machine (or a privileged container), e.g. "
    '`sudo -E env PATH="$PATH" python -m pytest -m fleet`'
)


def find_tool(name: str) -> str | None:
    """Absolute path of ``name`` on PATH or in the sbin directories, None when missing."""
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def tool(name: str) -> str:
    """Absolute path of a required tool; FleetUnavailable when it is missing."""
    path = find_tool(name)
    if path is None:
        raise FleetUnavailable(f"`{name}` not found (Debian package {TOOLS.get(name, name)})")
    return path


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture text output; FleetError with stderr when ``check`` and it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise FleetError(f"`{' '.join(argv)}` did not finish within {timeout:g}s") from exc
    if check and proc.returncode != 0:
        raise FleetError(
            f"`{' '.join(argv)}` failed with exit code {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def ip_batch(commands: Sequence[str], *, force: bool = False) -> subprocess.CompletedProcess[str]:
    """Run many `ip` commands in one process (``ip -batch -``); with ``force``, keep going on errors."""
    argv = [tool("ip")] + (["-force"] if force else []) + ["-batch", "-"]
    return run(argv, input="".join(f"{line}\n" for line in commands), check=not force)


def missing_tools() -> list[str]:
    """The tools from :data:`TOOLS` that this machine lacks."""
    return [name for name in TOOLS if find_tool(name) is None]


def install_missing_tools() -> None:
    """Install the Debian packages of missing tools with apt-get (root only; CI machines are fresh)."""
    missing = missing_tools()
    if not missing or os.geteuid() != 0 or find_tool("apt-get") is None:
        return
    packages = sorted({TOOLS[name] for name in missing})
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"flex fleet: installing {' '.join(packages)} with apt-get", file=sys.stderr)
    run(["apt-get", "update", "-qq"], timeout=600, env=env, check=False)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        timeout=600,
        env=env,
    )


def sshd_version(sshd: str) -> tuple[int, int]:
    """(major, minor) of OpenSSH's sshd, (0, 0) when it cannot be told."""
    proc = run([sshd, "-V"], check=False, timeout=10)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stderr + proc.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@functools.cache
def preflight() -> str | None:
    """Why this machine cannot run a fleet, or None when it can. Installs missing tools as root."""
    if not sys.platform.startswith("linux"):
        return f"the sshd fleet needs Linux network namespaces; {HOW_TO_RUN}"
    if os.geteuid() != 0:
        return f"the sshd fleet needs root (network namespaces, mounts); {HOW_TO_RUN}"
    try:
        install_missing_tools()
    except FleetError as exc:
        return f"could not install the fleet's tools: {exc}"
    if missing := missing_tools():
        return (
            f"missing tools {', '.join(missing)} ({', '.join(sorted({TOOLS[m] for m in missing}))})"
        )
    probe = run(
        [
            tool("unshare"),
            "--net",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "true",
        ],
        check=False,
        timeout=20,
    )
    if probe.returncode != 0:
        return (
            "cannot create namespaces here (a container without CAP_SYS_ADMIN?): "
            f"{probe.stderr.strip()}; {HOW_TO_RUN}"
        )
    name = f"flexprobe{os.getpid()}"
    added = run([tool("ip"), "netns", "add", name], check=False, timeout=20)
    run([tool("ip"), "netns", "delete", name], check=False, timeout=20)
    if added.returncode != 0:
        return f"`ip netns add` does not work here: {added.stderr.strip()}; {HOW_TO_RUN}"
    return None


def require_available() -> None:
    """Raise FleetUnavailable with the reason when :func:`preflight` says no."""
    reason = preflight()
    if reason is not None:
        raise FleetUnavailable(reason)


@contextlib.contextmanager
def global_lock() -> Iterator[None]:
    """An exclusive lock shared by every fleet on this machine (subnet choice, stale cleanup)."""
    BASE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(BASE_DIR / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- mounts (in the controller's mount namespace) -------------------------------------------

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(target: Path, *, source: str, options: str) -> None:
    """Mount a tmpfs at ``target`` with ``options`` (e.g. ``"mode=0755,size=1m"``)."""
    rc = _libc.mount(source.encode(), str(target).encode(), b"tmpfs", 0, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise FleetError(f"mount tmpfs on {target} ({options}) failed: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Lazily unmount ``target`` (MNT_DETACH); FleetError unless it is gone afterwards."""
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err != 22:  # EINVAL: not a mount point (any more)
            raise FleetError(f"umount {target} failed: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix`` in this mount namespace, deepest first."""
    found: list[Path] = []
    root = str(prefix).rstrip("/")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mountinfo(line.split()[4])
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape_mountinfo(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
