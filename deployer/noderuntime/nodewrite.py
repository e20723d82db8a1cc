"""Write a batch of files from one stream, all or nothing: no target is ever half-written.

The stream is a header, then the contents back to back. The header is its length in bytes (ASCII
decimal) and a newline, then that many bytes of UTF-8: path, mode, size and sha256 (hex) of each file,
every field followed by a NUL byte (a path cannot hold one). Each file goes to a temp file in its
target's directory (O_EXCL, 0600 from birth, then fchmod to its mode), is fsynced and checked against
its sha256; only when EVERY file of the batch is written are they renamed over their targets (in the
header's order) and the directories fsynced. Input that ends early, SIGTERM/SIGHUP (GNU timeout, a
lost connection) or a full disk removes the temp files and leaves every target as it was.

Two users, one source: deployer/filesync.py runs this file's text as the sync helper (`python3 -I -S
-c`, no runtime needed on the node: it is how the runtime itself gets there), and `flexnode.py start
ID --files` writes a new allocation's files with it and starts the allocation in the same process.
Stdlib only, Python 3.8+. Its imports are the interpreter's cheapest: a node pays them on every sync,
and on a fresh node before anything else. json (re, enum: ~13 ms of CPU), tempfile (~18 ms), signal
(enum: ~9 ms) and hashlib (OpenSSL: ~5 ms) are not imported, except hashlib for a batch big enough
that OpenSSL's faster sha256 pays for loading it, and json on the failure path.
"""

import errno
import os
import sys

try:
    import _signal as signal  # the C module signal.py wraps: the same handlers without enum's import
except ImportError:  # pragma: no cover - not CPython
    import signal

OPENSSL_FROM = 1 << 20  # batch bytes from which hashlib's OpenSSL sha256 (~6x faster) pays for its import
TEMP_SUFFIX = ".flextmp"


class WriteFailed(Exception):
    """A file of the batch could not be written or renamed; nothing of the batch was renamed after it."""

    def __init__(self, phase, path, exc):
        super().__init__("%s %s: %s" % (phase, path, exc.strerror or exc))
        self.doc = {"phase": phase, "path": path, "errno": exc.errno or 0, "error": exc.strerror or str(exc)}


def read_header(src) -> list:
    """The header's [[path, mode, size, sha256], ...] from the binary stream src.

    Raises:
        ValueError: the stream does not start with a header of this format.
    """
    line = src.readline()
    length = int(line)
    head = src.read(length)
    if len(head) != length:
        raise ValueError("the header ended early (%d of %d bytes)" % (len(head), length))
    fields = head.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) % 4 != 1 or fields[-1]:
        raise ValueError("the header does not hold 4 fields per file")
    return [[fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]] for i in range(0, len(fields) - 1, 4)]


def sha256_constructor(total: int):
    """sha256 from the interpreter's own module for small batches, OpenSSL's from OPENSSL_FROM bytes on."""
    if total < OPENSSL_FROM:
        for name in ("_sha256", "_sha2"):  # 3.8-3.11, 3.12+
            try:
                return __import__(name).sha256
            except (ImportError, AttributeError):
                pass
    from hashlib import sha256
    return sha256


def write_batch(src, verify=True) -> list:
    """Read one batch from the binary stream src and place its files; returns their paths. verify:
    check each file against its sha256 (off where src is checked already: the runtime bootstrap's
    zlib data carries an adler32 of the whole batch, and the SSH channel a MAC).

    Raises:
        WriteFailed: a write or a rename failed (the temp files are gone, the targets untouched or,
            for a rename failure, the ones before it renamed).
        ValueError: the stream does not start with a header (nothing was written).
    """
    todo = read_header(src)
    sha256 = sha256_constructor(sum(entry[2] for entry in todo)) if verify else None
    temps = []

    def clean(*sig):
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if sig:
            os._exit(128 + sig[0])

    previous = [(s, signal.signal(s, clean)) for s in (signal.SIGTERM, signal.SIGHUP)]
    try:
        cleaned = set()
        for path, mode, size, digest in todo:
            try:
                directory = os.path.dirname(path)
                if directory not in cleaned:  # before this batch made a temp file there
                    _clean_directory(directory, todo)
                    cleaned.add(directory)
                _receive(src, path, mode, size, digest, temps, sha256)
            except OSError as exc:
                raise WriteFailed("write", path, exc) from None
        dirs = set()
        for tmp, entry in zip(list(temps), todo):
            try:
                os.replace(tmp, entry[0])
            except OSError as exc:
                raise WriteFailed("rename", entry[0], exc) from None
            temps.remove(tmp)
            dirs.add(os.path.dirname(entry[0]))
        for directory in dirs:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        clean()
        raise
    finally:
        for sig, handler in previous:
            if handler is not None:  # None: not a handler python can set again
                signal.signal(sig, handler)
    return [entry[0] for entry in todo]


def _clean_directory(directory: str, todo: list) -> None:
    """Create directory, and remove the temp files a previous batch left there for this batch's targets
    (SIGKILL leaves them): ".<target name>.<token>.flextmp", the token without a dot, so target "a"
    never takes "a.b"'s temp file for its own."""
    os.makedirs(directory, exist_ok=True)
    names = {os.path.basename(entry[0]) for entry in todo if os.path.dirname(entry[0]) == directory}
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            target, _, token = name[1:-len(TEMP_SUFFIX)].rpartition(".")
            if target in names and token:
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass


def _create_temp(path: str):
    """(fd, name) of a new file ".<name>.<token>.flextmp" beside path, 0600 from birth (umask aside)."""
    directory, name = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, ".%s.%s%s" % (name, os.urandom(6).hex(), TEMP_SUFFIX))
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _receive(src, path, mode, size, digest, temps: list, sha256) -> None:
    """One file's content into a fsynced temp file beside path, listed in temps from its creation on
    (a signal may end the process at any moment: the handler removes what temps lists)."""
    fd, tmp = _create_temp(path)
    temps.append(tmp)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        sha = sha256() if sha256 is not None else None
        left = size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(errno.EPIPE, "the push was interrupted (input ended early)")
            out.write(chunk)
            if sha is not None:
                sha.update(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if sha is not None and sha.hexdigest() != digest:
        raise OSError(errno.EIO, "content changed in transit (sha256 mismatch)")


def main() -> int:
    """The sync helper: {"ok": true}, or the failure ({"phase", "path", "errno", "error"}) and exit 3."""
    try:
        write_batch(sys.stdin.buffer)
    except WriteFailed as exc:
        import json  # only here: its import (re, enum) would double the cost of every sync
        json.dump(exc.doc, sys.stdout)
        return 3
    sys.stdout.write('{"ok": true}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
