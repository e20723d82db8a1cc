"""Place files on a node by sha256: only changed files travel, and no target is ever half-written.

Two commands per sync, whatever the number of files (each bounded by a remote-side timeout):

1. `python3 -c HASH_SCRIPT` reads a JSON list of target paths on stdin and prints
   {path: [sha256, mode] | null}. Files whose digest and mode already match are left alone.
2. `python3 -c WRITE_SCRIPT` (the node runtime's nodewrite.py) reads a header (path, mode, size and
   sha256 of each file: see payload) then the raw contents, back to back, on stdin. Each file goes to a
   temp file in its target's directory (O_EXCL: 0600 from birth, then fchmod to its mode), is fsynced and
   checked against its sha256; only when EVERY file of the batch is written are they renamed over
   their targets and the directories fsynced. An interrupted push (input ends early, SIGTERM/SIGHUP
   from `timeout` or a lost connection) or a full disk removes the temp files and leaves every target
   as it was.

Content travels on stdin only, never in argv or the environment; secrets are written 0600 and are
never logged: logs and errors name paths and sizes, never content. One stdin stream per batch beat
SFTP in measurement (one round trip for any number of files, see the transport notes), and needs
nothing on the node but python3.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployer.connection import (
    FileLike,
    FileSpec,
    Result,
    SyncResult,
    TransportSettings,
    as_filespec,
)
from deployer.errors import TransportError
from deployer.transporterrors import SyncError

logger = logging.getLogger(__name__)

PYTHON_FLAGS = ("-I", "-S")  # isolated, no site: the helpers need only the stdlib and start faster

HASH_SCRIPT = r"""
import hashlib,json,os,stat,sys
out={}
for p in json.load(sys.stdin):
    try:
        st=os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            out[p]=None
            continue
        h=hashlib.sha256()
        with open(p,"rb") as f:
            for b in iter(lambda:f.read(1<<20),b""):
                h.update(b)
        out[p]=[h.hexdigest(),stat.S_IMODE(st.st_mode)]
    except OSError:
        out[p]=None
json.dump(out,sys.stdout)
"""

# The write half is the node runtime's nodewrite.py, run as a one-liner: one source for this helper and
# `flexnode.py start --files` (which writes a new allocation's files and starts it in one process).
WRITE_SCRIPT = (Path(__file__).resolve().parent / "noderuntime" / "nodewrite.py").read_text()


class CommandRunner(Protocol):
    """What sync needs from a connection: a name, a python on the node, and run()."""

    name: str
    python: str

    async def run(self, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result: ...


@dataclass(frozen=True)
class Upload:
    """One file ready to send: its spec, its bytes and their sha256."""

    spec: FileSpec
    data: bytes
    digest: str

    @property
    def path(self) -> str:
        """The target path on the node."""
        return self.spec.remote_path


def prepare(files: Sequence[FileLike]) -> list[Upload]:
    """Read and hash every file.

    Raises:
        ValueError: a remote path is relative, holds a NUL byte or appears twice.
    """
    uploads: list[Upload] = []
    seen: set[str] = set()
    for spec in map(as_filespec, files):
        path = spec.remote_path
        if not posixpath.isabs(path) or "\0" in path or path.endswith("/") or path in seen:
            raise ValueError(f"remote path must be absolute, unique and name a file: {path!r}")
        path.encode("utf-8", "surrogateescape")  # UnicodeEncodeError (a ValueError): no file can have it
        seen.add(path)
        uploads.append(Upload(spec, *_content(spec)))
    return uploads


# (path, inode, size, mtime, ctime) -> (content, sha256) of the local files sync read, up to
# READ_CACHE_MAX bytes in all: a push to N nodes reads and hashes each job file once, not N times
_read_cache: dict[tuple[str, int, int, int, int], tuple[bytes, str]] = {}
READ_CACHE_MAX = 64 << 20


def _content(spec: FileSpec) -> tuple[bytes, str]:
    """A file's bytes and their sha256 (hex); a local file unchanged since this process last read it
    (same inode, size, mtime and ctime before and after the read) comes from the cache."""
    if spec.source is None:
        data = spec.read()
        return data, hashlib.sha256(data).hexdigest()
    key = _stat_key(spec.source)
    hit = _read_cache.get(key)
    if hit is not None:
        return hit
    data = spec.read()
    found = data, hashlib.sha256(data).hexdigest()
    if _stat_key(spec.source) == key and len(data) + sum(len(d) for d, _ in _read_cache.values()) <= READ_CACHE_MAX:
        _read_cache[key] = found
    return found


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stale_uploads(uploads: Sequence[Upload], remote: Mapping[str, object]) -> list[Upload]:
    """The uploads whose content or mode differs on the node (pure)."""
    return [u for u in uploads if remote.get(u.path) != [u.digest, u.spec.mode & 0o7777]]


def batches(uploads: Sequence[Upload], limit: int) -> Iterator[list[Upload]]:
    """Consecutive groups of uploads of at most limit bytes each (a bigger file goes alone)."""
    group: list[Upload] = []
    size = 0
    for upload in uploads:
        if group and size + len(upload.data) > limit:
            yield group
            group, size = [], 0
        group.append(upload)
        size += len(upload.data)
    if group:
        yield group


def payload(group: Sequence[Upload]) -> bytes:
    """The write script's stdin: the header's length in bytes and a newline, the header (path, mode,
    size and sha256 of each file, each field followed by a NUL: no path holds one), then every content
    back to back. Not JSON: the node parses it without importing json (~13 ms of CPU per sync)."""
    fields = [f"{u.path}\0{u.spec.mode & 0o7777}\0{len(u.data)}\0{u.digest}\0" for u in group]
    header = "".join(fields).encode("utf-8", "surrogateescape")
    return b"%d\n" % len(header) + header + b"".join(u.data for u in group)


async def sync_files(conn: CommandRunner, files: Sequence[FileLike], settings: TransportSettings, *,
                     fresh: bool = False) -> SyncResult:
    """Make the node's files match files; returns what changed. fresh: the caller knows the targets
    are absent (a directory just named, a runtime the node said it lacks), so the checksum command is
    skipped and every file travels: one remote interpreter and one round trip fewer.

    Raises:
        SyncError: the node could not write a file, or the push was interrupted; targets keep
            either their old or their new content, never a mix.
        TransportError: the node could not be asked (unreachable, host key, auth, timeout).
    """
    started = time.monotonic()
    uploads = prepare(files)
    remote = {} if fresh else await remote_digests(conn, [u.path for u in uploads], settings)
    stale = stale_uploads(uploads, remote)
    for group in batches(stale, settings.sync_batch_bytes):
        await push(conn, group, settings)
    changed = {u.path for u in stale}
    sent = sum(len(u.data) for u in stale)
    logger.info("%s: sync: %d changed, %d unchanged, %d bytes sent", conn.name, len(changed),
                len(uploads) - len(changed), sent)
    return SyncResult(host=conn.name, changed=tuple(u.path for u in stale),
                      unchanged=tuple(u.path for u in uploads if u.path not in changed),
                      bytes_sent=sent, duration=time.monotonic() - started)


async def remote_digests(conn: CommandRunner, paths: Sequence[str], settings: TransportSettings) -> dict[str, object]:
    """{path: [sha256, mode] | None} for paths on the node, in one command.

    Raises:
        SyncError: the node's answer is not the expected JSON.
    """
    if not paths:
        return {}
    result = await conn.run([conn.python, *PYTHON_FLAGS, "-c", HASH_SCRIPT], timeout=settings.sync_timeout,
                            input=json.dumps(list(paths)).encode())
    try:
        answer = json.loads(result.stdout) if result.ok else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SyncError(conn.name, f"could not read checksums of the targets: {_tail(result)}",
                        f"check that {conn.python} runs on the node")
    return answer


async def push(conn: CommandRunner, group: Sequence[Upload], settings: TransportSettings) -> None:
    """Write one batch with temp file + fsync + rename.

    Raises:
        SyncError: a file could not be written, or the push was interrupted.
    """
    data = payload(group)
    for upload in group:
        logger.debug("%s: push %s (%d bytes, mode %o%s)", conn.name, upload.path, len(upload.data),
                     upload.spec.mode, ", secret" if upload.spec.secret else "")
    timeout = settings.sync_timeout + len(data) / (1 << 20)
    try:
        result = await conn.run([conn.python, *PYTHON_FLAGS, "-c", WRITE_SCRIPT], timeout=timeout, input=data)
    except SyncError:
        raise
    except TransportError as exc:
        raise interrupted(conn.name, group, exc) from exc
    if not result.ok:
        raise write_failed(conn.name, group, result)


def interrupted(host: str, group: Sequence[Upload], exc: TransportError) -> SyncError:
    """The error for a push cut off by the transport."""
    names = ", ".join(u.path for u in group[:3]) + (f" and {len(group) - 3} more" if len(group) > 3 else "")
    cause = str(exc).splitlines()[0]
    return SyncError(host, f"push of {names} interrupted ({cause}); every target keeps its old or its "
                     "new content, none is partial", "push again: only the files still different travel",
                     path=group[0].path)


def write_failed(host: str, group: Sequence[Upload], result: Result) -> SyncError:
    """The error for a write the node refused (ENOSPC, EACCES, ...)."""
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return failed_write(host, report, f"writing {len(group)} files failed: {_tail(result)}", group[0].path)


def failed_write(host: str, report: object, otherwise: str, first: str) -> SyncError:
    """The error for nodewrite's failure document report ({path, errno, error, phase}); otherwise
    (the message) when report is not one, naming first (a path of the batch)."""
    try:
        assert isinstance(report, dict)
        path, number, reason, phase = report["path"], int(report["errno"]), report["error"], report["phase"]
    except (AssertionError, KeyError, TypeError, ValueError):
        return SyncError(host, f"{otherwise}; no target was left partial", path=first)
    code = errno.errorcode.get(number, str(number))
    kept = ("no file of this push was replaced" if phase == "write"
            else "files before it were replaced; it and the rest keep their old content")
    fix = (f"free space on the filesystem of {posixpath.dirname(path)}, then push again" if number == errno.ENOSPC
           else f"make {posixpath.dirname(path)} writable for the SSH user, then push again")
    return SyncError(host, f"could not write {path}: {reason} ({code}); {kept}", fix, path=path)


def _tail(result: Result) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return f"exit {result.exit_status}: {lines[-1] if lines else 'no output'}"
