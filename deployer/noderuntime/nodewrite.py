"""Write a batch of files from one stream, all or nothing: no target is ever half-written.

The stream is a JSON header line, [[path, mode, size, sha256], ...], then the contents back to back.
Each file goes to a temp file in its target's directory (mkstemp: 0600 from birth, then fchmod to its
mode), is fsynced and checked against its sha256; only when EVERY file of the batch is written are
they renamed over their targets (in the header's order) and the directories fsynced. Input that ends
early, SIGTERM/SIGHUP (GNU timeout, a lost connection) or a full disk removes the temp files and
leaves every target as it was.

Two users, one source: deployer/filesync.py runs this file's text as the sync helper (`python3 -I -S
-c`, no runtime needed on the node: it is how the runtime itself gets there), and `flexnode.py start
ID --files` writes a new allocation's files with it and starts the allocation in the same process.
Stdlib only, Python 3.8+.
"""

import errno
import hashlib
import json
import os
import signal
import sys
import tempfile


class WriteFailed(Exception):
    """A file of the batch could not be written or renamed; nothing of the batch was renamed after it."""

    def __init__(self, phase, path, exc):
        super().__init__("%s %s: %s" % (phase, path, exc.strerror or exc))
        self.doc = {"phase": phase, "path": path, "errno": exc.errno or 0, "error": exc.strerror or str(exc)}


def write_batch(src) -> list:
    """Read one batch from the binary stream src and place its files; returns their paths.

    Raises:
        WriteFailed: a write or a rename failed (the temp files are gone, the targets untouched or,
            for a rename failure, the ones before it renamed).
    """
    todo = json.loads(src.readline())
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
        for path, mode, size, digest in todo:
            try:
                _receive(src, path, mode, size, digest, temps)
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
            signal.signal(sig, handler)
    return [entry[0] for entry in todo]


def _receive(src, path, mode, size, digest, temps: list) -> None:
    """One file's content into a fsynced temp file beside path, listed in temps from its creation on
    (a signal may end the process at any moment: the handler removes what temps lists)."""
    directory, prefix = os.path.dirname(path), "." + os.path.basename(path) + "."
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # a previous batch's leftovers (SIGKILL leaves them)
        if name.startswith(prefix) and name.endswith(".flextmp"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".flextmp")
    temps.append(tmp)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        sha = hashlib.sha256()
        left = size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(errno.EPIPE, "the push was interrupted (input ended early)")
            out.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if sha.hexdigest() != digest:
        raise OSError(errno.EIO, "content changed in transit (sha256 mismatch)")


def main() -> int:
    """The sync helper: {"ok": true}, or the failure ({"phase", "path", "errno", "error"}) and exit 3."""
    try:
        write_batch(sys.stdin.buffer)
    except WriteFailed as exc:
        json.dump(exc.doc, sys.stdout)
        return 3
    json.dump({"ok": True}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
