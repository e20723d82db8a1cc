"""An in-process SSH server that really runs commands, with a front door that can misbehave.

Built like asyncssh's own test server: asyncssh listens on 127.0.0.1 port 0 and runs every exec
request with `/bin/sh -c COMMAND` (as sshd does), stdin/stdout/stderr piped, exit status returned.
Only exec requests are served (no shell, no pty). A TCP front door in front of it mimics what real
sshd and real networks do to a client:

    client --TCP--> FrontDoor (drop / delay / hang / freeze / cut) --TCP--> asyncssh server

- `max_sessions`: refuse session channels beyond N per connection, like OpenSSH MaxSessions.
- `max_startups=(start, rate, full)`: drop new connections while `start`+ are unauthenticated,
  like OpenSSH MaxStartups (`drop_first=N` drops the first N connections outright).
- `handshake_delay`: wait before the server answers a new connection.
- `hang`: accept TCP and never send a byte. `freeze()`: stop forwarding on every connection, as if
  sshd got SIGSTOP (TCP stays open). `cut_after(n)`: reset a connection after n client bytes.
- `host_key`: the key the server presents (the fixture's known_hosts always records the main key).

Counters (`connections`, `auth_starts`, `exec_requests`, `max_concurrent_sessions`) let tests
assert what reached the server, e.g. that no command was executed after a host key was refused.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import random
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.constants import OPEN_ADMINISTRATIVELY_PROHIBITED
from asyncssh.process import SSHServerProcess
from asyncssh.sftp import MIN_SFTP_VERSION

if TYPE_CHECKING:
    from deployer.models import Host

CHUNK = 65536


@dataclass
class ServerOptions:
    """How the test server behaves; every default is a well-behaved sshd."""

    max_sessions: int | None = None
    max_startups: tuple[int, int, int] | None = None
    drop_first: int = 0
    handshake_delay: float = 0.0
    hang: bool = False
    allow_forwarding: bool = True
    sftp: bool = False
    file_size_limit: int | None = None  # RLIMIT_FSIZE of executed commands (a "full disk")
    seed: int = 0


@dataclass(eq=False)
class _Link:
    """One client connection through the front door."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    authenticated: bool = False
    cut_after: int | None = None
    sent: int = 0


@dataclass
class ServerStats:
    """What reached the server."""

    connections: int = 0
    dropped: int = 0
    auth_starts: int = 0
    exec_requests: list[str] = field(default_factory=list)
    refused_sessions: int = 0
    max_concurrent_sessions: int = 0
    direct_tcpip: int = 0


class _Session(asyncssh.SSHServer):
    """One server-side SSH connection: authentication, session limits, forwarding."""

    def __init__(self, server: SshTestServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._open = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        self._server.stats.auth_starts += 1
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.export_public_key() in self._server.authorized

    def auth_completed(self) -> None:
        assert self._conn is not None
        peer = self._conn.get_extra_info("peername")
        self._server.front.mark_authenticated(peer[1] if peer else 0)

    def session_requested(self) -> Any:
        limit = self._server.options.max_sessions
        if limit is not None and self._open >= limit:
            self._server.stats.refused_sessions += 1
            raise asyncssh.ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "open failed")
        assert self._conn is not None
        chan = self._conn.create_server_channel(encoding=None)
        self._open += 1
        stats = self._server.stats
        stats.max_concurrent_sessions = max(stats.max_concurrent_sessions, self._open)
        asyncio.ensure_future(self._release_when_closed(chan))
        sftp: Any = asyncssh.SFTPServer if self._server.options.sftp else None
        return chan, SSHServerProcess(self._server.execute, sftp, MIN_SFTP_VERSION, False)

    async def _release_when_closed(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        await chan.wait_closed()
        self._open -= 1

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        self._server.stats.direct_tcpip += 1
        return self._server.options.allow_forwarding


class FrontDoor:
    """The TCP listener clients see; forwards to the SSH server unless told to misbehave."""

    def __init__(self, options: ServerOptions, stats: ServerStats) -> None:
        self.options = options
        self.stats = stats
        self.upstream_port = 0
        self._links: dict[int, _Link] = {}  # keyed by the local port of the upstream socket
        self._all: set[_Link] = set()
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._random = random.Random(options.seed)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.cut_next: int | None = None

    async def start(self) -> int:
        """Listen on 127.0.0.1 port 0; returns the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def mark_authenticated(self, upstream_local_port: int) -> None:
        """Called by the SSH server when a connection finished authentication (MaxStartups)."""
        link = self._links.get(upstream_local_port)
        if link is not None:
            link.authenticated = True

    def freeze(self) -> None:
        """Stop forwarding bytes on every connection, like a SIGSTOP'd sshd."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Resume forwarding."""
        self._thawed.set()

    def cut_all(self) -> None:
        """Reset every connection at once (a network cut)."""
        for link in list(self._all):
            _abort(link.client)
            if link.upstream is not None:
                _abort(link.upstream)

    def _should_drop(self) -> bool:
        if self.stats.connections <= self.options.drop_first:
            return True
        if self.options.max_startups is None:
            return False
        start, rate, full = self.options.max_startups
        pending = sum(1 for link in self._all if not link.authenticated)
        if pending < start:
            return False
        if pending >= full:
            return True
        chance = rate + (100 - rate) * (pending - start) / max(1, full - start)
        return self._random.random() * 100 < chance

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.stats.connections += 1
        if self._should_drop():
            self.stats.dropped += 1
            writer.close()  # what sshd does past MaxStartups: close(2) before the banner
            return
        link = _Link(writer, cut_after=self.cut_next)
        self._all.add(link)
        try:
            await self._serve(link, reader)
        except (ConnectionError, OSError):
            pass
        finally:
            self._all.discard(link)
            _abort(writer)
            if link.upstream is not None:
                _abort(link.upstream)

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        if self.options.hang:
            await reader.read()  # never answer; return when the client gives up
            return
        if self.options.handshake_delay:
            await asyncio.sleep(self.options.handshake_delay)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        link.upstream = up_writer
        port = int(up_writer.get_extra_info("sockname")[1])
        self._links[port] = link
        try:
            await asyncio.gather(self._pump(reader, up_writer, link), self._pump(up_reader, link.client, None))
        finally:
            self._links.pop(port, None)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link | None) -> None:
        while data := await reader.read(CHUNK):
            await self._thawed.wait()
            if link is not None and link.cut_after is not None:
                link.sent += len(data)
                if link.sent > link.cut_after:
                    raise ConnectionResetError("cut by the test")
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def close(self) -> None:
        """Stop listening, reset every connection and wait for the relays to end."""
        if self._server is not None:
            self._server.close()
        self.thaw()
        self.cut_all()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


class SshTestServer:
    """A running in-process SSH server; see the module docstring."""

    def __init__(self, host_key: asyncssh.SSHKey, authorized: list[bytes], options: ServerOptions) -> None:
        self.host_key = host_key
        self.authorized = set(authorized)
        self.options = options
        self.stats = ServerStats()
        self.front = FrontDoor(options, self.stats)
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._children: set[asyncio.subprocess.Process] = set()
        self.known_hosts: Path | None = None  # set by the fixture: records the MAIN host key
        self.client_key_file: Path | None = None  # set by the fixture: an authorized private key

    def as_host(self, name: str = "node", *, key_file: Path | None = None, **host_vars: Any) -> Host:
        """An inventory Host that reaches this server with the authorized key and its known_hosts."""
        from deployer.models import Host, frozen_mapping

        merged: dict[str, Any] = {"flex_known_hosts": str(self.known_hosts)} if self.known_hosts else {}
        merged.update(host_vars)
        key = key_file or self.client_key_file
        return Host(name=name, address="127.0.0.1", port=self.port, user=getpass.getuser(),
                    key_file=str(key) if key else None, vars=frozen_mapping(merged))

    async def start(self) -> SshTestServer:
        """Start the SSH server and its front door."""
        self._acceptor = await asyncssh.listen(
            "127.0.0.1", 0, server_factory=lambda: _Session(self), server_host_keys=[self.host_key],
            encoding=None, keepalive_interval=0, login_timeout=30, config=None,
        )
        self.front.upstream_port = self._acceptor.get_port()
        self.port = await self.front.start()
        return self

    async def close(self) -> None:
        """Stop everything and kill commands still running."""
        await self.front.close()
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        children = list(self._children)
        for child in children:
            _kill_group(child.pid)
        if children:
            await asyncio.wait([asyncio.ensure_future(child.wait()) for child in children], timeout=3)

    def freeze(self) -> None:
        """Hang every connection (TCP open, no bytes), like SIGSTOP on sshd."""
        self.front.freeze()

    def thaw(self) -> None:
        """Undo freeze()."""
        self.front.thaw()

    def cut_after(self, nbytes: int | None) -> None:
        """Reset each NEW connection once the client has sent nbytes through it (None: never)."""
        self.front.cut_next = nbytes

    async def execute(self, process: SSHServerProcess[bytes]) -> None:
        """Serve one exec request: `/bin/sh -c COMMAND` with stdio piped, like sshd."""
        command = process.command
        if command is None:
            process.stderr.write(b"this test server serves exec requests only\n")
            process.exit(1)
            return
        self.stats.exec_requests.append(command)
        child = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=self._limits if self.options.file_size_limit is not None else None,
        )
        self._children.add(child)
        try:
            await self._relay(process, child)
        finally:
            self._children.discard(child)

    async def _relay(self, process: SSHServerProcess[bytes], child: asyncio.subprocess.Process) -> None:
        assert child.stdin and child.stdout and child.stderr
        feeding = asyncio.ensure_future(_feed(process.stdin, child.stdin))
        try:
            await asyncio.gather(_drain(child, 1, process.stdout), _drain(child, 2, process.stderr))
            code = await child.wait()
        finally:
            feeding.cancel()
        if code < 0:
            process.exit_with_signal(signal.Signals(-code).name.removeprefix("SIG"))
        else:
            process.exit(code)

    def _limits(self) -> None:
        limit = self.options.file_size_limit
        assert limit is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


async def _feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    """Channel stdin -> command stdin; EOF (or a lost channel) closes the command's stdin."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    except (asyncssh.Error, ConnectionError, OSError):
        pass
    finally:
        sink.close()


async def _drain(child: asyncio.subprocess.Process, fd: int, sink: asyncssh.SSHWriter[bytes]) -> None:
    """Command output -> channel. Once the channel is gone the pipe is closed, as sshd does, so a
    command that keeps writing gets SIGPIPE while a silent one keeps running."""
    source = child.stdout if fd == 1 else child.stderr
    assert source is not None
    while data := await source.read(CHUNK):
        try:
            sink.write(data)
            await sink.drain()
        except (asyncssh.Error, ConnectionError, OSError):
            pipe = child._transport.get_pipe_transport(fd)  # type: ignore[attr-defined]
            if pipe is not None:
                pipe.close()
            return


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
