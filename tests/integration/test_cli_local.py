"""push, logs, restart, stop and the controller daemon as an operator runs them, each a real `flex`
subprocess, on the embedded local inventory (two nodes on this machine, no SSH) with flex roots and
the state database in tmp_path. Every workload started here is stopped before the test ends, and
killed by its recorded identity if a step failed first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.store import Store
from tests.integration.controllerkit import wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVICE = """name: hello
kind: service
command: [python3, -c, "import time; print('hello', flush=True); time.sleep(600)"]
resources: {cpus: 0.1, memory: 32MiB}
"""
BATCH = """name: countdown
kind: batch
command: [python3, -c, "import time; print('start', flush=True); time.sleep(2); print('done', flush=True)"]
resources: {cpus: 0.1, memory: 32MiB}
"""

pytestmark = pytest.mark.slow


@dataclass
class LocalFleet:
    """The local inventory rewritten into tmp_path, its state database, and the CLI run against them."""

    path: Path
    inventory: Path
    state: Path
    roots: tuple[Path, ...]

    def flex(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`python3 -m deployer.cli ARGS` with FLEX_STATE set; the inventory is the caller's to pass."""
        return subprocess.run([sys.executable, "-m", "deployer.cli", *args], capture_output=True, text=True,
                              cwd=ROOT, env=self.env(), timeout=timeout)

    def env(self) -> dict[str, str]:
        """The environment of every flex process here."""
        return {**os.environ, "FLEX_STATE": str(self.state), "FLEX_INVENTORY": str(self.inventory)}

    def spec(self, name: str, text: str) -> str:
        """Write a job spec into tmp_path; its path."""
        path = self.path / f"{name}.yaml"
        path.write_text(text)
        return str(path)

    def allocations(self, job: str) -> list[dict[str, Any]]:
        """The job's allocations from `flex status --json`."""
        out = self.flex("status", "--json")
        return [a for a in json.loads(out.stdout)["allocations"] if a["job"] == job]

    def pids(self) -> dict[str, int | None]:
        """Allocation id -> the workload pid its node reports, from `flex probe --json`."""
        out = self.flex("probe", str(self.inventory), "--json")
        return {alloc_id: obs["pid"] for node in json.loads(out.stdout).values()
                for alloc_id, obs in (node.get("allocations") or {}).items() if obs["status"] == "running"}

    def lease_holder(self) -> Any:
        """The controller holding the state database's lease, or None."""
        with Store.open(self.state) as store:
            return store.lease_holder(time.time())


def local_inventory(tmp_path: Path) -> tuple[Path, tuple[Path, ...]]:
    """inventory/local.yaml written into tmp_path with its flex roots there and its playbooks in the
    repository; (its path, the hosts' flex roots)."""
    doc = yaml.safe_load((ROOT / "inventory" / "local.yaml").read_text())
    doc["all"]["vars"]["flex_playbooks"] = [str((ROOT / "inventory" / p).resolve())
                                           for p in doc["all"]["vars"]["flex_playbooks"]]
    hosts = doc["all"]["children"]["local"]["hosts"]
    for name, host in hosts.items():
        host["flex_root"] = str(tmp_path / name)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    return inventory, tuple(tmp_path / name for name in hosts)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    """inventory/local.yaml with its flex roots and playbooks moved into tmp_path and the repo."""
    inventory, roots = local_inventory(tmp_path)
    local = LocalFleet(tmp_path, inventory, tmp_path / "state.db", roots)
    try:
        yield local
    finally:
        kill_leftovers(local.roots)


def kill_leftovers(roots: tuple[Path, ...]) -> None:
    """SIGKILL every supervisor and workload group still recorded alive under the flex roots (a failed test)."""
    for state_file in (p for root in roots for p in root.glob("allocs/*/state.json")):
        state = json.loads(state_file.read_text())
        for pid, start, group in ((state.get("pid"), state.get("start_time"), state.get("pgid")),
                                  (state.get("supervisor_pid"), state.get("supervisor_start_time"), None)):
            if not (pid and is_same_process(pid, start)):
                continue
            try:
                if group:
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def is_same_process(pid: int, start_time: str | None) -> bool:
    """True when pid still runs and started at start_time (/proc/PID/stat field 22): not a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return start_time is not None and stat.rsplit(")", 1)[1].split()[19] == str(start_time)


def alive_workloads(roots: tuple[Path, ...]) -> list[str]:
    """Allocation ids whose recorded workload or supervisor process still runs."""
    alive = []
    for state_file in (p for root in roots for p in root.glob("allocs/*/state.json")):
        state = json.loads(state_file.read_text())
        if is_same_process(state.get("pid") or 0, state.get("start_time")) or \
                is_same_process(state.get("supervisor_pid") or 0, state.get("supervisor_start_time")):
            alive.append(state_file.parent.name)
    return alive


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    """result's stdout, after checking its exit code (the output is in the message when it is wrong)."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def test_push_then_logs_and_the_previous_runs_logs_after_a_restart(fleet: LocalFleet) -> None:
    ok(fleet.flex("push", str(fleet.inventory), fleet.spec("hello", SERVICE), "--timeout", "60"))
    [alloc] = [a["id"] for a in fleet.allocations("hello")]
    wait_for(lambda: "hello" in ok(fleet.flex("logs", "hello")), 5, "the first run's output")
    assert fleet.flex("logs", "nobody").returncode == 2

    ok(fleet.flex("restart", alloc))
    before = fleet.pids()[alloc]
    with running_controller(fleet):  # its next pass applies the restart
        wait_for(lambda: fleet.pids().get(alloc) not in (None, before), 10, "the restarted run")
        assert ok(fleet.flex("logs", alloc, "--previous")).splitlines() == ["hello"]
        ok(fleet.flex("stop", "hello"))
        wait_for(lambda: not alive_workloads(fleet.roots), 20, "the stopped job's workload to end")
    assert "hello" in ok(fleet.flex("logs", "hello")), "logs stay readable after the allocation stopped"


def test_the_controller_heals_a_killed_workload_and_stops_cleanly_on_sigterm(fleet: LocalFleet) -> None:
    ok(fleet.flex("push", str(fleet.inventory), fleet.spec("hello", SERVICE), "--timeout", "60"))
    with running_controller(fleet):
        [alloc] = [a["id"] for a in fleet.allocations("hello")]
        killed = fleet.pids()[alloc]
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: fleet.pids().get(alloc) not in (None, killed), 10, "the killed workload to run again")

        ok(fleet.flex("push", str(fleet.inventory), fleet.spec("countdown", BATCH), "--timeout", "60"))
        followed = ok(fleet.flex("logs", "countdown", "-f", timeout=30))
        assert followed.splitlines()[-3:] == ["start", "done", "-- ended: exit 0"]

        ok(fleet.flex("stop", "hello"))
        wait_for(lambda: not alive_workloads(fleet.roots), 20, "the stopped job's workload to end")
    assert fleet.lease_holder() is None
    log = (fleet.path / "controller.log").read_text()
    assert "controller for" in log and "SIGTERM: stopping" in log and "1 restart" in log


def test_on_call_reruns_a_batch_job_that_failed_for_good_and_it_completes(fleet: LocalFleet) -> None:
    """The 3 a.m. case: a batch job failed for good (its input was missing); once that is fixed, `flex
    restart ALLOC --wait` runs it again in place, once, and it completes."""
    marker = fleet.path / "input-ready"
    spec = fleet.spec("etl", f"""name: etl
kind: batch
command: [sh, -c, "test -f {marker} && echo loaded || {{ echo 'no input' >&2; exit 3; }}"]
resources: {{cpus: 0.1, memory: 32MiB}}
restart: {{attempts: 1, delay: 0.2s}}
""")
    pushed = fleet.flex("push", str(fleet.inventory), spec, "--timeout", "60")
    assert pushed.returncode == 1 and "failed" in pushed.stdout + pushed.stderr, pushed
    [alloc] = fleet.allocations("etl")
    assert alloc["observed_status"] == "failed" and alloc["exit_code"] == 3, alloc
    marker.write_text("ok\n")
    with running_controller(fleet):
        out = ok(fleet.flex("restart", alloc["id"], "--wait", "--timeout", "30"))
        assert "restarted" in out, out
        wait_for(lambda: fleet.allocations("etl")[0]["observed_status"] == "complete", 20, "the rerun to complete")
    [after] = fleet.allocations("etl")
    assert after["id"] == alloc["id"] and after["exit_code"] == 0 and "loaded" in ok(fleet.flex("logs", "etl"))
    events = ok(fleet.flex("events", "--json"))
    assert events.count("of a run that failed (exit 3)") == 1, events


@contextmanager
def running_controller(fleet: LocalFleet) -> Iterator[subprocess.Popen[str]]:
    """`flex controller` in the background while the block runs; SIGTERM then, and it must exit 0."""
    proc = start_controller(fleet)
    try:
        yield proc
    finally:
        code = stop_controller(proc)
    assert code == 0, (fleet.path / "controller.log").read_text()


def start_controller(fleet: LocalFleet) -> subprocess.Popen[str]:
    """`flex controller INVENTORY` in the background, once it holds the lease."""
    with (fleet.path / "controller.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deployer.cli", "controller", str(fleet.inventory)],
                                cwd=ROOT, env=fleet.env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: proc.poll() is not None or fleet.lease_holder(), 15, "the controller's lease")
    assert proc.poll() is None, (fleet.path / "controller.log").read_text()
    return proc


def stop_controller(proc: subprocess.Popen[str]) -> int:
    """SIGTERM the controller and wait for its exit status (SIGKILL after 30 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
