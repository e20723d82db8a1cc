"""What can go wrong between flex and a host, one class per thing the caller must tell apart.

    TransportError (deployer.errors)
    ├── Unreachable          connect refused / timed out / network down: the node may be dead
    │   └── ConnectionLost   an open connection died (keepalive, reset): in-flight outcome unknown
    ├── HandshakeDropped     sshd kept dropping handshakes (MaxStartups): the node is up, busy
    ├── ChannelLimit         sshd kept refusing channels (MaxSessions): the node is up, busy
    ├── UntrustedHost        host key not verified; nothing was sent to the host
    │   ├── HostKeyUnknown   no key recorded: names the fingerprint and `flex hosts trust HOST`
    │   └── HostKeyChanged   a different key is recorded: always refused, names the known_hosts line
    ├── AuthFailed           every key refused; never retried
    ├── CommandTimeout       a command outlived its timeout (killed on the node by GNU timeout)
    ├── CommandFailed        Result.check() on a non-zero exit
    └── SyncError            a push failed; every target is its old or its new version, never partial

Messages name the host and, where there is one, the fix. They never carry file contents or secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.errors import TransportError

if TYPE_CHECKING:
    from deployer.connection import Result


class Unreachable(TransportError):
    """The host could not be reached: refused, timed out, no route."""


class ConnectionLost(Unreachable):
    """An established connection died; a command in flight may or may not have run."""


class HandshakeDropped(TransportError):
    """sshd dropped the SSH handshake every time it was retried (MaxStartups); the node is not down."""


class ChannelLimit(TransportError):
    """sshd refused new channels every time it was retried (MaxSessions); the node is not down."""


class UntrustedHost(TransportError):
    """The host key could not be verified against known_hosts; nothing was sent to the host."""

    def __init__(self, host: str, message: str, fix: str, *, fingerprint: str | None,
                 known_hosts: str) -> None:
        super().__init__(host, message, fix)
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts


class HostKeyUnknown(UntrustedHost):
    """No key is recorded for the host."""


class HostKeyChanged(UntrustedHost):
    """A different key is recorded for the host: possible man in the middle. Always refused."""

    def __init__(self, host: str, message: str, fix: str, *, fingerprint: str | None,
                 known_hosts: str, lines: tuple[int, ...]) -> None:
        super().__init__(host, message, fix, fingerprint=fingerprint, known_hosts=known_hosts)
        self.lines = lines


class AuthFailed(TransportError):
    """The host refused every key offered. Never retried: retrying only locks accounts."""


class CommandTimeout(TransportError):
    """A command did not finish within its timeout; it was killed on the node (or the node went silent)."""

    def __init__(self, host: str, argv: tuple[str, ...], timeout: float, *, on_node: bool,
                 stdout: str = "", stderr: str = "") -> None:
        where = "killed on the node" if on_node else "no answer from the node"
        super().__init__(host, f"{argv[0]} timed out after {timeout:g}s ({where})",
                         "raise the command's timeout, or look at what it waits for")
        self.argv = argv
        self.timeout = timeout
        self.on_node = on_node
        self.stdout = stdout
        self.stderr = stderr


class CommandFailed(TransportError):
    """A command exited non-zero where the caller required success (Result.check())."""

    def __init__(self, result: Result) -> None:
        detail = f"signal {result.signal}" if result.signal else f"exit {result.exit_status}"
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
        text = f"{result.argv[0]} failed ({detail})" + (f": {tail[0]}" if tail else "")
        super().__init__(result.host, text)
        self.result = result


class SyncError(TransportError):
    """Files could not be placed; no target was left partially written."""

    def __init__(self, host: str, message: str, fix: str = "", *, path: str | None = None) -> None:
        super().__init__(host, message, fix)
        self.path = path


__all__ = [
    "AuthFailed", "ChannelLimit", "CommandFailed", "CommandTimeout", "ConnectionLost", "HandshakeDropped",
    "HostKeyChanged", "HostKeyUnknown", "SyncError", "TransportError", "Unreachable", "UntrustedHost",
]
