"""Helpers for the node runtime tests: a temp flex root with the runtime installed the way the
controller pushes it, run by the oldest python3 (>= 3.8) on this machine, plus bounded polling."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.noderuntime import runtime_files, runtime_id


@functools.lru_cache(maxsize=1)
def node_python() -> str:
    """$FLEX_TEST_NODE_PYTHON, else the oldest python3 >= 3.8 found here (the node's floor), else ours."""
    if os.environ.get("FLEX_TEST_NODE_PYTHON"):
        return os.environ["FLEX_TEST_NODE_PYTHON"]
    candidates = []
    for minor in range(8, sys.version_info[1]):
        candidates.append(((3, minor), shutil.which(f"python3.{minor}")))
        for path in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3"))):
            candidates.append(((3, minor), path))
    for version, path in candidates:
        if path and _runs_as(path, version):
            return path
    return sys.executable


def _runs_as(path: str, version: tuple[int, int]) -> bool:
    try:
        out = subprocess.run([path, "-c", f"import sys; print(sys.version_info[:2] == {version!r})"], check=False,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.02, what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy (returned) or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(step)


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (index 0 = field 3, state); None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes whose process group is pgid."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(name))
    return out


def is_running(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


class Node:
    """A flex root in a temp dir with the runtime installed in <root>/runtime/<id>/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "runtime" / runtime_id()
        self.runtime.mkdir(parents=True)
        for item in runtime_files():
            shutil.copyfile(item.path, self.runtime / item.name)
            os.chmod(self.runtime / item.name, item.mode)
        (root / "allocs").mkdir()
        self.python = node_python()

    def argv(self, *args: str) -> list[str]:
        """The command line of one flexnode verb (root derived from the runtime's place)."""
        return [self.python, str(self.runtime / "flexnode.py"), *args]

    def run(self, *args: str, timeout: float = 15.0, check: bool = True) -> dict:
        """Run a verb and return its JSON document; with check, a non-zero exit fails the test."""
        proc = subprocess.run(self.argv(*args), check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        lines = proc.stdout.strip().splitlines()
        assert lines, f"no output from {args}: rc={proc.returncode} stderr={proc.stderr[-2000:]}"
        doc = json.loads(lines[-1])
        doc["_rc"] = proc.returncode
        if check:
            assert proc.returncode == 0, (doc, proc.stderr[-2000:])
        return doc

    def alloc_dir(self, alloc_id: str) -> Path:
        return self.root / "allocs" / alloc_id

    def spec(self, alloc_id: str, **spec: Any) -> Path:
        """Create the allocation directory and write its spec.json."""
        directory = self.alloc_dir(alloc_id)
        directory.mkdir(exist_ok=True)
        (directory / "spec.json").write_text(json.dumps(spec))
        return directory

    def secret(self, alloc_id: str, values: dict[str, str]) -> None:
        """Write env.secret 0600, as the controller does."""
        path = self.alloc_dir(alloc_id) / "env.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)

    def start(self, alloc_id: str, **spec: Any) -> dict:
        """Write the spec and start the allocation."""
        self.spec(alloc_id, **spec)
        return self.run("start", alloc_id)

    def state(self, alloc_id: str) -> dict:
        path = self.alloc_dir(alloc_id) / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def events(self, alloc_id: str) -> list[dict]:
        path = self.alloc_dir(alloc_id) / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_status(self, alloc_id: str, *statuses: str, timeout: float = 5.0) -> dict:
        """Poll state.json until its status is one of statuses; returns the state."""
        return wait_for(lambda: (s := self.state(alloc_id)).get("status") in statuses and s,
                        timeout, what=f"{alloc_id} to reach {statuses}")

    def kill_everything(self) -> None:
        """Test teardown: SIGKILL every workload group and supervisor this root started, and every
        process that escaped its group (FLEX_ALLOC_DIR under this root)."""
        mine = ("FLEX_ALLOC_DIR=%s/" % (self.root / "allocs")).encode()
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if any(item.startswith(mine) for item in environ.split(b"\0")):
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass
        for state_file in self.root.glob("allocs/*/state.json"):
            try:
                state = json.loads(state_file.read_text())
            except ValueError:
                continue
            for pid, start, group in ((state.get("pgid"), state.get("start_time"), True),
                                      (state.get("supervisor_pid"), state.get("supervisor_start_time"), False)):
                fields = proc_stat(int(pid)) if pid else None
                if (fields and fields[19] == str(start)) or (group and pid and fields is None):
                    try:
                        (os.killpg if group else os.kill)(int(pid), signal.SIGKILL)
                    except OSError:
                        pass


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A fresh flex root with the runtime installed; everything it started is killed afterwards."""
    root = Node(tmp_path / "flex")
    try:
        yield root
    finally:
        root.kill_everything()


def read_file(path: Path) -> str:
    """The file's text, "" when it does not exist."""
    return path.read_text() if path.exists() else ""


def started_process(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A process started by hand in its own session (for orphan tests)."""
    return subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
