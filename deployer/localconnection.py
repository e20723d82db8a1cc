"""The `local` connection: the same contract as SSH, with subprocesses and local files.

inventory/local.yaml runs the whole fleet on this machine without sshd. Commands run without a
shell, each in its own process group (start_new_session), so a timeout or a closed stream stops the
command and everything it started: SIGTERM to the group, SIGKILL `kill_after` seconds later, which is
what GNU `timeout -k` does on an SSH node. Files sync through the same helper script as over SSH.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from deployer.connection import (
    FileLike,
    LineStream,
    Result,
    StreamHandle,
    SyncResult,
    TransportSettings,
    checked_argv,
    env_prefix,
    exit_status_of,
    settle_reader,
)
from deployer.filesync import sync_files
from deployer.models import Host
from deployer.transporterrors import CommandTimeout, ConnectionLost

logger = logging.getLogger(__name__)

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


class LocalConnection:
    """A host that is this machine."""

    python = sys.executable

    def __init__(self, host: Host, settings: TransportSettings) -> None:
        self.host = host
        self.name = host.name
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.channels_per_connection)

    def _environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        env_prefix(env)  # validates names, like the SSH side
        return {**os.environ, **(env or {})}

    async def _spawn(self, words: tuple[str, ...], env: Mapping[str, str] | None,
                     stdin: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*words, stdin=stdin, stdout=PIPE, stderr=PIPE,
                                                    env=self._environment(env), start_new_session=True)

    async def run(self, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        """Run argv here, its process group killed after timeout; a non-zero exit is a Result.

        Raises:
            CommandTimeout: the command outlived timeout (its process group was killed).
        """
        words = checked_argv(argv)
        async with self._slots:
            started = time.monotonic()
            try:
                proc = await self._spawn(words, env, PIPE if input is not None else DEVNULL)
            except OSError as exc:  # what a shell reports: 127 not found, 126 not executable
                status = 127 if isinstance(exc, FileNotFoundError) else 126
                return Result(self.name, words, status, "", f"{words[0]}: {exc.strerror}\n", 0.0)
            out, err = await self._communicate(proc, words, timeout, input)
        status, signal_name = exit_status_of(proc.returncode if proc.returncode is not None else -9)
        return Result(self.name, words, status, out.decode(errors="replace"), err.decode(errors="replace"),
                      time.monotonic() - started, signal_name)

    async def _communicate(self, proc: asyncio.subprocess.Process, words: tuple[str, ...], timeout: float,
                           input: bytes | None) -> tuple[bytes, bytes]:
        try:
            async with asyncio.timeout(timeout):
                return await proc.communicate(input)
        except TimeoutError:
            raise CommandTimeout(self.name, words, timeout, on_node=True) from None
        finally:
            if proc.returncode is None:
                await stop_group(proc, self.settings.kill_after)
            release_pipes(proc)

    def stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> LineStream:
        """The stdout lines of a long-running command; closing stops its process group (and, with
        watches_stdin, closes the pipe that is its stdin)."""
        words = checked_argv(argv)
        return LineStream(lambda: self._open_stream(words, env, PIPE if watches_stdin else DEVNULL))

    async def _open_stream(self, words: tuple[str, ...], env: Mapping[str, str] | None, stdin: int) -> StreamHandle:
        await self._slots.acquire()
        try:
            proc = await self._spawn(words, env, stdin)
        except BaseException:
            self._slots.release()
            raise
        return LocalStream(self.name, proc, self.settings.kill_after, self._slots.release)

    async def sync(self, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        """Place files by sha256 with the same helper script as over SSH."""
        return await sync_files(self, files, self.settings, fresh=fresh)

    async def close(self, wait: bool = True) -> None:
        """Nothing to close for a local host."""


class LocalStream:
    """A running local command whose stdout is read line by line."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, kill_after: float,
                 release: Callable[[], None]) -> None:
        self._name = name
        self._proc = proc
        self._kill_after = kill_after
        self._release: Callable[[], None] | None = release
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    @property
    def exit_status(self) -> int | None:
        """The exit status once the command ended."""
        code = self._proc.returncode
        return None if code is None else exit_status_of(code)[0]

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last 20 stderr lines."""
        return tuple(self._stderr)

    async def _collect_stderr(self) -> None:
        assert self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip("\n"))

    async def send(self, data: bytes) -> None:
        """Write to the command's stdin (opened with watches_stdin).

        Raises:
            ConnectionLost: the command is gone.
        """
        if self._proc.stdin is None:
            raise RuntimeError("this stream was opened without watches_stdin: it has no stdin")
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionLost(self._name, f"the streamed command is gone: {exc}") from None

    async def readline(self) -> str | None:
        """The next stdout line; None when the command ended."""
        assert self._proc.stdout is not None
        raw = await self._proc.stdout.readline()
        if raw:
            return raw.decode(errors="replace").rstrip("\n")
        await exited(self._proc, self._kill_after)
        await settle_reader(self._stderr_task)  # stderr_tail complete before the caller reads it
        await self.close()
        return None

    async def close(self) -> None:
        """Stop the command's process group (SIGTERM, then SIGKILL) and free the slot."""
        if self._release is None:
            return
        release, self._release = self._release, None
        try:
            if self._proc.returncode is None:
                await stop_group(self._proc, self._kill_after)
        finally:
            self._stderr_task.cancel()
            release_pipes(self._proc)
            release()


async def stop_group(proc: asyncio.subprocess.Process, kill_after: float) -> None:
    """SIGTERM the process group of proc, then SIGKILL whatever is left kill_after seconds later."""
    _signal_group(proc.pid, signal.SIGTERM)
    await exited(proc, kill_after)
    _signal_group(proc.pid, signal.SIGKILL)
    await exited(proc, kill_after)


async def exited(proc: asyncio.subprocess.Process, within: float) -> bool:
    """True once proc has exited, False after `within` seconds.

    Polls returncode rather than awaiting wait(), which also waits for every holder of the pipes
    to close them: a grandchild that left the process group would block it forever.
    """
    deadline = time.monotonic() + within
    while proc.returncode is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return proc.returncode is not None


def release_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close our ends of proc's pipes, which a process that left the group may still hold open.

    asyncio.subprocess.Process has no public close(); its transport's close() is the way.
    """
    transport = getattr(proc, "_transport", None)
    if transport is not None and not transport.is_closing():
        transport.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
