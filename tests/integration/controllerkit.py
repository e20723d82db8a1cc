"""Helpers for controller tests on real hosts: an in-process controller with short timings, job specs
written to files, and the truth about what runs on each host, read from the hosts' /proc (never from
flex's own records)."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployer.controller import Controller, ControllerSettings
from deployer.inventory import load_inventory
from deployer.spec import load_job
from deployer.store import Store
from tests.integration.transportkit import fast_settings

FAST = ControllerSettings(probe_interval=0.3, max_pass_interval=0.3, stale_after=2.0)

# Lists {alloc_id: [pid, ...]} of the workload processes on a host (health checks left out), from
# /proc/*/environ: what really runs there, whatever the state files say.
LIVE_SCRIPT = r"""
import json, os
out = {}
for pid in os.listdir('/proc'):
    if not pid.isdigit():
        continue
    try:
        env = open('/proc/%s/environ' % pid, 'rb').read().split(b'\0')
        state = open('/proc/%s/stat' % pid).read().rsplit(')', 1)[1].split()[0]
    except OSError:
        continue
    if state == 'Z':
        continue
    keys = dict(e.split(b'=', 1) for e in env if b'=' in e)
    if b'FLEX_ALLOC_ID' in keys and b'FLEX_HEALTH_CHECK' not in keys and int(pid) != os.getpid():
        out.setdefault(keys[b'FLEX_ALLOC_ID'].decode(), []).append(int(pid))
print(json.dumps(out))
"""


def kill_workloads(host: Any) -> None:
    """SIGKILL every supervisor and workload on a host and forget its allocations (a clean slate)."""
    script = LIVE_SCRIPT.replace("print(json.dumps(out))", "[os.kill(p, 9) for ps in out.values() for p in ps]")
    # supervisors by their command line: `flexnode.py ... supervise ID` as flex starts them (a bracket
    # keeps the pattern from matching this sh), `supervisor.py` as run by hand
    supervisors = "pkill -9 -f 'flexnode[.]py .* [s]upervise |[s]upervisor[.]py'"
    host.exec(["sh", "-c", f"{supervisors}; python3 -c \"$0\"; rm -rf /var/lib/flex/allocs", script], check=True)


def write_spec(directory: Path, name: str, body: str) -> Path:
    """A job spec file NAME.yaml in directory (body is dedented YAML without the name)."""
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(body))
    return path


def submit(store: Store, path: Path, submitted_at: float | None = None) -> None:
    """Put the job of a spec file into the store (as `flex push` does)."""
    store.put_job(load_job(path), path.read_text(), str(path), now=submitted_at)


def live_processes(fleet: Any) -> dict[str, dict[str, list[int]]]:
    """host -> {alloc_id: [pids]} of every live host (what really runs)."""
    out = {}
    for host in fleet.hosts:
        if not host.alive:
            continue
        proc = host.exec(["python3", "-c", LIVE_SCRIPT], check=True)
        out[host.name] = json.loads(proc.stdout)
    return out


def copies(fleet: Any, prefix: str) -> dict[str, list[str]]:
    """alloc_id -> hosts where it runs, for allocations whose id starts with prefix."""
    where: dict[str, list[str]] = {}
    for host, allocs in live_processes(fleet).items():
        for alloc_id in allocs:
            if alloc_id.startswith(prefix):
                where.setdefault(alloc_id, []).append(host)
    return where


def alloc_state(fleet: Any, node: str, alloc_id: str) -> dict[str, Any]:
    """The node runtime's state.json of an allocation, read through the host's flex root."""
    path = fleet.host(node).flex_root_path / "allocs" / alloc_id / "state.json"
    return dict(json.loads(path.read_text()))


class RunningController:
    """An in-process controller on a real fleet: `async with RunningController(...) as rc:`."""

    def __init__(self, inventory: Path, state: Path, tmp_path: Path, settings: ControllerSettings = FAST) -> None:
        self.store = Store.open(state)
        self.controller = Controller(load_inventory(inventory), self.store, settings, fast_settings(
            tmp_path, keepalive_interval=0.5, keepalive_count=2, connect_timeout=3.0))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningController:
        await self.controller.start()
        self.task = asyncio.ensure_future(self.controller.run(stop=self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        await self.controller.close()
        self.store.close()

    async def until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll condition until it is truthy; AssertionError naming what did not happen (and the events)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task is not None and self.task.done():
                self.task.result()  # the loop died: raise its error
            value = condition()
            if value:
                return value
            await asyncio.sleep(0.1)
        tail = "\n".join(f"{e.kind} {e.alloc or e.job} {e.message}" for e in self.store.events(
            after_seq=max(0, self.store.last_event_seq() - 40)))
        raise AssertionError(f"{what}: not within {timeout}s. Last events:\n{tail}")

    def running(self, job: str) -> list[Any]:
        """The job's allocations desired run and observed running."""
        return [a for a in self.store.allocations(job=job) if a.desired_status == "run"
                and a.observed_status == "running"]


# --- the CLI as separate processes, and "nothing changed" snapshots -------------------------------

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll predicate every 0.2 s until it returns something true (returned); fail naming what was awaited."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def flex_env(state: Path, **extra: str) -> dict[str, str]:
    """The environment of a `flex` subprocess: this one's, with FLEX_STATE and strict host keys."""
    import os

    return {**os.environ, "FLEX_STATE": str(state), "FLEX_INSECURE_HOST_KEYS": "0", **extra}


def flex(*args: str, env: dict[str, str], timeout: float = 120) -> Any:
    """Run `python3 -m deployer.cli ARGS` to its end; the CompletedProcess (text stdout and stderr)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "deployer.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def spawn_flex(*args: str, env: dict[str, str], log: Path) -> Any:
    """Start `python3 -m deployer.cli ARGS` in the background, stdout and stderr appended to log (a file,
    so a chatty process never blocks on a full pipe); the Popen (the caller ends it by its pid)."""
    import subprocess
    import sys

    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "deployer.cli", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root -> (mode, size, sha256 of a file's bytes): what a host's flex root holds."""
    import hashlib

    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = (0, 0, str(path.readlink()))
            continue
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size if path.is_file() else 0, digest)
    return out


def fleet_trees(fleet: Any) -> dict[str, dict[str, tuple[int, int, str]]]:
    """host -> tree() of its flex root, for every host of the fleet."""
    return {host.name: tree(host.flex_root_path) for host in fleet.hosts}


def db_dump(path: Path) -> list[str]:
    """The state database as SQL (sqlite3 iterdump): every table's every row; [] when there is none."""
    import sqlite3

    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()
