"""Host keys: strict known_hosts checking, telling an unknown key from a changed one, and trusting.

asyncssh raises the same HostKeyNotVerifiable whether no key is recorded for a host or another one
is. `HostKeyCheck` (the SSHClient of every connection) records the key the server presented, and
`untrusted()` then reads known_hosts itself, line by line, to say which case it is: unknown (the
fingerprint and `flex hosts trust HOST`) or changed (the known_hosts lines that disagree). Both
happen during key exchange, before authentication, so nothing is ever sent to an untrusted host.

`trust_key()` records a key only when none is recorded for the host; a different recorded key is
refused. The insecure opt-in (`insecure_accept_new`, FLEX_INSECURE_HOST_KEYS=1) behaves like
OpenSSH's StrictHostKeyChecking=accept-new: unknown keys are recorded with a loud warning, and a
CHANGED key is still refused, always.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deployer.models import Host
from deployer.sshimport import asyncssh
from deployer.transporterrors import HostKeyChanged, HostKeyUnknown, UntrustedHost

logger = logging.getLogger(__name__)

INSECURE_WARNING = (
    "INSECURE host key checking is on (insecure_accept_new / FLEX_INSECURE_HOST_KEYS=1): keys of "
    "unknown hosts are recorded WITHOUT verification; a changed key is still refused"
)


@dataclass(frozen=True)
class RecordedKey:
    """A host key recorded in known_hosts, with its 1-based line number."""

    line: int
    key: asyncssh.SSHKey

    @property
    def fingerprint(self) -> str:
        """SHA256:... of the recorded key."""
        return fingerprint(self.key)


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The key's fingerprint as OpenSSH prints it: SHA256:base64."""
    return str(key.get_fingerprint("sha256"))


def known_hosts_for(host: Host, default: Path) -> Path:
    """The known_hosts file for host: its flex_known_hosts variable, else the default."""
    chosen = host.vars.get("flex_known_hosts")
    return Path(str(chosen)).expanduser() if chosen else default


def host_entry(address: str, port: int | None) -> str:
    """The known_hosts name of a host: `addr` on port 22, `[addr]:port` elsewhere."""
    return address if port in (None, 22) else f"[{address}]:{port}"


_PARSED: dict[Path, tuple[tuple[int, int, int], asyncssh.SSHKnownHosts]] = {}


def load_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """The parsed known_hosts file; a missing file trusts nothing.

    Parsed once per version of the file (its inode, size and mtime): every connection asks for it,
    and parsing all N keys for each of N hosts made a fleet's handshakes cost O(N^2) (30 hosts:
    930 keys parsed, 1,000 hosts: a million)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return asyncssh.import_known_hosts("")
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    parsed = asyncssh.import_known_hosts(text)
    _PARSED[path] = (version, parsed)
    return parsed


def recorded_keys(path: Path, host: str, addr: str, port: int | None) -> list[RecordedKey]:
    """Every plain key known_hosts records for host (not @cert-authority or @revoked lines)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    port = None if port == 22 else port
    found: list[RecordedKey] = []
    for number, text in enumerate(lines, 1):
        entry = text.strip()
        if not entry or entry.startswith(("#", "@")):
            continue
        try:
            keys = asyncssh.import_known_hosts(entry).match(host, addr, port)[0]
        except (ValueError, asyncssh.KeyImportError):
            continue  # a line asyncssh cannot read cannot vouch for anything
        found.extend(RecordedKey(number, key) for key in _unique(keys))
    return found


def _unique(keys: Sequence[asyncssh.SSHKey]) -> list[asyncssh.SSHKey]:
    out: list[asyncssh.SSHKey] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out


def record_key(path: Path, address: str, port: int | None, key: asyncssh.SSHKey) -> None:
    """Append `entry keytype base64` to known_hosts (creating it and its directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    public = key.export_public_key("openssh").decode().split()
    line = f"{host_entry(address, port)} {public[0]} {public[1]}\n"
    with open(path, "a+", encoding="ascii") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(handle.tell() - 1)
            if handle.read(1) != "\n":
                handle.write("\n")
        handle.write(line)


def trust_key(name: str, path: Path, address: str, port: int, key: asyncssh.SSHKey) -> str:
    """Record key for the host unless one is recorded already; returns its fingerprint.

    Raises:
        HostKeyChanged: a different key is recorded for the host.
    """
    known = recorded_keys(path, address, _ip_or_empty(address), port)
    if any(recorded.fingerprint == fingerprint(key) for recorded in known):
        logger.info("%s: host key %s already trusted in %s", name, fingerprint(key), path)
        return fingerprint(key)
    if known:
        raise changed_error(name, path, host_entry(address, port), key, known)
    record_key(path, address, port, key)
    logger.warning("%s: recorded host key %s in %s", name, fingerprint(key), path)
    return fingerprint(key)


def _ip_or_empty(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return ""
    return address


def unknown_error(name: str, path: Path, entry: str, key: asyncssh.SSHKey | None) -> HostKeyUnknown:
    """The error for a host with no recorded key."""
    shown = f"{key.get_algorithm()} {fingerprint(key)}" if key else "(not shown)"
    return HostKeyUnknown(
        name, f"unknown host key {shown} for {entry}: not in {path}; nothing was sent",
        f"check the fingerprint with the host's owner, then run `flex hosts trust {name}`",
        fingerprint=fingerprint(key) if key else None, known_hosts=str(path),
    )


def changed_error(name: str, path: Path, entry: str, key: asyncssh.SSHKey | None,
                  known: list[RecordedKey]) -> HostKeyChanged:
    """The error for a host presenting another key than the recorded one."""
    lines = tuple(sorted({recorded.line for recorded in known}))
    where = ", ".join(f"{path}:{line}" for line in lines)
    shown = fingerprint(key) if key else "a key of another type"
    return HostKeyChanged(
        name, f"HOST KEY CHANGED for {entry}: it presents {shown}, but {where} records "
        f"{', '.join(sorted({r.fingerprint for r in known}))}; refused before anything was sent "
        "(possible man in the middle)",
        f"verify the new key with the host's owner; if the change is expected, run "
        f"`ssh-keygen -f {path} -R '{entry}'` then `flex hosts trust {name}`",
        fingerprint=fingerprint(key) if key else None, known_hosts=str(path), lines=lines,
    )


class HostKeyCheck(asyncssh.SSHClient):
    """The SSHClient of one connection attempt: remembers the key the server presented.

    asyncssh asks it only about keys NOT in known_hosts. It refuses them, except in accept-new mode
    where a key for a host with no recorded key at all is recorded and accepted.
    """

    def __init__(self, name: str, path: Path, *, accept_new: bool = False) -> None:
        self.name = name
        self.path = path
        self.accept_new = accept_new
        self.presented: asyncssh.SSHKey | None = None
        self.lookup: tuple[str, str, int | None] | None = None
        self.lost: Exception | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented, self.lookup = key, (host, addr, port)
        if not self.accept_new or recorded_keys(self.path, host, addr, port):
            return False
        record_key(self.path, host, port, key)
        logger.warning("%s: INSECURE: accepted and recorded the unverified host key %s of %s in %s",
                       self.name, fingerprint(key), host_entry(host, port), self.path)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        if exc is not None:
            logger.info("%s: connection lost: %s", self.name, exc)

    def untrusted(self, address: str, port: int) -> UntrustedHost:
        """HostKeyUnknown or HostKeyChanged for the key this attempt was shown."""
        host, addr, lookup_port = self.lookup or (address, _ip_or_empty(address), port)
        known = recorded_keys(self.path, host, addr, lookup_port)
        entry = host_entry(host, lookup_port)
        if known:
            return changed_error(self.name, self.path, entry, self.presented, known)
        return unknown_error(self.name, self.path, entry, self.presented)

