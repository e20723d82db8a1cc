"""FAULTS.md rows against the in-process controller on small real sshd fleets (and F26 on a fake clock).

Each test injects one fault (a partition, a reboot, a controller restart, an edited inventory, a
workload started by hand...) and asserts the row's "must hold" with evidence read from the hosts
(state.json: pid, start_time, launches, node wall-clock times; /proc: the copies that really run) and
from the store (allocations, events), never from timing alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployer.inventory import load_inventory
from deployer.models import (
    NODE_READY,
    NODE_UNREACHABLE,
    Allocation,
    AllocationObservation,
    Host,
    JobSpec,
    NodeState,
    ReschedulePolicy,
    Resources,
    RestartPolicy,
)
from deployer.nodeclient import Launch, NodeClient, allocation_spec
from deployer.plan import IGNORE, LOST, PLACE, RESTART, AllocTimers, ClusterSnapshot, DesiredJob
from deployer.reconcile import backoff, reconcile
from deployer.reconcile_jobs import allocation_version
from deployer.spec import load_job
from deployer.store import Store
from deployer.transport import Pool
from tests.integration.controllerkit import (
    FAST,
    RunningController,
    alloc_state,
    copies,
    submit,
    write_spec,
)
from tests.integration.transportkit import fast_settings

ROOT = Path(__file__).resolve().parents[2]
SLEEP = '[sleep, "3600"]'
# what a controller must never do to a healthy or merely cut-off allocation
DISRUPTIVE = {"restarting", "restarted", "placed", "started", "stopping", "stopped", "lost", "failed"}


def service(*, count: int = 1, reschedule: str = "{grace: 3s}", command: str = SLEEP,
            restart: str = "{attempts: 3, delay: 0.2s}") -> str:
    """A small service spec body (see write_spec)."""
    return (f"kind: service\ncount: {count}\ncommand: {command}\nresources: {{cpus: 0.1, memory: 16MiB}}\n"
            f"restart: {restart}\nreschedule: {reschedule}\nstop: {{timeout: 1s}}\n")


def _inventory(fleet: Any, tmp_path: Path, name: str = "inventory.yaml", hosts: list[str] | None = None) -> Path:
    return fleet.write_inventory(tmp_path / name, hosts=hosts)


def _events(store: Store, after: int = 0) -> list[Any]:
    return store.events(after_seq=after, limit=100_000)


def _record(store: Store, alloc_id: str) -> Allocation | None:
    return next((a for a in store.allocations() if a.id == alloc_id), None)


def _observed(store: Store, alloc_id: str) -> str | None:
    record = _record(store, alloc_id)
    return record.observed_status if record else None


def _identity(fleet: Any, alloc: Allocation) -> tuple[Any, ...]:
    """What proves a workload is the same process: node, pid, its start time, launches, boot."""
    state = alloc_state(fleet, alloc.node, alloc.id)
    return alloc.node, state["pid"], state["start_time"], state["restarts"], state["boot_id"]


def _one_copy_each(fleet: Any, prefix: str) -> dict[str, list[str]]:
    where = copies(fleet, prefix)
    assert all(len(hosts) == 1 for hosts in where.values()), where
    return where


# --- F3 --------------------------------------------------------------------------------------------


async def test_f03_crash_loop_is_bounded_and_shown_as_crash_looping(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    inventory, state = _inventory(fleet, tmp_path), tmp_path / "state.db"
    spec = service(command='[sh, -c, "exit 1"]', restart="{attempts: 3, delay: 0.2s}",
                   reschedule="{grace: 3s, delay: 120s}")
    async with RunningController(inventory, state, tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "crash", spec))
        first = (await rc.until(lambda: rc.store.allocations(job="crash"), 10, "crash placed"))[0]
        await rc.until(lambda: _observed(rc.store, first.id) == "failed", 30, "the crash loop given up")
        failed_at = rc.controller.passes
        await rc.until(lambda: rc.controller.passes >= failed_at + 10, 20, "ten more passes")
        launches = {a.id: alloc_state(fleet, a.node, a.id)["restarts"] for a in rc.store.allocations(job="crash")
                    if (fleet.host(a.node).flex_root_path / "allocs" / a.id / "state.json").exists()}
        assert launches[first.id] == 3 + 1, launches  # the first launch plus `attempts` restarts, no more
        assert all(n <= 3 + 1 for n in launches.values()), launches
        messages = [e.message for e in _events(rc.store) if e.alloc == first.id]
        assert any("crash-looping" in m for m in messages), messages
        assert any("restart budget spent" in m for m in messages), messages
        assert not copies(fleet, "crash-"), "an exit-1 workload never stays up"
        status = subprocess.run([sys.executable, "-m", "deployer.cli", "status", str(inventory), "--state", str(state)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "crash-looping" in status.stdout or "failed" in status.stdout, status.stdout


# --- F4 --------------------------------------------------------------------------------------------


async def test_f04_short_partition_adopts_the_same_pids(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service(count=2, reschedule="{grace: 6s}")))
        await rc.until(lambda: len(rc.running("web")) == 2, 30, "web running")
        before = {a.id: _identity(fleet, a) for a in rc.running("web")}
        cut = rc.running("web")[0]
        seq = rc.store.last_event_seq()
        host = fleet.host(cut.node)
        host.partition()
        started = time.monotonic()
        try:
            await rc.until(lambda: _observed(rc.store, cut.id) == "unknown", 5, "the cut allocation unknown")
            await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # the fault lasts ~1.5 s
        finally:
            host.heal()
        assert time.monotonic() - started < 6.0, "the partition outlasted the grace: the test proves nothing"
        await rc.until(lambda: _observed(rc.store, cut.id) == "running" and len(rc.running("web")) == 2, 30,
                       "the cut allocation adopted after the heal")
        after = {a.id: _identity(fleet, a) for a in rc.running("web")}
        assert after == before, "same allocations, same pids, same start times, no launch"
        assert {a.id for a in rc.store.allocations(job="web")} == set(before), "nothing placed elsewhere"
        events = [e for e in _events(rc.store, seq) if e.job == "web"]
        marks = [e.kind for e in events if e.alloc == cut.id and e.kind != "waiting"]
        assert marks == ["unknown", "running"], events
        assert not [e for e in events if e.kind in DISRUPTIVE], events
        assert _one_copy_each(fleet, "web-") == {a: [n[0]] for a, n in before.items()}


# --- F6 --------------------------------------------------------------------------------------------


async def test_f06_long_partition_with_policy_wait_places_nothing_elsewhere(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service(reschedule="{policy: wait, grace: 2s}")))
        await rc.until(lambda: len(rc.running("web")) == 1, 30, "web running")
        alloc = rc.running("web")[0]
        before = _identity(fleet, alloc)
        seq = rc.store.last_event_seq()
        host = fleet.host(alloc.node)
        host.partition()
        started = time.monotonic()
        try:
            await rc.until(lambda: any("policy wait" in e.message for e in _events(rc.store, seq)), 15,
                           "the grace passed and policy wait holds the allocation")
            while time.monotonic() - started < 6.0:  # the fault lasts ~6 s, three times the grace
                assert [a.id for a in rc.store.allocations(job="web")] == [alloc.id], "placed elsewhere"
                where = copies(fleet, "web-")
                assert where == {alloc.id: [alloc.node]}, f"a copy runs on a reachable host: {where}"
                await asyncio.sleep(0.3)
            assert _observed(rc.store, alloc.id) == "unknown"
        finally:
            host.heal()
        await rc.until(lambda: _observed(rc.store, alloc.id) == "running", 30, "adopted after the heal")
        assert _identity(fleet, alloc) == before, "the same pid adopted"
        assert [a.id for a in rc.store.allocations(job="web")] == [alloc.id]
        assert not [e for e in _events(rc.store, seq) if e.kind in DISRUPTIVE]
        assert _one_copy_each(fleet, "web-") == {alloc.id: [alloc.node]}


# --- F7 --------------------------------------------------------------------------------------------


async def test_f07_lease_fencing_stops_the_cut_copy_before_its_replacement_starts(make_fleet: Any,
                                                                                   tmp_path: Path) -> None:
    fleet = make_fleet(3)
    settings = replace(FAST, lease_ttl=3.0)
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path, settings) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service(reschedule="{grace: 3s}")))
        await rc.until(lambda: len(rc.running("web")) == 1, 30, "web running")
        old = rc.running("web")[0]
        await rc.until(lambda: (fleet.host(old.node).flex_root_path / "allocs" / old.id / "lease").exists(), 10,
                       "the lease renewed once")
        host = fleet.host(old.node)
        host.partition()
        cut_at = time.time()
        try:
            new = (await rc.until(lambda: [a for a in rc.running("web") if a.id != old.id], 30,
                                  "a replacement running elsewhere"))[0]
            fenced = await rc.until(lambda: (s := alloc_state(fleet, old.node, old.id))["status"] == "fenced" and s,
                                    10, "the cut copy fenced itself")
            assert not copies(fleet, old.id), "the fenced copy still runs on its cut-off node"
            lease = fleet.host(old.node).flex_root_path / "allocs" / old.id / "lease"
            renewed_at = float(lease.read_text().split()[0])  # the node's wall clock at the last renewal
        finally:
            host.heal()
        replacement = alloc_state(fleet, new.node, new.id)
        assert new.node != old.node
        assert fenced["finished_at"] is not None and replacement["started_at"] is not None
        assert fenced["finished_at"] < replacement["started_at"], (fenced, replacement)  # node clocks: no overlap
        assert fenced["finished_at"] - renewed_at >= settings.lease_ttl - 0.01, "fenced before the lease ran out"
        assert replacement["started_at"] - renewed_at >= settings.lease_ttl, "replacement before the lease ran out"
        assert replacement["started_at"] - cut_at >= settings.lease_ttl, "replacement before the TTL ran out"
        await rc.until(lambda: _observed(rc.store, old.id) in ("stopped", "lost") and rc.controller.nodes[
            old.node].status == NODE_READY, 30, "the healed node seen again")
        assert _one_copy_each(fleet, "web-") == {new.id: [new.node]}
        assert alloc_state(fleet, old.node, old.id)["restarts"] == 1, "the fenced copy never ran again"


# --- F9 --------------------------------------------------------------------------------------------


async def test_f09_rebooted_node_restarts_its_allocations_at_once_in_place(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service(count=3, reschedule="{grace: 30s}")))
        await rc.until(lambda: len(rc.running("web")) == 3, 30, "web running")
        victim = rc.running("web")[0]
        on_victim = [a for a in rc.running("web") if a.node == victim.node]
        before = {a.id: alloc_state(fleet, a.node, a.id) for a in on_victim}
        host = fleet.host(victim.node)
        old_boot = host.boot_id
        host.reboot()
        rebooted_at = time.monotonic()
        assert host.boot_id != old_boot and not copies(fleet, victim.id)

        def again() -> bool:
            states = {a.id: alloc_state(fleet, a.node, a.id) for a in on_victim}
            return all(s["boot_id"] == host.boot_id and s["status"] == "running" for s in states.values()) and \
                {a.id for a in rc.running("web")} >= set(before)

        await rc.until(again, 25, "the rebooted node's allocations running again")
        elapsed = time.monotonic() - rebooted_at
        assert elapsed < 15, f"took {elapsed:.1f}s: waited for the 30 s grace instead of restarting at once"
        assert len(rc.store.allocations(job="web")) == 3, "nothing placed elsewhere: started by allocation id"
        for alloc in on_victim:
            state = alloc_state(fleet, alloc.node, alloc.id)
            assert state["restarts"] == before[alloc.id]["restarts"] + 1
            assert state["pid"] != before[alloc.id]["pid"] or state["start_time"] != before[alloc.id]["start_time"]
        assert _one_copy_each(fleet, "web-") == {a.id: [a.node] for a in rc.running("web")}


# --- F11 -------------------------------------------------------------------------------------------


async def test_f11_controller_restart_on_a_healthy_fleet_restarts_nothing(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    inventory, state = _inventory(fleet, tmp_path), tmp_path / "state.db"
    async with RunningController(inventory, state, tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service(count=3)))
        await rc.until(lambda: len(rc.running("web")) == 3, 30, "web running")
        before = {a.id: _identity(fleet, a) for a in rc.running("web")}
    with Store.open(state) as store:
        seq = store.last_event_seq()
    async with RunningController(inventory, state, tmp_path) as rc:
        await rc.until(lambda: rc.controller.passes >= 15, 30, "fifteen passes of the new controller")
        assert {a.id for a in rc.running("web")} == set(before)
        after = {a.id: _identity(fleet, a) for a in rc.running("web")}
        events = _events(rc.store, seq)
    assert after == before, "pids, start times and launch counts unchanged"
    assert not [e for e in events if e.kind in DISRUPTIVE], events
    assert _one_copy_each(fleet, "web-") == {a: [i[0]] for a, i in before.items()}


# --- F12 -------------------------------------------------------------------------------------------


async def test_f12_connection_cut_mid_launch_leaves_one_copy(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    async with RunningController(_inventory(fleet, tmp_path), tmp_path / "state.db", tmp_path) as rc:
        await rc.controller.wait_first_probes(10)
        submit(rc.store, write_spec(tmp_path, "web", service(reschedule="{grace: 10s}")))
        deadline = time.monotonic() + 10
        while not (placed := [a for a in rc.store.allocations(job="web") if a.observed_status == "pending"]):
            assert time.monotonic() < deadline, "no placement committed"
            await asyncio.sleep(0.005)
        alloc = placed[0]
        host = fleet.host(alloc.node)
        host.partition()  # the launch is in flight, or about to be sent
        try:
            await asyncio.sleep(2.0)  # the fault lasts ~2 s, well within the grace
        finally:
            host.heal()
        await rc.until(lambda: _observed(rc.store, alloc.id) == "running", 40, "the allocation running after the heal")
        settled = rc.controller.passes
        await rc.until(lambda: rc.controller.passes >= settled + 10, 20, "ten more passes")
        assert [a.id for a in rc.store.allocations(job="web")] == [alloc.id], "a second allocation for index 0"
        assert _one_copy_each(fleet, "web-") == {alloc.id: [alloc.node]}
        assert alloc_state(fleet, alloc.node, alloc.id)["restarts"] == 1, "launched twice on its node"
        kinds = [e.kind for e in _events(rc.store) if e.alloc == alloc.id]
        assert "started" in kinds and "restarting" not in kinds, f"asked again by id, not restarted: {kinds}"
        assert _record(rc.store, alloc.id).restarts == 0  # type: ignore[union-attr]


async def test_f12_launch_cut_after_the_files_were_pushed_is_started_once(make_fleet: Any, tmp_path: Path) -> None:
    """The cut landed between the push of the allocation's files and the `start` verb: the node has the
    directory but never ran it (its view: pending). The controller must start it, once."""
    fleet = make_fleet(3)
    inventory, state = _inventory(fleet, tmp_path), tmp_path / "state.db"
    path = write_spec(tmp_path, "web", service(reschedule="{grace: 10s}"))
    spec = load_job(path)
    alloc = Allocation("web-0-c0ffee", "web", "h02", job_version=allocation_version(spec), cpus=spec.resources.cpus,
                       memory=spec.resources.memory, created_at=time.time())
    with Store.open(state) as store:  # what the controller committed before the launch was sent
        submit(store, path)
        store.save_allocation(alloc, launched_generation=0)
    alloc_dir = fleet.host("h02").flex_root_path / "allocs" / alloc.id
    alloc_dir.mkdir(parents=True)  # what the push left: spec.json, no state.json
    (alloc_dir / "spec.json").write_text(json.dumps(allocation_spec(Launch(alloc.id, spec), "h02"), sort_keys=True))
    async with RunningController(inventory, state, tmp_path) as rc:
        await rc.until(lambda: _observed(rc.store, alloc.id) == "running", 20, "the half-launched allocation running")
        settled = rc.controller.passes
        await rc.until(lambda: rc.controller.passes >= settled + 10, 20, "ten more passes")
        assert [a.id for a in rc.store.allocations(job="web")] == [alloc.id], "a second allocation for index 0"
        kinds = [e.kind for e in _events(rc.store) if e.alloc == alloc.id]
        assert "started" in kinds and "restarted" not in kinds, kinds
        assert _record(rc.store, alloc.id).restarts == 0  # type: ignore[union-attr]
    assert _one_copy_each(fleet, "web-") == {alloc.id: ["h02"]}
    assert alloc_state(fleet, "h02", alloc.id)["restarts"] == 1, "launched twice on its node"


# --- F27 -------------------------------------------------------------------------------------------


async def test_f27_node_removed_from_the_inventory_is_drained_not_lost(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    state = tmp_path / "state.db"
    async with RunningController(_inventory(fleet, tmp_path), state, tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "web", service()))
        await rc.until(lambda: len(rc.running("web")) == 1, 30, "web running")
        old = rc.running("web")[0]
        seq = rc.store.last_event_seq()
    kept = [h.name for h in fleet.hosts if h.name != old.node]
    smaller = _inventory(fleet, tmp_path, "smaller.yaml", hosts=kept)
    async with RunningController(smaller, state, tmp_path) as rc:
        new = (await rc.until(lambda: [a for a in rc.running("web") if a.id != old.id], 30,
                              "a replacement running on a host still in the inventory"))[0]
        await rc.until(lambda: _observed(rc.store, old.id) == "stopped" and not copies(fleet, old.id), 30,
                       "the old copy stopped")
        assert new.node in kept
        events = [e for e in _events(rc.store, seq) if e.alloc == old.id]
        assert not [e for e in events if e.kind == "lost"], events
        assert any(e.kind == "stopping" and "migrated" in e.message for e in events), events
        old_state, new_state = alloc_state(fleet, old.node, old.id), alloc_state(fleet, new.node, new.id)
        assert new_state["started_at"] < old_state["finished_at"], "stopped before its replacement ran"
        assert _record(rc.store, old.id).desired_status == "stop"  # type: ignore[union-attr]
    assert _one_copy_each(fleet, "web-") == {new.id: [new.node]}


# --- F28 -------------------------------------------------------------------------------------------


async def test_f28_orphan_workload_is_reported_and_stopped(make_fleet: Any, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    inventory = _inventory(fleet, tmp_path)
    hosts = {h.name: h for h in load_inventory(inventory).hosts}
    ghost = "ghost-0-0a0b0c"
    pool = Pool(list(hosts.values()), fast_settings(tmp_path, keepalive_interval=0.5, keepalive_count=2))
    try:
        client = NodeClient(pool, hosts["h02"])
        await client.install()
        doc = await client.launch(Launch(ghost, load_job(write_spec(tmp_path, "ghost", service()))))
        assert doc.get("ok") and not doc.get("already_running"), doc
    finally:
        await pool.close()
    assert copies(fleet, "ghost-") == {ghost: ["h02"]}
    async with RunningController(inventory, tmp_path / "state.db", tmp_path) as rc:
        await rc.until(lambda: [e for e in _events(rc.store) if e.kind == "orphan" and ghost in e.message], 20,
                       "the orphan reported")
        await rc.until(lambda: not copies(fleet, "ghost-"), 20, "the orphan stopped")
        orphan_events = [e for e in _events(rc.store) if e.kind == "orphan"]
        assert all(e.alloc == ghost and e.node == "h02" for e in orphan_events), orphan_events
        assert not rc.store.allocations(), "the orphan was adopted as an allocation"
    assert alloc_state(fleet, "h02", ghost)["status"] == "stopped"
    assert alloc_state(fleet, "h02", ghost)["restarts"] == 1, "started again after being stopped"


# --- F26 (no fleet: a fake clock) ------------------------------------------------------------------

GIB = 1024**3
HOUR = 3600.0
WALL = 1_700_000_000.0


def _spec() -> JobSpec:
    return JobSpec("web", ("run",), kind="service", count=3, resources=Resources(cpus=1, memory=GIB),
                   restart=RestartPolicy(attempts=3, delay=1.0), reschedule=ReschedulePolicy(grace=10.0))


def _alloc(spec: JobSpec, alloc_id: str, node: str, index: int, observed: str) -> Allocation:
    return Allocation(alloc_id, spec.name, node, index=index, job_version=allocation_version(spec), cpus=1,
                      memory=GIB, observed_status=observed, created_at=WALL - 600)


def _snapshot(spec: JobSpec, now: float, wall: float, cut_at: float, exit_seen: float) -> ClusterSnapshot:
    """n0 runs web-0; n1 (web-1) is cut off since cut_at; web-2 on n2 exited and waits for its backoff."""
    a, b, c = (_alloc(spec, "web-0-aaaaaa", "n0", 0, "running"), _alloc(spec, "web-1-bbbbbb", "n1", 1, "unknown"),
               _alloc(spec, "web-2-cccccc", "n2", 2, "exited"))

    def node(name: str, *obs: AllocationObservation, status: str = NODE_READY, since: float | None = None) -> NodeState:
        return NodeState(name, status=status, cpus=8, memory_total=32 * GIB, gpus_known=True, observed_at=now,
                         unreachable_since=since, allocations={o.alloc_id: o for o in obs})

    nodes = (node("n0", AllocationObservation(a.id, "running", is_alive=True, pid=10, launches=1)),
             node("n1", status=NODE_UNREACHABLE, since=cut_at),
             node("n2", AllocationObservation(c.id, "exited", exit_code=3, launches=2)), node("n3"))
    timers = {a.id: AllocTimers(running_since=now - 300), c.id: AllocTimers(exit_seen_at=exit_seen,
                                                                            restart_times=(exit_seen - 5,))}
    return ClusterSnapshot(hosts={n.name: Host(n.name, address=f"10.0.0.{i + 1}") for i, n in enumerate(nodes)},
                           nodes={n.name: n for n in nodes}, allocations=(a, b, c), timers=timers, wall=wall,
                           salt="f26")


def test_f26_wall_clock_steps_evict_nothing_and_never_stall_a_backoff() -> None:
    spec = _spec()
    desired = {"web": DesiredJob(spec, submitted_at=WALL - 900)}
    start = 5_000.0  # monotonic
    cut_at, exit_seen = start - 2.0, start
    delay = backoff(spec.restart, 1, "web-2-cccccc")
    steps = [(0.0, 0.0), (0.5, +6 * HOUR), (1.0, -6 * HOUR), (1.5, +48 * HOUR), (2.0, -30 * 24 * HOUR),
             (2.5, +3 * HOUR), (3.0, -3 * HOUR)]
    restarted_at = None
    for elapsed, jump in steps:
        now = start + elapsed
        plan = reconcile(desired, _snapshot(spec, now, WALL + elapsed + jump, cut_at, exit_seen), now)
        steady = reconcile(desired, _snapshot(spec, now, WALL + elapsed, cut_at, exit_seen), now)
        assert [(i.action, i.alloc.id, i.reason) for i in plan.items] == \
            [(i.action, i.alloc.id, i.reason) for i in steady.items], f"the wall clock changed the plan at +{elapsed}s"
        assert not plan.bucket(LOST) and not plan.bucket(PLACE), f"evicted at +{elapsed}s (wall {jump:+.0f}s)"
        assert not [m for m, _ in plan.marks if m.observed_status in ("lost", "failed")], plan.marks
        restarts = [i.alloc.id for i in plan.bucket(RESTART)]
        assert "web-0-aaaaaa" not in restarts and "web-1-bbbbbb" not in restarts
        if restarts == ["web-2-cccccc"] and restarted_at is None:
            restarted_at = elapsed
        elif elapsed < delay:
            assert any(i.action == IGNORE and i.alloc.id == "web-2-cccccc" for i in plan.items)
    assert restarted_at is not None and delay <= restarted_at < delay + 0.5, (delay, restarted_at)

