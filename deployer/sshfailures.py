"""asyncssh and socket failures -> flex's typed transport errors (one table, one function).

The distinction that matters to the controller: a dead or unreachable node (Unreachable) is not a
busy sshd (HandshakeDropped: retried), and neither is a wrong key (AuthFailed: never retried).
Host key failures are decided by deployer.hostkeys, which needs the key the server presented.
"""

from __future__ import annotations

import asyncio
import errno

from deployer.errors import TransportError
from deployer.models import Host
from deployer.sshimport import asyncssh
from deployer.transporterrors import (
    AuthFailed,
    ConnectionLost,
    HandshakeDropped,
    Unreachable,
)

# Closed or reset during the handshake: what sshd does past MaxStartups, or while it restarts.
DROPPED = (asyncssh.ConnectionLost, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
           asyncio.IncompleteReadError)


class ChannelRefused(Exception):
    """Internal: sshd refused a session channel (MaxSessions). Retried, then ChannelLimit."""


def connect_failure(host: Host, exc: BaseException, connect_timeout: float, *,
                    via: str | None = None) -> TransportError:
    """The typed error for a failed connection attempt to host (host keys excepted)."""
    where = f"{host.address}:{host.port}" + (f" via jump host {via}" if via else "")
    if isinstance(exc, asyncssh.PermissionDenied):
        user = f"{host.user}@" if host.user else ""
        return AuthFailed(host.name, f"{user}{where} refused every key offered ({exc.reason})",
                          "check ansible_user and ansible_ssh_private_key_file, or the keys in ssh-agent")
    if isinstance(exc, DROPPED):
        return HandshakeDropped(host.name, f"{where} dropped the SSH handshake ({_reason(exc)})")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Unreachable(host.name, f"no SSH answer from {where} within {connect_timeout:g}s",
                           "check that the host is up and that sshd answers on that port")
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return Unreachable(host.name, f"{where} refused the connection (is sshd running?)")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return Unreachable(host.name, f"jump host {via} could not reach {host.address}:{host.port} ({exc.reason})")
    if isinstance(exc, asyncssh.DisconnectError):
        return Unreachable(host.name, f"{where} ended the connection: {exc.reason}")
    return Unreachable(host.name, f"cannot reach {where}: {_reason(exc)}")


def lost_error(host: str, words: tuple[str, ...], exc: BaseException | None) -> ConnectionLost:
    """The error for a connection that died while a command ran: its outcome is unknown."""
    reason = f": {exc}" if exc else ""
    return ConnectionLost(host, f"connection lost while {words[0]} ran{reason}; its outcome is unknown",
                          "the next probe tells whether the host is back")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
