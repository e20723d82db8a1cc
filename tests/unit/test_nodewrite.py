"""The node's write helper (nodewrite.py), run as the controller runs it: `python3 -I -S -c WRITE_SCRIPT`
with a payload on stdin, by real interpreters on real files. Also what it must not import: it runs on
every sync, and first on a fresh node, so its imports are CPU on every node."""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer.filesync import WRITE_SCRIPT, payload, prepare
from deployer.noderuntime import nodewrite
from tests.unit._noderuntime import node_python, wait_for


def interpreters() -> list[str]:
    """The node's floor (3.8 where found), the system python3 and the newest one found (3.12+ have
    _sha2 instead of _sha256): each distinct one once."""
    found = [node_python(), "/usr/bin/python3", sys.executable]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9].*/bin/python3")))[-1:]
    out: list[str] = []
    for path in found:
        if os.path.exists(path) and os.path.realpath(path) not in map(os.path.realpath, out):
            out.append(path)
    return out


PYTHONS = pytest.mark.parametrize("python", interpreters())


def write(python: str, data: bytes, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([python, "-I", "-S", *flags, "-c", WRITE_SCRIPT], input=data, capture_output=True,
                          check=False, timeout=30)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.flextmp"))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# --- the header --------------------------------------------------------------------------------

NAMES = st.text(alphabet=st.characters(blacklist_characters="\0/", blacklist_categories=["Cs"]), min_size=1)


@given(st.lists(st.tuples(NAMES, st.binary(max_size=20), st.sampled_from([0o600, 0o644, 0o755, 0o4711])),
                min_size=1, max_size=5, unique_by=lambda f: f[0]))
def test_the_header_round_trips_any_path(files: list[tuple[str, bytes, int]]) -> None:
    uploads = prepare([(data, "/r/" + name, mode) for name, data, mode in files])
    src = io.BytesIO(payload(uploads) + b"after")
    assert nodewrite.read_header(src) == [[u.path, u.spec.mode, len(u.data), u.digest] for u in uploads]
    assert src.read() == b"".join(u.data for u in uploads) + b"after"


def test_a_path_with_newlines_and_undecodable_bytes_is_written_where_named(tmp_path: Path) -> None:
    name = "a\nb c\udcff.txt"  # a newline, a space, the byte 0xff (surrogateescape, as os.listdir gives it)
    target = os.path.join(str(tmp_path), name)
    proc = write(sys.executable, payload(prepare([(b"x", target, 0o644)])))
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(os.fsencode(str(tmp_path))) == [b"a\nb c\xff.txt"]


def test_a_path_no_file_can_have_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError):
        prepare([(b"x", "/r/\ud800", 0o644)])  # a lone surrogate that is not an escaped byte


@pytest.mark.parametrize("data", [b"", b"garbage\n", b"10\nshort", b"3\na\0b" + b"x" * 10],
                         ids=["empty input", "no length", "header cut short", "fields missing"])
def test_input_without_a_header_writes_nothing(tmp_path: Path, data: bytes) -> None:
    proc = write(sys.executable, data)
    assert proc.returncode not in (0, 3) and b"ValueError" in proc.stderr and proc.stdout == b""
    assert list(tmp_path.iterdir()) == []


# --- writing -----------------------------------------------------------------------------------

@PYTHONS
def test_a_batch_is_placed_with_its_modes_and_nothing_left_behind(python: str, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.conf").write_text("old\n")
    files = [(b"new\n", str(tmp_path / "conf" / "app.conf"), 0o644),
             (b"#!/bin/sh\n", str(tmp_path / "bin" / "deep" / "tool.sh"), 0o755),
             (b"s3cret", str(tmp_path / "secrets" / "token"), 0o600),
             (b"", str(tmp_path / "conf" / "empty"), 0o640)]
    old_umask = os.umask(0o022)
    try:
        proc = write(python, payload(prepare(files)))
    finally:
        os.umask(old_umask)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"ok": True}, proc.stderr
    for data, path, wanted in files:
        assert Path(path).read_bytes() == data and mode(Path(path)) == wanted, path
    assert leftovers(tmp_path) == []


@PYTHONS
def test_content_that_changed_in_transit_replaces_nothing(python: str, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old a")
    data = payload(prepare([(b"new a", str(tmp_path / "a"), 0o644), (b"new b", str(tmp_path / "b"), 0o644)]))
    proc = write(python, data.replace(b"new b", b"evil!"))
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout) == {"phase": "write", "path": str(tmp_path / "b"), "errno": errno.EIO,
                                       "error": "content changed in transit (sha256 mismatch)"}
    assert (tmp_path / "a").read_bytes() == b"old a" and not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []


def test_a_rename_refused_keeps_the_rest_old_and_says_which(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("keeps the directory non-empty\n")
    (tmp_path / "after").write_text("old\n")
    data = payload(prepare([(b"1", str(tmp_path / "first"), 0o644), (b"2", str(tmp_path / "taken"), 0o644),
                            (b"3", str(tmp_path / "after"), 0o644)]))
    proc = write(sys.executable, data)
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["phase"] == "rename" and doc["path"] == str(tmp_path / "taken") and doc["errno"] == errno.EISDIR
    assert (tmp_path / "first").read_bytes() == b"1" and (tmp_path / "after").read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_a_killed_batchs_leftovers_go_and_a_target_never_takes_anothers_temp_file(tmp_path: Path) -> None:
    """Leftovers of the batch's targets are removed (SIGKILL leaves them), others' are kept. Target "a"
    after "a.b" in one batch: ".a.b.<token>.flextmp" is a.b's temp file, not a leftover of "a"."""
    for name in (".a.0123abcd.flextmp", ".a.b.4567.flextmp", ".other.89ab.flextmp"):
        (tmp_path / name).write_text("left by a killed push\n")
    data = payload(prepare([(b"ab", str(tmp_path / "a.b"), 0o644), (b"a", str(tmp_path / "a"), 0o644)]))
    proc = write(sys.executable, data)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert (tmp_path / "a.b").read_bytes() == b"ab" and (tmp_path / "a").read_bytes() == b"a"
    assert leftovers(tmp_path) == [".other.89ab.flextmp"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_batch_removes_the_temp_files_and_keeps_the_old_file(tmp_path: Path, sig: int) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old model\n")
    data = payload(prepare([(b"m" * (4 << 20), str(target), 0o644)]))
    proc = subprocess.Popen([node_python(), "-I", "-S", "-c", WRITE_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(data[:1 << 20])
        proc.stdin.flush()
        wait_for(lambda: leftovers(tmp_path), what="the temp file")
        time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 128 + sig
    finally:
        proc.kill()
        proc.communicate()
    assert target.read_bytes() == b"old model\n" and leftovers(tmp_path) == []


# --- what it costs -----------------------------------------------------------------------------

HEAVY = {"json", "re", "enum", "tempfile", "hashlib", "_hashlib", "signal", "random", "shutil", "functools"}


def imported(stderr: bytes) -> set[str]:
    """The modules `python -X importtime` reports."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.decode().splitlines() if line.startswith("import time:")}


@PYTHONS
def test_a_small_batch_imports_nothing_heavy(python: str, tmp_path: Path) -> None:
    """json, tempfile, signal (enum) and hashlib (OpenSSL) would triple the helper's CPU."""
    data = payload(prepare([(b"x" * 1000, str(tmp_path / "d" / f"f{i}"), 0o644) for i in range(20)]))
    proc = write(python, data, "-X", "importtime")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"ok": True}
    assert imported(proc.stderr) and not imported(proc.stderr) & HEAVY, imported(proc.stderr) & HEAVY


def test_a_big_batch_hashes_with_openssl_and_a_failure_reports_with_json(tmp_path: Path) -> None:
    big = payload(prepare([(os.urandom(nodewrite.OPENSSL_FROM), str(tmp_path / "big"), 0o644)]))
    proc = write(sys.executable, big, "-X", "importtime")
    assert proc.returncode == 0 and "hashlib" in imported(proc.stderr)
    (tmp_path / "file").write_text("not a directory\n")
    proc = write(sys.executable, payload(prepare([(b"x", str(tmp_path / "file" / "x"), 0o644)])))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["phase"] == "write" and doc["path"] == str(tmp_path / "file" / "x")
    assert doc["errno"] == errno.EEXIST and doc["error"] == "File exists"  # os.makedirs' word for it


def test_the_start_verb_reads_the_same_format(tmp_path: Path) -> None:
    """`flexnode.py start --files` imports this module: the runtime's copy reads what payload() sends."""
    runtime = tmp_path / "runtime"
    shutil.copytree(Path(nodewrite.__file__).parent, runtime, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys, nodewrite; print(nodewrite.write_batch(sys.stdin.buffer))"
    target = str(tmp_path / "allocs" / "a1" / "spec.json")
    proc = subprocess.run([node_python(), "-E", "-S", "-c", code], cwd=runtime, input=payload(prepare([
        (b"{}", target, 0o644)])), capture_output=True, check=False)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == repr([target]), proc.stderr
