"""deployer/bootstrap.py run for real: the stream's sh line, BOOT and the installer, fed on stdin as the
controller feeds them (NodeClient's side is in test_nodeclient.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

from deployer.bootstrap import FAILED, INSTALLER, MISSING, installer_input, stream_argv
from deployer.connection import FileSpec
from deployer.noderuntime import ENTRY_POINT, runtime_bytecode, runtime_files, runtime_id


def runtime_push(root: Path) -> tuple[Path, list[FileSpec]]:
    """The runtime's files for root, entry point last (as NodeClient._runtime_push orders them)."""
    files = runtime_files()
    target = root / "runtime" / runtime_id(files)
    push = [FileSpec.from_path(f.path, str(target / f.name), f.mode) for f in files if f.name != ENTRY_POINT]
    push += [FileSpec.from_bytes(data, str(target / name)) for name, data in runtime_bytecode(files)]
    push += [FileSpec.from_path(f.path, str(target / f.name), f.mode) for f in files if f.name == ENTRY_POINT]
    return target, push


def boot(root: Path, target: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = stream_argv(sys.executable, [str(target / ENTRY_POINT), "--root", str(root), "probe", "--count", "1"])
    return subprocess.run(argv, input=data, capture_output=True, timeout=60)


def test_a_fresh_node_asks_installs_and_answers_in_one_process(tmp_path: Path) -> None:
    target, push = runtime_push(tmp_path)
    done = boot(tmp_path, target, installer_input(push))
    first, rest = done.stdout.decode().split("\n", 1)
    assert first == MISSING and done.returncode == 0, done.stderr
    doc = json.loads(rest)
    assert doc["ok"] and doc["runtime"]["dir"] == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(["__pycache__", *(f.name for f in runtime_files())])
    again = boot(tmp_path, target, b"")  # installed: the plain command, nothing asked
    assert again.returncode == 0 and json.loads(again.stdout)["ok"] and MISSING not in again.stdout.decode()


def test_corrupt_or_cut_input_installs_nothing(tmp_path: Path) -> None:
    target, push = runtime_push(tmp_path)
    good = installer_input(push)
    code = b"%08d" % len(INSTALLER) + INSTALLER
    bad = zlib.compress(b"not the runtime")[:-4] + b"\0\0\0\0"  # a wrong adler32
    corrupt = boot(tmp_path, target, code + b"%08d" % len(bad) + bad)
    lines = corrupt.stdout.decode().splitlines()
    assert corrupt.returncode == 3 and lines[0] == MISSING and lines[1].startswith(FAILED), corrupt
    cut = boot(tmp_path, target, good[:len(good) // 2])  # the connection dropped mid-way
    assert cut.returncode == 3 and cut.stdout.decode().splitlines() == [MISSING]
    assert not (target / ENTRY_POINT).exists() and not list(tmp_path.rglob("*.flextmp"))
