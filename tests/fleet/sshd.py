"""OpenSSH pieces of the test fleet: sshd configs, keys, known_hosts, the ssh client argv."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .system import FleetError, tool

#: OpenSSH's own defaults, kept by the ``stock_limits`` fleet (FAULTS.md F15/F16).
STOCK_MAX_STARTUPS = "10:30:100"
STOCK_MAX_SESSIONS = 10
#: What every other fleet gets, so parallel tests never trip over the limits by accident.
RAISED_MAX_STARTUPS = "100:30:200"
RAISED_MAX_SESSIONS = 64

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def render_sshd_config(
    *,
    listen: str,
    host_key: Path,
    authorized_keys: Path,
    env: Mapping[str, str],
    stock_limits: bool,
) -> str:
    """The sshd_config of one host: key-only root login, its own host key, per-host SetEnv."""
    lines = [
        f"ListenAddress {listen}",
        "Port 22",
        f"HostKey {host_key}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        f"AuthorizedKeysFile {authorized_keys}",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PidFile none",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
    ]
    if not stock_limits:
        lines += [
            f"MaxStartups {RAISED_MAX_STARTUPS}",
            f"MaxSessions {RAISED_MAX_SESSIONS}",
        ]
    if env:  # one line: sshd uses only the first SetEnv directive
        lines.append("SetEnv " + " ".join(_setenv_word(n, v) for n, v in sorted(env.items())))
    return "\n".join(lines) + "\n"


def _setenv_word(name: str, value: str) -> str:
    """One ``NAME=value`` word for sshd_config's SetEnv, double-quoted (OpenSSH >= 8.7 rules)."""
    if not _ENV_NAME.match(name):
        raise FleetError(f"host_env: {name!r} is not a valid environment variable name")
    if any(ch in value for ch in "\n\r\0"):
        raise FleetError(f"host_env: the value of {name} contains a newline or NUL")
    escaped = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def start_keygen(path: Path, comment: str) -> subprocess.Popen[bytes]:
    """Start ``ssh-keygen`` for a fresh ed25519 key at ``path`` (no passphrase); returns at once."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    return subprocess.Popen(
        [
            tool("ssh-keygen"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            str(path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_keygen(proc: subprocess.Popen[bytes], path: Path) -> str:
    """Wait for :func:`start_keygen`; the public key line (``"ssh-ed25519 AAAA... comment"``)."""
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise FleetError(f"ssh-keygen for {path} failed: {stderr.decode(errors='replace').strip()}")
    return path.with_name(path.name + ".pub").read_text().strip()


def generate_key(path: Path, comment: str) -> str:
    """Generate one ed25519 key at ``path`` and return its public key line."""
    return finish_keygen(start_keygen(path, comment), path)


def replace_key(path: Path, comment: str) -> str:
    """Put a new ed25519 key at ``path`` atomically (generated beside it, then renamed)."""
    fresh = path.with_name(path.name + ".new")
    public = generate_key(fresh, comment)
    os.replace(fresh.with_name(fresh.name + ".pub"), path.with_name(path.name + ".pub"))
    os.replace(fresh, path)
    return public


def known_hosts_line(address: str, public_key: str, port: int = 22) -> str:
    """A known_hosts line as OpenSSH writes it: plain address on port 22, ``[addr]:port`` else."""
    keytype, blob = public_key.split()[:2]
    name = address if port == 22 else f"[{address}]:{port}"
    return f"{name} {keytype} {blob}"


def ssh_client_argv(
    address: str,
    argv: Sequence[str],
    *,
    identity: Path,
    known_hosts: Path,
    user: str = "root",
    port: int = 22,
    connect_timeout: float = 3.0,
    options: Sequence[str] = (),
) -> list[str]:
    """The system ssh client's argv: no user config, strict host keys, batch mode.

    ``argv`` is the remote command as an argv list; it is joined with :func:`shlex.join`, so
    ``("sh", "-c", "echo hi > /tmp/x")`` runs exactly that. An empty ``argv`` means no command.
    ``options`` (``"Name=value"``) come first, so they override the defaults below.
    """
    command = [tool("ssh"), "-F", "/dev/null", "-T"]
    for option in options:  # first: for ssh the first value of an option wins
        command += ["-o", option]
    command += [
        "-i", str(identity),
        "-p", str(port),
        "-l", user,
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "LogLevel=ERROR",
        # The kex asyncssh usually negotiates; OpenSSH's post-quantum default costs ~2x the CPU.
        "-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org",
    ]  # fmt: skip
    command += ["--", address]
    if argv:
        command.append(shlex.join(argv))
    return command
