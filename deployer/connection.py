"""The seam between flex and one machine: what a connection can do, and what comes back.

A `Connection` runs argv lists (never shell strings), streams the lines of a long-running command
and syncs files by checksum. Two implementations share this contract: `SshConnection` (asyncssh,
deployer/sshconnection.py) and `LocalConnection` (subprocesses, deployer/localconnection.py).
A non-zero exit is a `Result`, never an exception; what goes wrong on the way is a typed error
(deployer/transporterrors.py).

The remote command line is built here and only here, with shlex quoting, and every short command
is wrapped in GNU `timeout` on the node: closing a channel does not stop a remote command.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    import asyncio

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TIMED_OUT_STATUSES = (124, 137)  # GNU timeout: TERM sent (124) / KILL sent after -k (128 + 9)


@dataclass(frozen=True)
class Result:
    """What one finished command left behind. A non-zero exit is data, not an exception."""

    host: str
    argv: tuple[str, ...]
    exit_status: int  # 128 + N when killed by signal N, like a shell reports it
    stdout: str
    stderr: str
    duration: float
    signal: str | None = None  # "TERM", "KILL", ... when the command died of a signal

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_status == 0 and self.signal is None

    def check(self) -> Result:
        """This result when ok.

        Raises:
            CommandFailed: the command exited non-zero or died of a signal.
        """
        if not self.ok:
            from deployer.transporterrors import CommandFailed

            raise CommandFailed(self)
        return self


@dataclass(frozen=True)
class Secret:
    """Bytes that must never appear in argv, environment, logs, events or exceptions."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class FileSpec:
    """One file to place on a node: where, with which mode, from a local file or from bytes."""

    remote_path: str
    mode: int = 0o644
    source: Path | None = None
    content: bytes | None = field(default=None, repr=False)
    secret: bool = False

    @classmethod
    def from_path(cls, local: str | Path, remote_path: str, mode: int | None = None) -> FileSpec:
        """A local file; its own permission bits unless mode is given."""
        local = Path(local)
        bits = mode if mode is not None else local.stat().st_mode & 0o7777
        return cls(remote_path=remote_path, mode=bits, source=local)

    @classmethod
    def from_bytes(cls, data: bytes, remote_path: str, mode: int = 0o644) -> FileSpec:
        """Literal content."""
        return cls(remote_path=remote_path, mode=mode, content=data)

    @classmethod
    def from_secret(cls, data: bytes | Secret, remote_path: str) -> FileSpec:
        """Secret content: written 0600, never logged."""
        raw = data.value if isinstance(data, Secret) else data
        return cls(remote_path=remote_path, mode=0o600, content=raw, secret=True)

    def read(self) -> bytes:
        """The content to place."""
        if self.content is not None:
            return self.content
        assert self.source is not None, "a FileSpec needs a source or content"
        return self.source.read_bytes()


FileSource = str | Path | bytes | Secret
FileLike = FileSpec | tuple[FileSource, str, int]


def as_filespec(item: FileLike) -> FileSpec:
    """A FileSpec from a FileSpec or a (local path | bytes | Secret, remote path, mode) tuple."""
    if isinstance(item, FileSpec):
        return item
    source, remote, mode = item
    if isinstance(source, Secret):
        return FileSpec.from_secret(source, remote)
    if isinstance(source, bytes):
        return FileSpec.from_bytes(source, remote, mode)
    return FileSpec.from_path(source, remote, mode)


@dataclass(frozen=True)
class SyncResult:
    """What a sync changed on one host: paths written, paths already right, bytes sent."""

    host: str
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    bytes_sent: int
    duration: float


@dataclass(frozen=True)
class TransportSettings:
    """Every limit and timeout of the transport. Tests shrink them; defaults suit real sshd."""

    connect_timeout: float = 10.0  # TCP connect + SSH handshake + authentication
    login_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count: int = 3  # a hung host is dropped after interval x (count + 1) without an answer
    channels_per_connection: int = 8  # OpenSSH MaxSessions is 10
    max_handshakes: int = 16  # global; OpenSSH MaxStartups starts dropping at 10 per sshd
    handshake_attempts: int = 6
    channel_attempts: int = 8
    retry_initial: float = 0.1  # tenacity wait_random_exponential(multiplier, max)
    retry_max: float = 3.0
    reconnect_after: float = 1.0  # a failed connect is reported as is to callers within this window
    kill_after: float = 2.0  # `timeout -k`: SIGKILL this long after SIGTERM
    timeout_grace: float = 3.0  # the local deadline is timeout + kill_after + grace
    sync_timeout: float = 60.0  # per sync command, plus 1 s per MiB sent
    sync_batch_bytes: int = 32 << 20
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    ssh_config: Path | None = field(default_factory=lambda: Path("~/.ssh/config").expanduser())
    insecure_accept_new: bool = False  # trust-on-first-use; changed keys are still refused

    @classmethod
    def from_env(cls, **overrides: object) -> TransportSettings:
        """Defaults plus FLEX_INSECURE_HOST_KEYS=1 from the environment, then overrides."""
        values: dict[str, object] = {}
        if os.environ.get("FLEX_INSECURE_HOST_KEYS", "") in ("1", "true", "yes"):
            values["insecure_accept_new"] = True
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


class StreamHandle(Protocol):
    """An opened long-running command, as a connection implementation provides it."""

    @property
    def exit_status(self) -> int | None: ...

    @property
    def stderr_tail(self) -> tuple[str, ...]: ...

    async def readline(self) -> str | None:
        """The next line without its newline; None once the command ended."""
        ...

    async def send(self, data: bytes) -> None:
        """Write to the command's stdin (a stream opened with watches_stdin only)."""
        ...

    async def close(self) -> None:
        """Stop the command (its whole process group) and free the channel."""
        ...


async def settle_reader(task: asyncio.Future[None], within: float = 1.0) -> None:
    """Let a stream's stderr reader take in what the ended command wrote (its exit and its last stderr
    lines arrive separately); give up after within seconds."""
    import asyncio

    try:
        await asyncio.wait_for(asyncio.shield(task), within)
    except (TimeoutError, asyncio.CancelledError, OSError):
        pass


class LineStream:
    """The lines of a long-running command: opened on first use, stopped by close().

        async with pool.stream("n1", ["python3", "flexnode.py", "probe", "--stream"]) as lines:
            async for line in lines:
                ...
    """

    def __init__(self, opener: Callable[[], Awaitable[StreamHandle]]) -> None:
        self._opener = opener
        self._handle: StreamHandle | None = None
        self._closed = False

    async def open(self) -> LineStream:
        """Start the command (no-op when already started)."""
        if self._handle is None:
            if self._closed:
                raise RuntimeError("stream already closed")
            self._handle = await self._opener()
        return self

    @property
    def exit_status(self) -> int | None:
        """The command's exit status once it ended, else None."""
        return self._handle.exit_status if self._handle else None

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the command wrote to stderr."""
        return self._handle.stderr_tail if self._handle else ()

    async def send(self, data: bytes) -> None:
        """Write to the command's stdin: a stream opened with watches_stdin=True only (flexnode's
        probe stream answers a newline with a document at once).

        Raises:
            ConnectionLost: the channel is gone.
        """
        await self.open()
        assert self._handle is not None
        await self._handle.send(data)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        await self.open()
        assert self._handle is not None
        line = await self._handle.readline()
        if line is None:
            raise StopAsyncIteration
        return line

    async def close(self) -> None:
        """Stop the command; idempotent."""
        self._closed = True
        if self._handle is not None:
            await self._handle.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@runtime_checkable
class Connection(Protocol):
    """One host, reached over SSH or locally. Every method may raise a TransportError."""

    name: str
    python: str  # the interpreter that runs flex's helper one-liners on the node

    async def run(self, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        """Run argv, bounded by timeout on the node; a non-zero exit is a Result."""
        ...

    def stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> LineStream:
        """The stdout lines of a long-running command, kept open until closed. watches_stdin: the
        command ends by itself when its stdin closes, so it gets the channel as stdin and runs
        without the node-side watchdog (one interpreter fewer per stream)."""
        ...

    async def sync(self, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        """Place files by sha256: only changed ones travel; temp file + fsync + rename. fresh: the
        caller knows the targets are absent (a new directory): all travel, no checksum command first."""
        ...

    async def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        ...


def checked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """argv as a tuple of strings.

    Raises:
        ValueError: argv is empty, a plain string, or holds a non-string or a NUL byte.
    """
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError("argv must be a non-empty list of strings, not a shell string")
    for word in argv:
        if not isinstance(word, str) or "\0" in word:
            raise ValueError(f"argv words must be strings without NUL bytes: {word!r}")
    return tuple(argv)


def env_prefix(env: Mapping[str, str] | None) -> list[str]:
    """`env -- NAME=VALUE ...` words to put before a command (empty when there is no env).

    Raises:
        ValueError: a name is not a valid environment variable name.
    """
    if not env:
        return []
    for name, value in env.items():
        if not ENV_NAME.match(name) or "\0" in str(value):
            raise ValueError(f"invalid environment variable {name!r}")
    return ["env", "--", *(f"{name}={value}" for name, value in env.items())]


def seconds(value: float) -> str:
    """A duration as GNU timeout reads it: 5, 0.25."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def command_line(argv: Sequence[str], *, timeout: float | None, kill_after: float = 2.0,
                 env: Mapping[str, str] | None = None) -> str:
    """The one shell line sent to the node: `exec timeout -k K T env -- A=B argv...`, shlex-quoted.

    `exec` replaces the login shell, so a signal that kills the command reaches sshd as a signal.
    """
    words = list(checked_argv(argv))
    words = env_prefix(env) + words
    if timeout is not None:
        words = ["timeout", "-k", seconds(kill_after), seconds(timeout), *words]
    return "exec " + shlex.join(words)


def exit_status_of(returncode: int) -> tuple[int, str | None]:
    """(exit status, signal name) from a subprocess-style return code (negative: killed)."""
    if returncode >= 0:
        return returncode, None
    return 128 - returncode, signal_name(-returncode)


def signal_name(number: int) -> str:
    """"TERM" for 15; the number as text when unknown."""
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


def signal_number(name: str) -> int:
    """15 for "TERM"; 0 when unknown."""
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def is_remote_timeout(status: int, duration: float, timeout: float) -> bool:
    """True when GNU timeout (not the command itself) ended the command.

    duration is measured from before the command was sent, so it is never shorter than the
    node's own measure; 10 ms of slack absorbs clock granularity.
    """
    return status in TIMED_OUT_STATUSES and duration >= timeout - 0.01


__all__ = [
    "Connection", "FileLike", "FileSpec", "LineStream", "Result", "Secret", "StreamHandle",
    "SyncResult", "TransportSettings", "as_filespec", "checked_argv", "command_line", "env_prefix",
]
