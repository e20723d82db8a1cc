"""The transport: how flex reaches its hosts. One lazily opened, reused connection per host.

    executor / probe / controller ──> Transport (Protocol) ──> Pool
                                                                ├── SshConnection   (asyncssh)  per host
                                                                │     └── tunnel= the jump host's SshConnection
                                                                └── LocalConnection (subprocess) per local host

`Pool` is the only implementation of `Transport`; tests of the layers above may fake the Protocol.
The limits (8 channels per connection, a pool-wide handshake cap, jittered retries of dropped
handshakes and refused channels, keepalives, remote-side timeouts) live in the connections; the pool
owns the connections, the shared handshake semaphore and ProxyJump: every host whose
`flex_proxy_jump` names the same inventory host shares ONE connection to it as its tunnel.

Everything a caller needs is importable from here: Result, SyncResult, FileSpec, Secret, LineStream,
TransportSettings and the errors of deployer.transporterrors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, Self

from deployer.connection import (
    Connection,
    FileLike,
    FileSpec,
    LineStream,
    Result,
    Secret,
    SyncResult,
    TransportSettings,
)
from deployer.errors import TransportError
from deployer.hostkeys import INSECURE_WARNING, trust_key
from deployer.localconnection import LocalConnection
from deployer.models import Host, Inventory
from deployer.sshconnection import SshConnection
from deployer.transporterrors import (
    AuthFailed,
    ChannelLimit,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    HandshakeDropped,
    HostKeyChanged,
    HostKeyUnknown,
    SyncError,
    Unreachable,
    UntrustedHost,
)

logger = logging.getLogger(__name__)

HostRef = str | Host


class Transport(Protocol):
    """What the executor, the probe and the controller need to reach hosts."""

    async def run(self, host: HostRef, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        """Run argv on host, bounded by timeout on the host; a non-zero exit is a Result."""
        ...

    def stream(self, host: HostRef, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> LineStream:
        """The stdout lines of a long-running command on host, until closed (watches_stdin: see
        Connection.stream)."""
        ...

    async def sync(self, host: HostRef, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        """Place files on host by sha256 (temp + fsync + rename; fresh: see Connection.sync)."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class Pool:
    """One connection per host, opened on first use and reused; see the module docstring."""

    def __init__(self, hosts: Iterable[Host] = (), settings: TransportSettings | None = None) -> None:
        self.settings = settings or TransportSettings.from_env()
        self._hosts: dict[str, Host] = {}
        self._connections: dict[str, SshConnection | LocalConnection] = {}
        self._retired: list[SshConnection | LocalConnection] = []
        self._handshakes = asyncio.Semaphore(self.settings.max_handshakes)
        for host in hosts:
            self.add(host)
        if self.settings.insecure_accept_new:
            logger.warning(INSECURE_WARNING)

    @classmethod
    def from_inventory(cls, inventory: Inventory, settings: TransportSettings | None = None) -> Pool:
        """A pool for every host of an inventory."""
        return cls(inventory.hosts, settings)

    def add(self, host: Host) -> None:
        """Know host (by name); a changed definition drops the old connection on next use."""
        old = self._hosts.get(host.name)
        self._hosts[host.name] = host
        if old is not None and old != host:
            stale = self._connections.pop(host.name, None)
            if stale is not None:
                self._retired.append(stale)  # closed by close(); callers may still hold it

    def host(self, ref: HostRef) -> Host:
        """The Host for a name or Host (a Host not seen before is added).

        Raises:
            TransportError: no host has that name.
        """
        if isinstance(ref, Host):
            if self._hosts.get(ref.name) != ref:
                self.add(ref)
            return ref
        try:
            return self._hosts[ref]
        except KeyError:
            raise TransportError(ref, "not in the inventory", "check the host name") from None

    def connection(self, ref: HostRef) -> Connection:
        """The connection object of a host (created now, opened on first use).

        Raises:
            TransportError: unknown host, or a flex_proxy_jump that is unknown, local or a loop.
        """
        host = self.host(ref)
        return self._connection(host, ())

    def _connection(self, host: Host, chain: tuple[str, ...]) -> SshConnection | LocalConnection:
        existing = self._connections.get(host.name)
        if existing is not None:
            return existing
        if host.is_local:
            conn: SshConnection | LocalConnection = LocalConnection(host, self.settings)
        else:
            jump = self._jump_host(host, chain)
            tunnel = self._connection(jump, (*chain, host.name)) if jump else None
            conn = SshConnection(host, self.settings, handshakes=self._handshakes,
                                 tunnel=tunnel.client if isinstance(tunnel, SshConnection) else None)
        self._connections[host.name] = conn
        return conn

    def _jump_host(self, host: Host, chain: tuple[str, ...]) -> Host | None:
        name = host.vars.get("flex_proxy_jump")
        if not name:
            return None
        name = str(name)
        if name == host.name or name in chain:
            raise TransportError(host.name, f"flex_proxy_jump loops: {' -> '.join((*chain, host.name, name))}",
                                 "fix flex_proxy_jump in the inventory")
        jump = self._hosts.get(name)
        if jump is None or jump.is_local:
            why = "is not in the inventory" if jump is None else "is a local host"
            raise TransportError(host.name, f"flex_proxy_jump names {name!r}, which {why}",
                                 "name an SSH host of the inventory as flex_proxy_jump")
        return jump

    async def run(self, host: HostRef, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        """Run argv on host (see SshConnection.run / LocalConnection.run)."""
        return await self.connection(host).run(argv, timeout=timeout, input=input, env=env)

    def stream(self, host: HostRef, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> LineStream:
        """The stdout lines of a long-running command on host; opened on first use."""
        return self.connection(host).stream(argv, env=env, watches_stdin=watches_stdin)

    async def sync(self, host: HostRef, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        """Place files on host by sha256 (fresh: see Connection.sync)."""
        return await self.connection(host).sync(files, fresh=fresh)

    async def put(self, host: HostRef, files: Sequence[FileLike]) -> SyncResult:
        """The same as sync() (the name DESIGN.md uses)."""
        return await self.sync(host, files)

    async def trust(self, ref: HostRef) -> str:
        """Record the host's key in its known_hosts when none is recorded; returns the fingerprint.

        Raises:
            HostKeyChanged: a different key is recorded (nothing is changed).
            TransportError: the host is local, or could not be reached.
        """
        host = self.host(ref)
        conn = self.connection(host)
        if not isinstance(conn, SshConnection):
            raise TransportError(host.name, "is a local host: it has no host key")
        key = await conn.fetch_host_key()
        return trust_key(host.name, conn.known_hosts, host.address, host.port, key)

    def handshakes(self, ref: HostRef) -> int:
        """How many SSH handshakes completed for host (1 when its connection never dropped)."""
        conn = self._connections.get(self.host(ref).name)
        return conn.handshakes if isinstance(conn, SshConnection) else 0

    async def close(self, wait: bool = True) -> None:
        """Close every connection: targets first, then the jump hosts they tunnel through. wait: until
        each is closed (False, for a process about to exit: the disconnects go out in the background,
        and a node's commands watching their channel end when it drops, as they would anyway)."""
        jumps = {str(h.vars.get("flex_proxy_jump")) for h in self._hosts.values() if h.vars.get("flex_proxy_jump")}
        first = [c for name, c in self._connections.items() if name not in jumps]
        last = [c for name, c in self._connections.items() if name in jumps]
        retired, self._retired = self._retired, []
        for group in (first + retired, last):
            await asyncio.gather(*(c.close(wait=wait or bool(jumps)) for c in group), return_exceptions=True)
        self._connections.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = [
    "AuthFailed", "ChannelLimit", "CommandFailed", "CommandTimeout", "Connection", "ConnectionLost",
    "FileLike", "FileSpec", "HandshakeDropped", "HostKeyChanged", "HostKeyUnknown", "HostRef", "LineStream",
    "LocalConnection", "Pool", "Result", "Secret", "SshConnection", "SyncError", "SyncResult", "Transport",
    "TransportError", "TransportSettings", "Unreachable", "UntrustedHost",
]
