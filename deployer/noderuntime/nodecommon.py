"""Shared helpers of the flex node runtime: ids, paths, atomic JSON files, locks, events.

Runs under the node's python3 (3.8+), stdlib only. Imported by nodecli.py, supervisor.py and
nodeprobe.py as a plain module (the runtime directory is sys.path[0]); the controller imports it as
deployer.noderuntime.nodecommon for VERSION, so it imports nothing from the runtime itself.
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import os
import sys
import time

# Start-up is most of what a verb costs on a node (python3 itself ~10 ms, then imports), and a push
# starts interpreters on every node: the runtime imports no re, enum, contextlib, threading or
# argparse on the paths every push takes (json's pure-Python half imports re and enum: ~9 ms).
try:  # CPython's own accelerator of the json module, used directly
    import _json
except ImportError:  # another Python: the json module (same output)
    _json = None  # type: ignore[assignment]

VERSION = "1"
"""Protocol version of the node runtime: bumped when the layout or a verb's JSON changes."""

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"  # ASCII only: names, not text
ID_CHARS = frozenset(ALNUM + "_.-")
LIVE_STATUSES = ("starting", "running")
FINAL_STATUSES = ("exited", "stopped", "fenced")
EVENTS_MAX_BYTES = 1024 * 1024
LOCK_WAIT_S = 10.0


def _not_serializable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _ScanContext:
    """What _json.make_scanner reads from a json.JSONDecoder (strict parsing, plain dicts)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


if _json is not None:
    # json.JSONEncoder(sort_keys=True)'s and json.JSONDecoder()'s C halves, called as they call them
    _ENCODE = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ",
                                 True, False, True)
    _SCAN = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed: it reads attributes

    def dumps(doc) -> str:
        """json.dumps(doc, sort_keys=True)."""
        return "".join(_ENCODE(doc, 0))

    def loads(text: str):
        """json.loads(text) for a str; ValueError when it is not one JSON document."""
        start = len(text) - len(text.lstrip(" \t\n\r"))
        try:
            doc, end = _SCAN(text, start)
        except StopIteration as exc:
            raise ValueError(f"Expecting value: char {exc.value}") from None
        if end != len(text.rstrip(" \t\n\r")):
            raise ValueError(f"Extra data: char {end}")
        return doc
else:  # pragma: no cover - CPython always has _json
    import json as _json_module

    def dumps(doc) -> str:
        """json.dumps(doc, sort_keys=True)."""
        return _json_module.dumps(doc, sort_keys=True)

    def loads(text: str):
        """json.loads(text)."""
        return _json_module.loads(text)


class suppress:
    """contextlib.suppress without importing contextlib (collections, functools: ~7 ms)."""

    def __init__(self, *exceptions) -> None:
        self.exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is not None and issubclass(kind, self.exceptions)


def valid_alloc_id(name) -> bool:
    """1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'."""
    return (isinstance(name, str) and 0 < len(name) <= 128 and name[0] not in "_.-"
            and ID_CHARS.issuperset(name) and ".." not in name)


class Worker:
    """threading.Thread(target=fn, args=args, daemon=True), started at once, with join(timeout) and
    is_alive(), on _thread (threading's import: ~5 ms)."""

    def __init__(self, fn, *args) -> None:
        self._running = _thread.allocate_lock()
        self._running.acquire()
        _thread.start_new_thread(self._run, (fn, args))

    def _run(self, fn, args) -> None:
        try:
            fn(*args)
        finally:
            self._running.release()

    def join(self, timeout: float) -> None:
        """Wait until fn returned, at most timeout seconds."""
        if self._running.acquire(timeout=max(0.0, timeout)):
            self._running.release()

    def is_alive(self) -> bool:
        """Whether fn is still running."""
        if self._running.acquire(False):
            self._running.release()
            return False
        return True


class Wake:
    """threading.Event's set() and wait-then-clear() on one _thread lock (held = not set)."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        """Wake the waiter (once, however often it is called before it wakes)."""
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set

    def wait_and_clear(self, timeout: float) -> bool:
        """Wait until set or timeout seconds passed; True when it was set (it is clear again)."""
        return self._lock.acquire(timeout=max(0.0, timeout))


class NodeError(Exception):
    """An error a verb reports as JSON: a message, a stable code and the process exit status."""

    def __init__(self, message: str, code: str = "error", exit_status: int = 1, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_status = exit_status
        self.extra = extra

    def to_json(self) -> dict:
        """The error document printed on stdout."""
        doc = {"ok": False, "error": self.message, "code": self.code}
        doc.update(self.extra)
        return doc


def check_alloc_id(alloc_id: str) -> str:
    """Return alloc_id when it is safe as a directory name, else raise NodeError (bad_alloc_id)."""
    if not valid_alloc_id(alloc_id):
        raise NodeError(
            f"invalid allocation id {alloc_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, without '..'", code="bad_alloc_id", exit_status=2)
    return alloc_id


class AllocPaths:
    """Every path of one allocation directory, <root>/allocs/<alloc_id>/."""

    def __init__(self, root: str, alloc_id: str) -> None:
        self.root = root
        self.alloc_id = check_alloc_id(alloc_id)
        self.dir = os.path.join(root, "allocs", alloc_id)
        self.spec = os.path.join(self.dir, "spec.json")
        self.secret = os.path.join(self.dir, "env.secret")
        self.lease = os.path.join(self.dir, "lease")
        self.state = os.path.join(self.dir, "state.json")
        self.events = os.path.join(self.dir, "events.jsonl")
        self.health = os.path.join(self.dir, "health.json")
        self.lock = os.path.join(self.dir, ".lock")
        self.supervisor_log = os.path.join(self.dir, "supervisor.log")

    def log(self, stream: str, previous: bool = False, rotated: bool = False) -> str:
        """stdout.log, stdout.log.1, stdout.prev.log or stdout.prev.log.1 (same for stderr)."""
        name = stream + (".prev.log" if previous else ".log") + (".1" if rotated else "")
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        """Whether the allocation directory exists."""
        return os.path.isdir(self.dir)


def allocs_dir(root: str) -> str:
    """<root>/allocs."""
    return os.path.join(root, "allocs")


def list_alloc_ids(root: str) -> list:
    """Ids of every allocation directory under root, sorted; names that are not valid ids are skipped."""
    try:
        names = os.listdir(allocs_dir(root))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_alloc_id(n) and os.path.isdir(os.path.join(allocs_dir(root), n)))


def atomic_write(path: str, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write data to path through a temp file in the same directory, fsync, then rename over path.

    A reader sees the old content or the new one, never a torn file; a full disk leaves the old file.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """fsync a directory so a rename in it survives a crash (best effort)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str, doc: object, mode: int = 0o644, durable: bool = True) -> None:
    """Write doc as JSON to path atomically."""
    atomic_write(path, (dumps(doc) + "\n").encode("utf-8"), mode, durable)


def read_json(path: str, default: object = None) -> object:
    """The JSON document at path; default when the file is missing; NodeError (corrupt) when unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return default
    try:
        return loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise NodeError(f"{path} is not valid JSON: {exc}", code="corrupt")


class alloc_lock:  # noqa: N801 - used as a function: `with alloc_lock(paths) as fd:`
    """Hold the allocation's flock (serializes start, stop and the supervisor's state writes)."""

    def __init__(self, paths: AllocPaths, wait_s: float = LOCK_WAIT_S) -> None:
        self.paths = paths
        self.wait_s = wait_s
        self.fd = -1

    def __enter__(self) -> int:
        paths, wait_s = self.paths, self.wait_s
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise NodeError(f"allocation {paths.alloc_id} is locked by another flex command "
                                        f"for {wait_s:.0f} s", code="busy")
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    def __exit__(self, kind, value, traceback) -> None:
        os.close(self.fd)


def read_state(paths: AllocPaths) -> dict:
    """state.json as a dict ({} when the allocation was never launched)."""
    state = read_json(paths.state, {})
    return state if isinstance(state, dict) else {}


def update_state(paths: AllocPaths, changes: dict) -> dict:
    """Merge changes into state.json under the allocation lock; returns the new state."""
    with alloc_lock(paths):
        state = read_state(paths)
        state.update(changes)
        state["alloc_id"] = paths.alloc_id
        write_json(paths.state, state)
        return state


def append_event(paths: AllocPaths, event: str, **fields: object) -> dict:
    """Append one event line to events.jsonl with the node's wall-clock timestamp; returns it."""
    record = {"ts": time.time(), "alloc_id": paths.alloc_id, "event": event}
    record.update(fields)
    line = (dumps(record) + "\n").encode("utf-8")
    with suppress(OSError):
        if os.path.getsize(paths.events) > EVENTS_MAX_BYTES:
            os.replace(paths.events, paths.events + ".1")
    try:
        fd = os.open(paths.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass  # a full disk must not stop the supervisor; the state file is the record that matters
    return record


def read_events(paths: AllocPaths, limit: int = 0) -> list:
    """The allocation's events (the last `limit` when limit > 0); unreadable lines are skipped."""
    out = []
    try:
        with open(paths.events, "rb") as handle:
            for raw in handle:
                with suppress(ValueError):
                    out.append(loads(raw.decode("utf-8")))
    except FileNotFoundError:
        pass
    return out[-limit:] if limit > 0 else out


def wakeup_path(root: str) -> str:
    """<root>/wakeup: rewritten (new inode) whenever an allocation changes state."""
    return os.path.join(root, "wakeup")


def touch_wakeup(root: str) -> None:
    """Tell streaming probes that an allocation changed state (they poll this file's identity)."""
    with suppress(OSError):
        data = f"{time.time():.6f} {os.getpid()} {os.urandom(4).hex()}\n".encode("ascii")
        atomic_write(wakeup_path(root), data, durable=False)


def wakeup_token(root: str) -> tuple:
    """A value that changes every time touch_wakeup runs (inode, size, mtime)."""
    try:
        st = os.stat(wakeup_path(root))
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def print_json(doc: object) -> None:
    """Print one JSON document on stdout and flush it (BrokenPipeError reaches the caller)."""
    sys.stdout.write(dumps(doc) + "\n")
    sys.stdout.flush()


class ChannelWatch:
    """Why a long-running verb (probe --stream, logs --follow) must end: stdin closed (the SSH channel
    is gone), the parent process changed (sshd or the shell died), or the optional duration passed.
    A line arriving on stdin is a poke: `poked()` reports it once (the stream answers at once). A
    line that is a JSON object is a request instead: {"call": N, "argv": [VERB, ...], "input": BYTES}
    followed by that many bytes of the verb's stdin; `requests` holds (head, input) pairs in order
    (the probe stream serves them: see nodecli.serve_request).

    Stdin is read by a thread, so the end of the channel is seen even while the main thread is stuck
    (a hung NVML call, a slow disk): the verb gets exit_after seconds to end by itself, then the
    process exits. That is what lets a stream run without a watchdog process of its own."""

    def __init__(self, watch_stdin: bool = True, max_seconds: float = 0.0, exit_after: float = 5.0) -> None:
        self.ppid = os.getppid()
        self.deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
        self.watch_stdin = watch_stdin
        self.exit_after = exit_after
        self.closed = ""
        self.pokes = 0  # written by the reader thread only
        self._seen = 0  # pokes already reported by poked()
        self.requests: list = []  # (head, input): appended by the reader thread, popped by the main thread
        if watch_stdin:
            self._wake = Wake()
            _thread.start_new_thread(self._read_stdin, ())

    def reason(self, wait_ms: int = 0) -> str:
        """"" while the verb should go on; otherwise why it should stop. Waits up to wait_ms (less when
        stdin has news)."""
        if not self.closed and os.getppid() != self.ppid:
            self.closed = "parent process exited"
        if not self.closed and wait_ms > 0:
            if self.watch_stdin:
                self._wake.wait_and_clear(wait_ms / 1000.0)
            else:
                time.sleep(wait_ms / 1000.0)
            if os.getppid() != self.ppid:
                self.closed = "parent process exited"
        if not self.closed and self.deadline is not None and time.monotonic() >= self.deadline:
            self.closed = "duration reached"
        return self.closed

    def _read_stdin(self) -> None:
        buffer = bytearray()
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            if self._take(buffer):
                self._wake.set()
        self.closed = self.closed or "stdin closed"
        self._wake.set()
        time.sleep(self.exit_after)  # the main thread had its chance to end cleanly
        os._exit(0)

    def _take(self, buffer: bytearray) -> bool:
        """Consume the pokes and whole requests at the start of buffer (the rest stays for the next
        read); True when there was any."""
        news = False
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                return news
            if buffer[:1] != b"{":
                self.pokes += 1
                del buffer[:end + 1]
                news = True
                continue
            try:
                head = loads(buffer[:end].decode("utf-8"))
                size = int(head.get("input") or 0) if isinstance(head, dict) else -1
            except (ValueError, TypeError):
                head, size = None, -1
            if size < 0:  # answered as a request that cannot be served
                self.requests.append(({"call": head.get("call") if isinstance(head, dict) else None,
                                       "bad": bytes(buffer[:end][:200]).decode("utf-8", "replace")}, b""))
                del buffer[:end + 1]
                news = True
                continue
            if len(buffer) < end + 1 + size:
                return news  # its input is still on the way
            self.requests.append((head, bytes(buffer[end + 1:end + 1 + size])))
            del buffer[:end + 1 + size]
            news = True

    def poked(self) -> bool:
        """Whether a line arrived on stdin since the last call."""
        pokes = self.pokes
        if pokes != self._seen:
            self._seen = pokes
            return True
        return False
