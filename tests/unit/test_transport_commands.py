"""Pure parts of the transport: command lines, results, file plans, error mapping. Milliseconds."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer.bootstrap import BOOT, INSTALLER
from deployer.connection import (
    FileSpec,
    LineStream,
    Result,
    Secret,
    TransportSettings,
    as_filespec,
    checked_argv,
    command_line,
    exit_status_of,
    is_remote_timeout,
    seconds,
)
from deployer.filesync import (
    HASH_SCRIPT,
    WRITE_SCRIPT,
    batches,
    payload,
    prepare,
    stale_uploads,
    write_failed,
)
from deployer.models import Host
from deployer.sshfailures import connect_failure
from deployer.sshstream import WATCHDOG
from deployer.transporterrors import (
    AuthFailed,
    CommandFailed,
    CommandTimeout,
    HandshakeDropped,
    SyncError,
    Unreachable,
)

# --- command lines ----------------------------------------------------------------------------

LINES = [
    pytest.param(["echo", "hi"], 5, None, "exec timeout -k 2 5 echo hi", id="plain argv under timeout"),
    pytest.param(["echo", "$(id)"], 0.25, None, "exec timeout -k 2 0.25 echo '$(id)'", id="substitution is quoted"),
    pytest.param(["a;b", "c d"], None, None, "exec 'a;b' 'c d'", id="no timeout for streams"),
    pytest.param(["run"], 1, {"A": "x y"}, "exec timeout -k 2 1 env -- 'A=x y' run", id="env goes through env(1)"),
]


@pytest.mark.parametrize(("argv", "timeout", "env", "line"), LINES)
def test_command_line(argv: list[str], timeout: float | None, env: dict[str, str] | None, line: str) -> None:
    assert command_line(argv, timeout=timeout, env=env) == line


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"])),
                min_size=1, max_size=6))
def test_command_line_round_trips_any_argv(argv: list[str]) -> None:
    assert shlex.split(command_line(argv, timeout=3))[5:] == argv


@pytest.mark.parametrize("bad", ["echo hi", [], ["a\0b"], [1]], ids=["shell string", "empty", "NUL byte", "not a str"])
def test_bad_argv_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        checked_argv(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "A=B"])
def test_bad_env_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        command_line(["true"], timeout=1, env={name: "x"})


@pytest.mark.parametrize(("value", "text"), [(5, "5"), (0.25, "0.25"), (1.0004, "1"), (0, "0")])
def test_seconds(value: float, text: str) -> None:
    assert seconds(value) == text


@pytest.mark.parametrize(("code", "expected"), [(0, (0, None)), (3, (3, None)), (-15, (143, "TERM")), (-9, (137, "KILL"))])
def test_exit_status_of(code: int, expected: tuple[int, str | None]) -> None:
    assert exit_status_of(code) == expected


@pytest.mark.parametrize(("status", "duration", "expected"), [
    (124, 5.0, True), (137, 5.2, True), (124, 1.0, False), (3, 9.0, False),
], ids=["TERM at the deadline", "KILL after it", "124 before the deadline is the command's own", "other status"])
def test_is_remote_timeout(status: int, duration: float, expected: bool) -> None:
    assert is_remote_timeout(status, duration, 5.0) is expected


@pytest.mark.parametrize("script", [HASH_SCRIPT, WRITE_SCRIPT, WATCHDOG, BOOT, INSTALLER.decode()],
                         ids=["hash", "write", "watchdog", "boot", "installer"])
def test_node_scripts_parse_as_python_38(script: str) -> None:
    ast.parse(script, feature_version=(3, 8))


# --- results and errors -----------------------------------------------------------------------

def test_result_ok_and_check() -> None:
    good = Result("n1", ("true",), 0, "", "", 0.1)
    bad = Result("n1", ("make",), 2, "", "line1\nno rule to make target\n", 0.1)
    killed = Result("n1", ("x",), 143, "", "", 0.1, signal="TERM")
    assert good.ok and good.check() is good
    assert not bad.ok and not killed.ok
    with pytest.raises(CommandFailed, match="n1: make failed \\(exit 2\\): no rule to make target"):
        bad.check()
    with pytest.raises(CommandFailed, match="signal TERM"):
        killed.check()


def test_command_timeout_message() -> None:
    error = CommandTimeout("n1", ("sleep", "9"), 2.5, on_node=True)
    assert str(error).startswith("n1: sleep timed out after 2.5s (killed on the node)")


FAILURES = [
    pytest.param(asyncssh.PermissionDenied("denied"), AuthFailed, "refused every key", id="permission denied"),
    pytest.param(asyncssh.ConnectionLost("lost"), HandshakeDropped, "dropped the SSH handshake", id="closed mid-handshake"),
    pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), HandshakeDropped, "dropped", id="reset mid-handshake"),
    pytest.param(TimeoutError(), Unreachable, "no SSH answer .* within 10s", id="connect timeout"),
    pytest.param(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Unreachable, "refused the connection", id="refused"),
    pytest.param(OSError(errno.EHOSTUNREACH, "No route to host"), Unreachable, "No route to host", id="no route"),
    pytest.param(asyncssh.ProtocolError("garbage"), Unreachable, "ended the connection: garbage", id="protocol error"),
]


@pytest.mark.parametrize(("exc", "kind", "message"), FAILURES)
def test_connect_failures_map_to_typed_errors(exc: BaseException, kind: type, message: str) -> None:
    error = connect_failure(Host(name="n1", address="10.0.0.1", user="ops"), exc, 10)
    assert type(error) is kind
    assert str(error).startswith("n1: ")
    assert re.search(message, str(error))


# --- files ------------------------------------------------------------------------------------

def test_secret_content_never_shows_in_repr() -> None:
    spec = FileSpec.from_secret(Secret(b"s3cr3t"), "/x/token")
    assert "s3cr3t" not in repr(spec) and "s3cr3t" not in repr(Secret(b"s3cr3t"))
    assert spec.mode == 0o600 and spec.secret


def test_as_filespec_accepts_tuples() -> None:
    assert as_filespec((b"x", "/a", 0o640)) == FileSpec("/a", 0o640, content=b"x")
    assert as_filespec((Secret(b"k"), "/s", 0o644)).mode == 0o600


@pytest.mark.parametrize("files", [
    [(b"x", "relative", 0o644)], [(b"x", "/dir/", 0o644)], [(b"x", "/a", 0o644), (b"y", "/a", 0o644)],
], ids=["relative path", "directory path", "duplicate target"])
def test_prepare_refuses_bad_targets(files: list[tuple[bytes, str, int]]) -> None:
    with pytest.raises(ValueError):
        prepare(files)


def test_stale_uploads_compare_digest_and_mode() -> None:
    same, content, mode, missing = prepare([(b"a", "/same", 0o644), (b"b", "/content", 0o644),
                                            (b"c", "/mode", 0o755), (b"d", "/missing", 0o644)])
    remote = {"/same": [same.digest, 0o644], "/content": ["0" * 64, 0o644], "/mode": [mode.digest, 0o644],
              "/missing": None}
    assert [u.path for u in stale_uploads([same, content, mode, missing], remote)] == ["/content", "/mode", "/missing"]


def test_batches_respect_the_byte_limit() -> None:
    uploads = prepare([(b"x" * n, f"/f{i}", 0o644) for i, n in enumerate([4, 4, 4, 20, 1])])
    assert [[u.path for u in group] for group in batches(uploads, 10)] == [["/f0", "/f1"], ["/f2"], ["/f3"], ["/f4"]]


def test_payload_is_header_then_contents() -> None:
    uploads = prepare([(b"ab", "/a", 0o600), (b"c", "/c", 0o644)])
    length, rest = payload(uploads).split(b"\n", 1)
    head, body = rest[:int(length)], rest[int(length):]
    fields = ["/a", str(0o600), "2", uploads[0].digest, "/c", str(0o644), "1", uploads[1].digest]
    assert head == "".join(field + "\0" for field in fields).encode()
    assert body == b"abc"


def test_a_local_file_is_read_and_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push to N nodes reads and hashes each job file once; a change (content, size or not) is read again."""
    import os

    source = tmp_path / "blob.bin"
    source.write_bytes(b"one")
    reads: list[Path] = []
    read = FileSpec.read

    def counted(spec: FileSpec) -> bytes:
        reads.append(spec.source or Path())
        return read(spec)

    monkeypatch.setattr(FileSpec, "read", counted)
    first = [prepare([FileSpec.from_path(source, f"/n{i}/blob.bin")])[0] for i in range(3)]
    assert len(reads) == 1 and {u.digest for u in first} == {hashlib.sha256(b"one").hexdigest()}
    source.write_bytes(b"two")  # same size
    os.utime(source, ns=(1, 1))  # even with an old mtime: the inode's ctime moved
    assert prepare([FileSpec.from_path(source, "/n0/blob.bin")])[0].data == b"two" and len(reads) == 2


@pytest.mark.parametrize(("report", "expected"), [
    ({"phase": "write", "path": "/r/f", "errno": errno.ENOSPC, "error": "No space left on device"},
     "could not write /r/f: No space left on device (ENOSPC); no file of this push was replaced"),
    ({"phase": "rename", "path": "/r/f", "errno": errno.EISDIR, "error": "Is a directory"},
     "could not write /r/f: Is a directory (EISDIR); files before it were replaced"),
], ids=["disk full while writing", "rename refused"])
def test_write_failures_name_path_and_what_was_kept(report: dict[str, object], expected: str) -> None:
    result = Result("n1", ("python3",), 3, json.dumps(report), "", 0.1)
    error = write_failed("n1", prepare([(b"x", "/r/f", 0o644)]), result)
    assert isinstance(error, SyncError) and expected in str(error) and error.path == "/r/f"


def test_write_script_refuses_truncated_input_and_cleans_up(tmp_path: Path) -> None:
    root = tmp_path
    (root / "f").write_bytes(b"old")
    data = payload(prepare([(b"new content", str(root / "f"), 0o644)]))
    proc = subprocess.run([sys.executable, "-c", WRITE_SCRIPT], input=data[:-3], capture_output=True, check=False)
    assert proc.returncode == 3 and json.loads(proc.stdout)["errno"] == errno.EPIPE
    assert (root / "f").read_bytes() == b"old" and sorted(p.name for p in root.iterdir()) == ["f"]


# --- streams and settings ---------------------------------------------------------------------

class FakeHandle:
    """A StreamHandle that yields fixed lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.closed = 0
        self.exit_status: int | None = None
        self.stderr_tail: tuple[str, ...] = ()

    async def readline(self) -> str | None:
        if self.lines:
            return self.lines.pop(0)
        self.exit_status = 0
        return None

    async def close(self) -> None:
        self.closed += 1


async def test_line_stream_opens_lazily_and_closes() -> None:
    handle = FakeHandle(["a", "b"])
    opened = []

    async def opener() -> FakeHandle:
        opened.append(1)
        return handle

    stream = LineStream(opener)
    assert opened == [] and stream.exit_status is None
    async with stream:
        assert [line async for line in stream] == ["a", "b"]
    assert opened == [1] and handle.closed == 1 and stream.exit_status == 0
    closed = LineStream(opener)
    await closed.close()
    with pytest.raises(RuntimeError):
        await closed.open()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEX_INSECURE_HOST_KEYS", raising=False)
    assert not TransportSettings.from_env().insecure_accept_new
    monkeypatch.setenv("FLEX_INSECURE_HOST_KEYS", "1")
    assert TransportSettings.from_env(connect_timeout=2).insecure_accept_new
    assert TransportSettings.from_env(connect_timeout=2).connect_timeout == 2


def test_aes_gcm_is_preferred_unless_the_ssh_config_names_ciphers(tmp_path: Path) -> None:
    from asyncssh.encryption import get_default_encryption_algs

    from deployer.sshconnection import preferred_ciphers

    named, plain = tmp_path / "named", tmp_path / "plain"
    named.write_text("Host *\n  Ciphers aes256-ctr\n")
    plain.write_text("Host *\n  ServerAliveInterval 5\n")
    assert preferred_ciphers(str(named)) is None  # the operator's choice wins: flex passes no list
    order = preferred_ciphers(str(plain))
    has_aes = any(line.startswith(("flags", "Features")) and " aes " in f" {line.split(':', 1)[-1]} "
                  for line in Path("/proc/cpuinfo").read_text().splitlines())
    if has_aes:
        assert order is not None and order[0] == "aes128-gcm@openssh.com"
        assert sorted(order) == sorted(a.decode() for a in get_default_encryption_algs())  # reordered, not narrowed
    else:
        assert order is None
