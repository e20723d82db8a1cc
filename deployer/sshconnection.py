"""One SSH connection per host, opened lazily, shared by every operation, reopened when it dies.

    run(argv) ──> slot (8 per connection) ──> client() ──> channel (retried if refused) ──> Result
                                                 │
                                                 └─ one shared open: handshake cap (pool-wide),
                                                    retried with jitter when sshd drops it

Limits of real sshd shape it (DESIGN.md, "SSH facts"): at most `channels_per_connection` channels in
flight (MaxSessions is 10), a pool-wide cap on handshakes in flight, handshake drops (MaxStartups)
and refused channels retried with tenacity's jittered exponential backoff, never reported as a
dead node. Keepalives detect a hung host (TCP open, no bytes) within interval x (count + 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from deployer.connection import (
    FileLike,
    LineStream,
    Result,
    StreamHandle,
    SyncResult,
    TransportSettings,
    checked_argv,
    command_line,
    env_prefix,
    is_remote_timeout,
    signal_number,
)
from deployer.errors import TransportError
from deployer.filesync import sync_files
from deployer.hostkeys import (
    HostKeyCheck,
    known_hosts_for,
    load_known_hosts,
    recorded_keys,
)
from deployer.models import Host
from deployer.sshfailures import ChannelRefused, connect_failure, lost_error
from deployer.sshimport import asyncssh
from deployer.sshstream import WATCHDOG, SshStream
from deployer.transporterrors import (
    AuthFailed,
    ChannelLimit,
    CommandTimeout,
    ConnectionLost,
    HandshakeDropped,
)

logger = logging.getLogger(__name__)

TunnelProvider = Callable[[], Awaitable[asyncssh.SSHClientConnection]]


@functools.cache
def preferred_ciphers(config: str | None) -> list[str] | None:
    """asyncssh's default ciphers with aes128-gcm first where the CPU has AES instructions: it costs the
    controller ~40 % less CPU per byte than chacha20-poly1305 (measured: 3.5-4.2 against 5.7-7.7 ms per
    MiB sent), and a push is mostly the controller sending files. None (asyncssh's own order) when the
    CPU lacks AES, or when the ssh config names Ciphers itself: an explicit list would override it."""
    try:
        cpu = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags = {word for line in cpu.splitlines() if line.lower().startswith(("flags", "features"))
             for word in line.split(":", 1)[-1].split()}
    if "aes" not in flags:
        return None
    if config is not None:
        try:
            if any(line.strip().lower().startswith("ciphers") for line in Path(config).read_text().splitlines()):
                return None
        except OSError:
            return None
    from asyncssh.encryption import get_default_encryption_algs

    first = "aes128-gcm@openssh.com"
    names = [alg.decode() for alg in get_default_encryption_algs()]
    return [first] + [name for name in names if name != first] if first in names else None


class SshConnection:
    """A host reached over SSH (asyncssh). See the module docstring for the limits it keeps."""

    python = "python3"

    def __init__(self, host: Host, settings: TransportSettings, *, handshakes: asyncio.Semaphore,
                 tunnel: TunnelProvider | None = None) -> None:
        self.host = host
        self.name = host.name
        self.settings = settings
        self.known_hosts = known_hosts_for(host, settings.known_hosts)
        self.handshakes = 0  # completed handshakes: 1 for a connection that never dropped
        self._handshake_slots = handshakes
        self._tunnel = tunnel
        self._slots = asyncio.Semaphore(settings.channels_per_connection)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._opening: asyncio.Future[asyncssh.SSHClientConnection] | None = None
        self._failed_at = 0.0

    @property
    def is_connected(self) -> bool:
        """True while an open connection exists."""
        return self._conn is not None and not self._conn.is_closed()

    # --- opening -------------------------------------------------------------------------------

    async def client(self) -> asyncssh.SSHClientConnection:
        """The live asyncssh connection; opened once (shared by concurrent callers) when needed.

        Raises:
            TransportError: Unreachable, HandshakeDropped, UntrustedHost, AuthFailed.
        """
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._opening is None or self._is_stale(self._opening):
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _is_stale(self, opening: asyncio.Future[asyncssh.SSHClientConnection]) -> bool:
        if not opening.done():
            return False
        if opening.cancelled() or opening.exception() is None:
            return True  # it succeeded, and that connection has closed since
        return time.monotonic() - self._failed_at >= self.settings.reconnect_after

    def _opened(self, opening: asyncio.Future[asyncssh.SSHClientConnection]) -> None:
        if opening.cancelled():
            return
        if opening.exception() is not None:
            self._failed_at = time.monotonic()
            return
        self._conn = opening.result()
        self.handshakes += 1

    async def _open(self) -> asyncssh.SSHClientConnection:
        s = self.settings
        retrying = AsyncRetrying(  # a jump host's drops were retried by its own connection already
            retry=retry_if_exception(lambda exc: isinstance(exc, HandshakeDropped) and exc.host == self.name),
            reraise=True,
            wait=wait_random_exponential(multiplier=s.retry_initial, max=s.retry_max),
            stop=stop_after_attempt(s.handshake_attempts),
        )
        try:
            return await retrying(self._handshake)
        except HandshakeDropped as exc:
            if exc.host != self.name:
                raise
            raise HandshakeDropped(self.name, f"{exc.args[0].split(': ', 1)[-1]} ({s.handshake_attempts} "
                                   "attempts); the host is up but sshd is busy (MaxStartups)",
                                   "retry later, or raise MaxStartups on the host") from None

    async def _handshake(self) -> asyncssh.SSHClientConnection:
        tunnel = await self._tunnel() if self._tunnel is not None else None
        check = HostKeyCheck(self.name, self.known_hosts, accept_new=self.settings.insecure_accept_new)
        async with self._handshake_slots:
            try:
                conn = await asyncssh.connect(self.host.address, tunnel=tunnel or (), client_factory=lambda: check,
                                              known_hosts=load_known_hosts(self.known_hosts), **self.options())
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                raise self._failure(exc, check) from None
        logger.debug("%s: connected to %s:%s", self.name, self.host.address, self.host.port)
        return conn

    def _failure(self, exc: BaseException, check: HostKeyCheck) -> TransportError:
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return check.untrusted(self.host.address, self.host.port)
        if isinstance(exc, asyncssh.KeyExchangeFailed) and recorded_keys(
                self.known_hosts, self.host.address, "", self.host.port):
            return check.untrusted(self.host.address, self.host.port)  # none of the recorded key types offered
        return connect_failure(self.host, exc, self.settings.connect_timeout, via=self._via())

    def _via(self) -> str | None:
        return str(self.host.vars.get("flex_proxy_jump")) if self._tunnel else None

    def options(self) -> dict[str, Any]:
        """asyncssh.connect() options: timeouts, keepalive, ~/.ssh/config, inventory overrides.

        Raises:
            AuthFailed: the inventory names a private key file that cannot be read.
        """
        s = self.settings
        config = [str(s.ssh_config)] if s.ssh_config is not None and s.ssh_config.is_file() else None
        opts: dict[str, Any] = {
            "connect_timeout": s.connect_timeout, "login_timeout": s.login_timeout, "config": config,
            "keepalive_interval": s.keepalive_interval, "keepalive_count_max": s.keepalive_count,
        }
        if "ansible_port" in self.host.vars or self.host.port != 22:
            opts["port"] = self.host.port
        if self.host.user:
            opts["username"] = self.host.user
        if self.host.key_file:
            opts["client_keys"] = [self._key_file(self.host.key_file)]
        ciphers = preferred_ciphers(config[0] if config else None)
        if ciphers:
            opts["encryption_algs"] = ciphers
        return opts

    def _key_file(self, name: str) -> str:
        path = Path(name).expanduser()
        if not path.is_file():
            raise AuthFailed(self.name, f"private key {path} does not exist",
                             "fix ansible_ssh_private_key_file in the inventory")
        return str(path)

    # --- channels ------------------------------------------------------------------------------

    async def _start(self, line: str) -> asyncssh.SSHClientProcess[bytes]:
        s = self.settings
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ChannelRefused), reraise=True,
            wait=wait_random_exponential(multiplier=s.retry_initial, max=s.retry_max),
            stop=stop_after_attempt(s.channel_attempts),
        )
        try:
            return await retrying(self._open_channel, line)
        except ChannelRefused as exc:
            raise ChannelLimit(self.name, f"the host refused a session channel {s.channel_attempts} times "
                               f"({exc})", "lower channels_per_connection below the host's MaxSessions") from None

    async def _open_channel(self, line: str) -> asyncssh.SSHClientProcess[bytes]:
        conn = await self.client()
        try:
            return await conn.create_process(line, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            if isinstance(exc, asyncssh.ChannelOpenError) and not conn.is_closed():
                raise ChannelRefused(exc.reason) from None  # MaxSessions: retried
            # The connection died under the open (keepalive, reset): the host is hung or gone, and
            # reconnecting at once would only add a connect timeout. Nothing was sent.
            raise ConnectionLost(self.name, f"connection lost before the command was sent: {exc}",
                                 "the next probe tells whether the host is back") from None

    async def run(self, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        """Run argv on the host under `timeout -k K T`; a non-zero exit is a Result.

        Raises:
            CommandTimeout: the command outlived timeout (it was killed on the node).
            ConnectionLost: the connection died while the command ran (outcome unknown).
            TransportError: the host could not be reached or trusted (see transporterrors).
        """
        words = checked_argv(argv)
        line = command_line(words, timeout=timeout, kill_after=self.settings.kill_after, env=env)
        async with self._slots:
            started = time.monotonic()  # before the exec request: the node's timer starts later
            process = await self._start(line)
            out, err = await self._communicate(process, words, timeout, input)
            duration = time.monotonic() - started
        return self._result(process, words, out, err, duration, timeout)

    async def _communicate(self, process: asyncssh.SSHClientProcess[bytes], words: tuple[str, ...],
                           timeout: float, input: bytes | None) -> tuple[bytes, bytes]:
        deadline = timeout + self.settings.kill_after + self.settings.timeout_grace
        done = False
        try:
            async with asyncio.timeout(deadline):
                out, err = await process.communicate(input)
            done = True
            return out or b"", err or b""
        except TimeoutError:
            raise CommandTimeout(self.name, words, timeout, on_node=False) from None
        except (asyncssh.Error, OSError) as exc:
            raise lost_error(self.name, words, exc) from None
        finally:
            if not done:
                process.close()

    def _result(self, process: asyncssh.SSHClientProcess[bytes], words: tuple[str, ...], out: bytes,
                err: bytes, duration: float, timeout: float) -> Result:
        if process.exit_status is None and process.exit_signal is None:
            raise lost_error(self.name, words, None)
        signal = process.exit_signal[0] if process.exit_signal else None
        status = 128 + signal_number(signal) if signal else int(process.exit_status or 0)
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if is_remote_timeout(status, duration, timeout):
            raise CommandTimeout(self.name, words, timeout, on_node=True, stdout=stdout, stderr=stderr)
        return Result(self.name, words, status, stdout, stderr, duration, signal)

    # --- streams, files, lifecycle -------------------------------------------------------------

    def stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> LineStream:
        """The stdout lines of a long-running command; it is stopped on the node when closed: by
        the node-side watchdog, or by itself (watches_stdin: it ends when the channel's stdin closes)."""
        words = checked_argv(argv)
        watchdog = [] if watches_stdin else [self.python, "-I", "-S", "-c", WATCHDOG, str(self.settings.kill_after)]
        line = "exec " + shlex.join([*watchdog, *env_prefix(env), *words])
        return LineStream(lambda: self._open_stream(words, line))

    async def _open_stream(self, words: tuple[str, ...], line: str) -> StreamHandle:
        await self._slots.acquire()
        try:
            process = await self._start(line)
        except BaseException:
            self._slots.release()
            raise
        return SshStream(self.name, words, process, self._slots.release, self.settings.kill_after)

    async def sync(self, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        """Place files by sha256 (deployer/filesync.py)."""
        return await sync_files(self, files, self.settings, fresh=fresh)

    async def fetch_host_key(self) -> asyncssh.SSHKey:
        """The key the host presents, without verifying it (for `flex hosts trust`).

        Raises:
            TransportError: the host could not be reached.
        """
        tunnel = await self._tunnel() if self._tunnel is not None else None
        opts = {k: v for k, v in self.options().items() if k in ("port", "config")}
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                key = await asyncssh.get_server_host_key(self.host.address, tunnel=tunnel or (), **opts)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise connect_failure(self.host, exc, self.settings.connect_timeout, via=self._via()) from None
        if key is None:
            raise TransportError(self.name, "the host presented no host key")
        return key

    async def close(self, wait: bool = True) -> None:
        """Close the connection (commands still running on the host are not stopped). wait: until the
        connection is closed (False: the disconnect is sent and the socket closed in the background)."""
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if not wait:
                return
            try:
                await asyncio.wait_for(conn.wait_closed(), self.settings.kill_after)
            except (TimeoutError, asyncssh.Error, OSError):
                pass
