"""The controller on 6 real sshd hosts (2 with fake H100s): push converges, and it heals.

Issue 4's must-show: a service (count 3, http health), a batch job, a cron job and a GPU service are
placed respecting constraints and GPUs; a SIGKILLed workload runs again on its node; a dead host's
work is replaced after the grace; a partition heals to one copy; a controller SIGKILLed during a push
leaves no duplicate; a restart asked for while no controller runs is applied once. What runs is read
from each host's /proc, never from flex's own records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.convergence import convergence
from deployer.store import Store
from tests.fakenvml.plugin import FakeNvml
from tests.integration.controllerkit import (
    RunningController,
    alloc_state,
    copies,
    kill_workloads,
    live_processes,
    submit,
    write_spec,
)

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "playbooks" / "files" / "webapp" / "server.py"
NVML_CONF = "nvml.conf"
GPU_HOSTS = ("h01", "h02")

WEB = f"""\
kind: service
count: 3
command: [python3, server.py]
files:
  - src: {SERVER}
ports:
  - name: http
health: {{http: /healthz, interval: 1s, timeout: 1s, failures: 2, grace: 1s}}
placement:
  constraints:
    - {{attribute: host, not_in: [h06]}}
resources: {{cpus: 0.1, memory: 32MiB}}
restart: {{attempts: 20, delay: 0.2s}}
reschedule: {{grace: 3s}}
stop: {{timeout: 2s}}
"""
BATCH = """\
kind: batch
command: [python3, -c, "print('batch done')"]
resources: {cpus: 0.1, memory: 16MiB}
"""
CRON = """\
kind: batch
schedule: {cron: "* * * * *"}
command: [python3, -c, "print('tick')"]
resources: {cpus: 0.1, memory: 16MiB}
"""
GPU = """\
kind: service
count: 5
command: [python3, -c, "import os, time; open('cuda.txt', 'w').write(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(3600)"]
resources: {cpus: 0.1, memory: 16MiB, gpus: 1, gpu_model: "*H100*"}
"""


@pytest.fixture(scope="module")
def gpu6(fleet_available: None, fake_nvml: FakeNvml) -> Iterator[Any]:
    """6 hosts; h01 and h02 see two fake H100s each, the others have no NVML library."""
    from tests.fleet.netns import DEFAULT_FLEX_ROOT
    from tests.fleet.plugin import _up

    config = f"{DEFAULT_FLEX_ROOT}/{NVML_CONF}"
    fleet = _up(6, host_env=lambda name: fake_nvml.env(config) if name in GPU_HOSTS else fake_nvml.missing_env())
    try:
        for name in GPU_HOSTS:
            fake_nvml.write_config(fleet.host(name).flex_root_path / NVML_CONF, 2, host=name)
        yield fleet
    finally:
        fleet.down()


@pytest.fixture
def fresh(gpu6: Any) -> Any:
    """The module's fleet with every host up and healed, and no workload left from an earlier test."""
    for host in gpu6.hosts:
        if host.partitioned:
            host.heal()
        if not host.alive:
            host.start()
    for host in gpu6.hosts:
        kill_workloads(host)
    return gpu6


def _inventory(fleet: Any, tmp_path: Path) -> Path:
    return fleet.write_inventory(tmp_path / "inventory.yaml")


async def test_push_places_by_constraints_and_gpus_and_converges_healthy(fresh: Any, tmp_path: Path) -> None:
    fleet = fresh
    inventory = _inventory(fleet, tmp_path)
    async with RunningController(inventory, tmp_path / "state.db", tmp_path) as rc:
        for name, body in (("web", WEB), ("etl", BATCH), ("gpu", GPU)):
            submit(rc.store, write_spec(tmp_path, name, body))
        submit(rc.store, write_spec(tmp_path, "tick", CRON), submitted_at=time.time() - 61)
        await rc.until(lambda: len(rc.running("web")) == 3, 40, "web running and healthy")
        await rc.until(lambda: [a.observed_status for a in rc.store.allocations(job="etl")] == ["complete"], 20,
                       "etl complete")
        await rc.until(lambda: rc.store.allocations(job="tick"), 10, "the cron job fired")
        standing = await rc.until(lambda: (c := convergence(rc.store, ["gpu"]))["gpu"].detail and c, 10, "gpu")
        assert not standing["gpu"].is_converged and "3 nodes" not in standing["gpu"].detail
        pending = rc.store.job_statuses()["gpu"]
        assert pending and "1 of 5 allocations not placed" in pending and "4 have GPUs unknown" in pending, pending

        web = rc.running("web")
        assert {a.node for a in web} <= {"h01", "h02", "h03", "h04", "h05"} and len({a.index for a in web}) == 3
        await rc.until(lambda: len(rc.running("gpu")) == 4, 20, "4 gpu allocations running")
        gpu = rc.running("gpu")
        assert sorted((a.node, a.gpus) for a in gpu) == [("h01", (0,)), ("h01", (1,)), ("h02", (0,)), ("h02", (1,))]
        for alloc in gpu:
            assert alloc.node in GPU_HOSTS and len(alloc.gpus) == 1
            cuda = (fleet.host(alloc.node).flex_root_path / "allocs" / alloc.id / "cuda.txt").read_text()
            assert cuda == str(alloc.gpus[0])
        running = copies(fleet, "web-")
        assert sorted(running) == sorted(a.id for a in web) and all(len(h) == 1 for h in running.values())


async def test_sigkill_of_a_workload_runs_it_again_on_the_same_node(fresh: Any, tmp_path: Path) -> None:
    fleet = fresh
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", WEB))
        await rc.until(lambda: len(rc.running("web")) == 3, 40, "web running")
        victim = rc.running("web")[0]
        before = alloc_state(fleet, victim.node, victim.id)
        fleet.host(victim.node).exec(["kill", "-9", str(before["pid"])], check=True)
        killed_at = time.monotonic()

        def again() -> bool:
            state = alloc_state(fleet, victim.node, victim.id)
            return state.get("pid") not in (None, before["pid"]) and state.get("status") == "running"

        await rc.until(again, 10, "the killed workload running again")
        elapsed = time.monotonic() - killed_at
        after = copies(fleet, victim.id)
        assert after == {victim.id: [victim.node]}, after
        assert elapsed < 5, f"crash to running again took {elapsed:.2f}s"
        await rc.until(lambda: {"exited", "restarted"} <= {e.kind for e in rc.store.events(job="web")
                                                          if e.alloc == victim.id}, 5, "exit and restart recorded")


async def test_f08_dead_host_is_replaced_after_the_grace(fresh: Any, tmp_path: Path) -> None:
    fleet = fresh
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", WEB))
        await rc.until(lambda: len(rc.running("web")) == 3, 40, "web running")
        dead = rc.running("web")[0]
        fleet.host(dead.node).kill()
        lost_at = time.monotonic()
        await rc.until(lambda: len(rc.running("web")) == 3 and dead.id not in {a.id for a in rc.running("web")},
                       30, "a replacement running elsewhere")
        assert 3 <= time.monotonic() - lost_at < 20
        assert rc.store.allocations(job="web") and dead.node not in {a.node for a in rc.running("web")}


async def test_f05_long_partition_reschedules_and_heals_to_one_copy_logging_the_overlap(fresh: Any,
                                                                                       tmp_path: Path) -> None:
    fleet = fresh
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", WEB))
        await rc.until(lambda: len(rc.running("web")) == 3, 40, "web running")
        cut = next(a for a in rc.running("web"))
        fleet.host(cut.node).partition()
        await rc.until(lambda: cut.id not in {a.id for a in rc.running("web")} and len(rc.running("web")) == 3,
                       30, "the partitioned copy replaced")
        assert cut.id in copies(fleet, "web-"), "the partitioned copy keeps running while cut off (no lease)"
        twin = next(a for a in rc.running("web") if a.index == cut.index)
        assert twin.node != cut.node, "the replacement runs elsewhere"
        fleet.host(cut.node).heal()
        await rc.until(lambda: cut.id not in copies(fleet, "web-"), 30, "the old copy stopped after the heal")
        where = copies(fleet, "web-")
        assert len(where) == 3 and all(len(h) == 1 for h in where.values()), where
        assert {a.id for a in rc.running("web")} == set(where)
        await rc.until(lambda: "stopped" in {e.kind for e in rc.store.events(job="web") if e.alloc == cut.id}, 10,
                       "the old copy's stop recorded")
        events = [e for e in rc.store.events(job="web", limit=100_000) if e.alloc == cut.id]
        kinds = [e.kind for e in events]
        assert "lost" in kinds and kinds.index("lost") < kinds.index("stopping") < kinds.index("stopped"), kinds
        overlap = next(e.message for e in events if e.kind == "stopping")
        assert "came back" in overlap and f"overlap with {twin.id} on {twin.node}" in overlap, overlap


def _flex(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "deployer.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_f10_controller_sigkilled_mid_push_leaves_no_duplicate_and_a_later_push_converges(fresh: Any,
                                                                                        tmp_path: Path) -> None:
    fleet = fresh
    inventory = _inventory(fleet, tmp_path)
    spec = write_spec(tmp_path, "web", WEB)
    env = {**os.environ, "FLEX_STATE": str(tmp_path / "state.db"), "FLEX_INSECURE_HOST_KEYS": "0"}
    for delay in (0.8, 1.6):
        push = _flex("push", str(inventory), str(spec), "--timeout", "60", env=env)
        time.sleep(delay)
        push.send_signal(signal.SIGKILL)
        push.wait(10)
    final = _flex("push", str(inventory), str(spec), "--timeout", "60", env=env)
    out, _ = final.communicate(timeout=90)
    assert final.returncode == 0, out
    where = copies(fleet, "web-")
    with Store.open(tmp_path / "state.db") as store:
        wanted = {a.id for a in store.allocations(job="web") if a.desired_status == "run"}
    assert set(where) == wanted and len(wanted) == 3 and all(len(h) == 1 for h in where.values()), (where, out)
    again = _flex("push", str(inventory), str(spec), "--timeout", "60", env=env)
    out, _ = again.communicate(timeout=90)
    assert again.returncode == 0 and "no changes" in out, out
    assert copies(fleet, "web-") == where


async def test_f25_restart_asked_while_no_controller_runs_is_applied_once(fresh: Any, tmp_path: Path) -> None:
    fleet = fresh
    inventory, state = _inventory(fleet, tmp_path), tmp_path / "state.db"
    async with RunningController(inventory, state, tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", WEB))
        await rc.until(lambda: len(rc.running("web")) == 3, 40, "web running")
        first = {a.id: alloc_state(fleet, a.node, a.id) for a in rc.running("web")}
    with Store.open(state) as store:
        for _ in range(3):  # three requests before any pass: coalesced into one restart
            store.request_restart("web", "oncall@test")
    async with RunningController(inventory, state, tmp_path) as rc:
        await rc.until(lambda: not rc.store.pending_intents() and len(rc.running("web")) == 3, 40,
                       "the restart applied")
        await rc.until(lambda: all(alloc_state(fleet, a.node, a.id)["restarts"] == first[a.id]["restarts"] + 1
                                   for a in rc.running("web")), 20, "each allocation launched exactly once more")
        applied = [i for i in rc.store.intents() if i.kind == "restart"]
        assert len(applied) == 3 and all(i.applied_at is not None for i in applied)
    live = live_processes(fleet)
    assert sum(len(p) for allocs in live.values() for a, p in allocs.items() if a.startswith("web-")) == 3
    assert json.dumps(first)  # the first run's states were readable
