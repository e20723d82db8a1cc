"""Allocation logs: size-capped writers with rotation, previous-run logs, tails and follow.

The supervisor reads the workload's stdout and stderr through pipes and writes them here, so a cap is
exact, rotation is a rename nobody races with, and a full disk drops log bytes instead of failing the
workload's own writes. Each stream keeps <stream>.log and one rotated <stream>.log.1; at every launch
the previous run's files become <stream>.prev.log(.1) for `logs --previous`.
"""

from __future__ import annotations

import errno
import os
import time

from nodecommon import suppress

STREAMS = ("stdout", "stderr")
TAIL_BLOCK = 8192
TAIL_MAX_BYTES = 1024 * 1024


class CappedLog:
    """An append-only log file that rotates to <path>.1 before it would exceed max_bytes."""

    def __init__(self, path: str, rotated: str, max_bytes: int) -> None:
        self.path = path
        self.rotated = rotated
        self.max_bytes = max(100, int(max_bytes))
        self.dropped = 0
        self.error = None
        self.fd = -1
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self.size = os.fstat(self.fd).st_size
        except OSError as exc:
            self.fd, self.size, self.error = -1, 0, str(exc)

    def write(self, data: bytes) -> None:
        """Append data, rotating at line boundaries where a line fits; bytes that cannot be written
        (full disk) are counted in `dropped`, never raised."""
        while data:
            if self.fd < 0:
                self._open()
                if self.fd < 0:
                    self.dropped += len(data)
                    return
            room = self.max_bytes - self.size
            if len(data) <= room:
                piece = data
            else:
                cut = data.rfind(b"\n", 0, max(room, 0))
                if cut >= 0:
                    piece = data[:cut + 1]
                elif self.size == 0:
                    piece = data[:self.max_bytes]  # one line longer than the cap: split it
                else:
                    piece = b""
            if piece and not self._write_all(piece):
                self.dropped += len(data)
                return
            data = data[len(piece):]
            if data:
                self.rotate()

    def _write_all(self, piece: bytes) -> bool:
        try:
            view = memoryview(piece)
            while view:
                view = view[os.write(self.fd, view):]
            self.size += len(piece)
            return True
        except OSError as exc:
            self.error = str(exc)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                self.close()
            return False

    def rotate(self) -> None:
        """Move the current file to <path>.1 (replacing it) and start an empty one."""
        self.close()
        with suppress(OSError):
            os.replace(self.path, self.rotated)
        self._open()

    def close(self) -> None:
        """Close the file (further writes reopen it)."""
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
        self.fd = -1


def rotate_previous(paths) -> None:
    """At launch: the last run's logs become *.prev.log(.1); the old previous ones are dropped."""
    for stream in STREAMS:
        for rotated in (False, True):
            current, previous = paths.log(stream, False, rotated), paths.log(stream, True, rotated)
            with suppress(FileNotFoundError):
                os.unlink(previous)
            with suppress(FileNotFoundError):
                os.replace(current, previous)


def _tail_fd(fd: int, n: int, end: int) -> tuple:
    """(lines, complete): the last n lines of the file before offset end; complete when the whole file
    was read (so older lines must come from the rotated file)."""
    data, pos = b"", end
    while pos > 0 and data.count(b"\n") <= n and len(data) < TAIL_MAX_BYTES:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if pos > 0:
        lines = lines[1:]  # the first piece may be a partial line
    return lines[-n:] if n > 0 else lines, pos == 0


def tail_file(path: str, n: int) -> tuple:
    """(lines, complete) of the last n lines of path; ([], True) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return [], True
    try:
        return _tail_fd(fd, n, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def tail_lines(paths, stream: str, n: int, previous: bool = False) -> list:
    """The last n lines (all when n <= 0, bounded by the caps) of a stream across .log.1 and .log."""
    lines, complete = tail_file(paths.log(stream, previous), n)
    if complete and (n <= 0 or len(lines) < n):
        older, _ = tail_file(paths.log(stream, previous, rotated=True), n - len(lines) if n > 0 else 0)
        lines = older + lines
    return [decode(line) for line in lines]


def decode(line: bytes) -> str:
    """A log line as text (invalid UTF-8 replaced, trailing CR dropped)."""
    return line.decode("utf-8", "replace").rstrip("\r")


def failure_tail(paths, n: int = 20) -> list:
    """The last n lines of stderr, or of stdout when stderr is empty (for a failed run)."""
    return tail_lines(paths, "stderr", n) or tail_lines(paths, "stdout", n)


class Follower:
    """Follow one stream's log across rotations: yields complete new lines as they are written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.ino = None
        self.buffer = b""

    def open_at_end(self, n: int) -> list:
        """Open the file and return its last n lines; later reads start after them."""
        if not self._open():
            return []
        end = os.fstat(self.fd).st_size
        os.lseek(self.fd, end, os.SEEK_SET)
        return [decode(line) for line in _tail_fd(self.fd, n, end)[0]]

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self.ino = os.fstat(self.fd).st_ino
        return True

    def read(self) -> list:
        """New complete lines since the last call (follows a rotation to the new file)."""
        if self.fd < 0 and not self._open():
            return []
        out = self._drain()
        with suppress(OSError):
            if os.stat(self.path).st_ino != self.ino:
                out += self._drain()
                os.close(self.fd)
                self.fd = -1
                if self._open():
                    out += self._drain()
        return out

    def _drain(self) -> list:
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        return [decode(line) for line in lines]

    def flush(self) -> list:
        """The last partial line, if any (at the end of a follow)."""
        rest, self.buffer = self.buffer, b""
        return [decode(rest)] if rest else []

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
