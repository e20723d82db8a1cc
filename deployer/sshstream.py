"""Streamed commands over SSH: the node-side watchdog and the line reader of one open channel.

A streamed command (the long-lived probe) has no timeout, so closing it must stop it on the node:
closing the channel alone would not. The command runs under WATCHDOG, a python3 one-liner that
starts it in its own process group and kills that group (SIGTERM, then SIGKILL) when its stdin
reaches EOF, which is what sshd delivers when the channel closes or the connection drops.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from deployer.connection import settle_reader, signal_number
from deployer.sshfailures import lost_error
from deployer.sshimport import asyncssh

# Runs a streamed command in its own process group and stops that group when the channel goes
# away (stdin EOF): closing a channel alone would leave the command running on the node.
WATCHDOG = r"""
import os,signal,subprocess,sys,threading,time
try:p=subprocess.Popen(sys.argv[2:],stdin=subprocess.DEVNULL,start_new_session=True)
except OSError as e:
    sys.stderr.write("%s: %s\n"%(sys.argv[2],e.strerror));sys.exit(127)
def stop():
    try:
        while os.read(0,4096):pass
    except OSError:pass
    for s in (signal.SIGTERM,signal.SIGKILL):
        try:os.killpg(p.pid,s)
        except OSError:pass
        time.sleep(float(sys.argv[1]))
threading.Thread(target=stop,daemon=True).start()
r=p.wait()
sys.exit(128-r if r<0 else r)
"""


class SshStream:
    """An open streamed command on one channel; holds one channel slot until closed."""

    def __init__(self, name: str, words: tuple[str, ...], process: asyncssh.SSHClientProcess[bytes],
                 release: Callable[[], None], kill_after: float) -> None:
        self._name = name
        self._words = words
        self._kill_after = kill_after
        self._process = process
        self._release: Callable[[], None] | None = release
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    @property
    def exit_status(self) -> int | None:
        """The exit status once the command ended."""
        signal = self._process.exit_signal[0] if self._process.exit_signal else None
        return 128 + signal_number(signal) if signal else self._process.exit_status

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last 20 stderr lines."""
        return tuple(self._stderr)

    async def _collect_stderr(self) -> None:
        try:
            while line := await self._process.stderr.readline():
                self._stderr.append(line.decode(errors="replace").rstrip("\n"))
        except (asyncssh.Error, OSError):
            pass

    async def readline(self) -> str | None:
        """The next stdout line; None when the command ended.

        Raises:
            ConnectionLost: the connection died under the stream.
        """
        try:
            raw = await self._process.stdout.readline()
        except (asyncssh.Error, OSError) as exc:
            raise lost_error(self._name, self._words, exc) from None
        if raw:
            return raw.decode(errors="replace").rstrip("\n")
        await self._finish()
        return None

    async def send(self, data: bytes) -> None:
        """Write to the command's stdin (the channel)."""
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain()
        except (asyncssh.Error, OSError) as exc:
            raise lost_error(self._name, self._words, exc) from None

    async def _finish(self) -> None:
        try:
            await asyncio.wait_for(self._process.wait_closed(), self._kill_after + 1)
        except (TimeoutError, asyncssh.Error, OSError):
            pass
        await settle_reader(self._stderr_task)  # stderr_tail complete before the caller reads it
        lost = self._process.exit_status is None and self._process.exit_signal is None
        await self.close()
        if lost:
            raise lost_error(self._name, self._words, None)

    async def close(self) -> None:
        """Close the channel; the node-side watchdog then stops the command's process group."""
        if self._release is None:
            return
        release, self._release = self._release, None
        self._process.close()
        try:
            await asyncio.wait_for(self._process.wait_closed(), self._kill_after)
        except (TimeoutError, asyncssh.Error, OSError):
            pass
        finally:
            self._stderr_task.cancel()
            release()
