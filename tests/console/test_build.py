"""console/build.py: the console's rows from a state database filled with records, at a fixed clock.

One fleet is written into a tmp Store the way the controller writes it (node_record(NodeState) as a
node's last state, allocations, flags, events, cron times); each table row names a row of the model
and the fields it must show.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from console.build import EVENT_ROWS, HISTORY_LENGTH, GpuHistory, build_model
from console.model import ConsoleModel
from deployer.controller import node_record
from deployer.models import (
    Allocation,
    GpuProcess,
    GpuState,
    Host,
    JobSpec,
    NodeState,
    Resources,
    Schedule,
)
from deployer.store import Store

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_000_000.0
GIB = 1024**3
HOSTS = {"gpu1": Host("gpu1", "10.0.0.1", datacenter="dc1", rack="r1"),
         "cpu1": Host("cpu1", "10.0.0.2", datacenter="dc1", rack="r2"),
         "fresh": Host("fresh", "10.0.0.9", datacenter="dc2")}


def gpu(index: int, utilization: float | None, *processes: GpuProcess, **kw: Any) -> GpuState:
    return GpuState(index, uuid=f"GPU-{index}", name="NVIDIA H100 80GB HBM3", utilization=utilization,
                    memory_used=10 * GIB, memory_total=80 * GIB, temperature=45.0, power_draw=300.0,
                    power_limit=700.0, ecc_uncorrected=0, processes=processes, **kw)


def gpu_node(observed_at: float, utilization: float = 87.0) -> NodeState:
    return NodeState(
        "gpu1", status="ready", observed_at=observed_at, cpus=32, load=(3.5, 2.0, 1.0), memory_total=256 * GIB,
        memory_available=200 * GIB, gpus_known=True, rtt=0.012, gpus=(
            gpu(0, utilization, GpuProcess(100, 5 * GIB, "train-0"), GpuProcess(666, GIB, None)),
            gpu(1, 12.0, GpuProcess(101, 5 * GIB, "train-0")),
            gpu(2, None, is_healthy=False, error="XID 79: fallen off the bus"),
            gpu(3, 0.0)))


def save_state(store: Store, state: NodeState, last_seen: float) -> None:
    store.save_node(state.name, node_record(state), last_seen, boot_id="boot-1")


def fill(store: Store) -> None:
    """The fleet every row of TABLE is read from."""
    store.put_job(JobSpec("train", ("python3", "train.py"), resources=Resources(cpus=4, gpus=2)), "", "train.yaml")
    store.put_job(JobSpec("web", ("python3", "app.py"), count=2, resources=Resources(cpus=0.5)), "", "web.yaml")
    store.put_job(JobSpec("report", ("true",), kind="batch", schedule=Schedule("*/5 * * * *")), "", "report.yaml")
    store.put_job(JobSpec("old", ("true",)), "", "old.yaml")
    store.set_job_desired("old", "stop")
    with store.transaction() as tx:
        tx.save_allocations([
            Allocation("train-0", "train", "gpu1", cpus=4, memory=GIB, gpus=(0, 1), observed_status="running",
                       restarts=1, created_at=NOW - 100),
            Allocation("web-0", "web", "cpu1", cpus=0.5, ports={"http": 8080}, observed_status="running",
                       created_at=NOW - 50),
            Allocation("web-1", "web", "cpu1", index=1, cpus=0.5, observed_status="failed", exit_code=3,
                       restarts=2, created_at=NOW - 40),
            Allocation("old-0", "old", "cpu1", gpus=(), desired_status="stop", observed_status="stopped",
                       created_at=NOW - 500),
        ])
        tx.set_job_status("web", "1 of 2 allocations not placed: 0/3 nodes fit", NOW, next_fire=None)
        tx.set_job_status("report", None, NOW, last_fire=NOW - 60, next_fire=NOW + 240)
        tx.append_event("placed", "on cpu1", job="web", alloc="web-1", node="cpu1", time=NOW - 40)
        tx.append_event("exited", "exit 3", job="web", alloc="web-1", node="cpu1", time=NOW - 30)
        tx.append_event("failed", "exit 3, restarts spent (2/2)", job="web", alloc="web-1", node="cpu1",
                        time=NOW - 20)
    save_state(store, gpu_node(observed_at=500.0), NOW - 1)
    save_state(store, NodeState("cpu1", status="ready", cpus=4, load=(0.25, 0.1, 0.0), memory_total=8 * GIB,
                                memory_available=6 * GIB, gpus_known=False,
                                gpu_reason="NVML library not found (libnvidia-ml.so.1)"), NOW - 2)
    save_state(store, NodeState("cpu2", status="ready", cpus=4, memory_total=8 * GIB, memory_available=8 * GIB,
                                gpus_known=True), NOW - 3)
    save_state(store, NodeState("dead", status="unreachable", error="connection refused\n  fix: start sshd"), NOW - 5)
    save_state(store, NodeState("quiet", status="ready", cpus=2), NOW - 30)
    store.cordon("cpu1", "ops@test")
    store.request_drain("cpu2", "ops@test")
    store.cordon("gpu1/3", "ops@test")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as s:
        fill(s)
        yield s


def build(store: Store, history: GpuHistory | None = None, now: float = NOW, **kw: Any) -> ConsoleModel:
    """The model of what the store holds, read as console/source.py reads it."""
    return build_model(now=now, inventory="inv.yaml", state=str(store.path), source="read-only: no controller",
                       jobs=store.jobs(), allocations=store.allocations(), nodes=store.nodes(),
                       pending=store.job_statuses(), cron=store.cron_times(), events=store.events(),
                       hosts=kw.pop("hosts", HOSTS), history=history or GpuHistory(), **kw)


TABLE = [
    ("a ready GPU node shows load, cpus used by allocations, memory used and busy GPUs", "nodes", "gpu1", dict(
        state="ready", error=None, datacenter="dc1", rack="r1", load=3.5, cpus=32, cpus_used=4.0,
        memory_total=256 * GIB, memory_used=56 * GIB, gpus_total=4, gpus_busy=2, gpu_reason=None, allocations=1,
        rtt=0.012, last_seen=NOW - 1)),
    ("a cordoned node without NVML shows GPUs unknown with the reason, failed work holds nothing", "nodes", "cpu1",
     dict(state="cordoned", gpus_total=None, gpus_busy=0, gpu_reason="NVML library not found (libnvidia-ml.so.1)",
          cpus_used=0.5, allocations=1, memory_used=2 * GIB)),
    ("a draining node says draining, not cordoned", "nodes", "cpu2", dict(state="draining", gpus_total=0)),
    ("an unreachable node keeps its error", "nodes", "dead",
     dict(state="unreachable", error="connection refused\n  fix: start sshd", load=None, memory_used=None)),
    ("an inventory host the store has not seen is an unknown row", "nodes", "fresh",
     dict(state="unknown", datacenter="dc2", last_seen=None, gpus_total=None)),
    ("a GPU held by an allocation names its job, with owned and unowned pids", "gpus", "gpu1/0", dict(
        node="gpu1", index=0, model="NVIDIA H100 80GB HBM3", utilization=87.0, history=(87.0,),
        memory_used=10 * GIB, memory_total=80 * GIB, temperature=45.0, power_draw=300.0, power_limit=700.0,
        ecc_uncorrected=0, is_healthy=True, job="train", alloc="train-0", pids=(100, 666), unowned_pids=(666,),
        is_cordoned=False)),
    ("a GPU whose processes all belong to its allocation flags none", "gpus", "gpu1/1",
     dict(job="train", pids=(101,), unowned_pids=())),
    ("an unhealthy GPU without utilization support shows n/a and its error", "gpus", "gpu1/2", dict(
        utilization=None, history=(None,), is_healthy=False, error="XID 79: fallen off the bus", job=None,
        alloc=None)),
    ("a cordoned free GPU", "gpus", "gpu1/3", dict(is_cordoned=True, job=None, utilization=0.0)),
    ("a service short of allocations is degraded with its pending reason", "jobs", "web", dict(
        kind="service", desired="run", wanted=2, running=1, failed=1, restarts=2, health="degraded",
        pending="1 of 2 allocations not placed: 0/3 nodes fit", next_run=None, schedule=None)),
    ("a running GPU job is healthy", "jobs", "train", dict(running=1, wanted=1, health="healthy", restarts=1)),
    ("a cron job shows its schedule and next run", "jobs", "report", dict(
        kind="batch", schedule="*/5 * * * *", next_run=NOW + 240, wanted=0, health="healthy")),
    ("a stopped job", "jobs", "old", dict(desired="stop", health="stopped", running=0)),
    ("a failed allocation carries its newest event", "allocations", "web-1", dict(
        job="web", node="cpu1", index=1, desired="run", observed="failed", restarts=2, exit_code=3, gpus=(),
        ports=(), last_event="failed: exit 3, restarts spent (2/2)", created_at=NOW - 40)),
    ("an allocation's GPUs and ports", "allocations", "train-0", dict(gpus=(0, 1), last_event=None)),
    ("ports are (name, port) pairs", "allocations", "web-0", dict(ports=(("http", 8080),))),
]


@pytest.mark.parametrize(("view", "key", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_rows_show_what_the_store_holds(store: Store, view: str, key: str, expected: dict[str, Any]) -> None:
    rows = {row.key: row for row in getattr(build(store), view)}
    assert key in rows, f"no {view} row {key!r}: {sorted(rows)}"
    shown = {name: getattr(rows[key], name) for name in expected}
    assert shown == expected


def test_the_model_says_where_it_came_from_and_how_old_it_is(store: Store) -> None:
    model = build(store)
    assert (model.now, model.inventory, model.source, model.error) == (NOW, "inv.yaml", "read-only: no controller",
                                                                       None)
    assert model.data_age == pytest.approx(1.0)  # the newest observation: gpu1, a second ago
    assert model.stale_nodes == {"dead", "quiet", "fresh"}  # unreachable, 30 s silent, never seen
    assert [r.key for r in model.nodes] == ["cpu1", "cpu2", "dead", "gpu1", "quiet", "fresh"]


def test_every_node_is_stale_when_no_observation_is_recent(store: Store) -> None:
    model = build(store, now=NOW + 60)
    assert model.data_age == pytest.approx(61.0)
    assert model.stale_nodes == {r.key for r in model.nodes}


@pytest.mark.parametrize(("lease_age", "error"), [
    (None, None), (0.8, None), (12.0, "the controller has not renewed its lease for 12s"),
], ids=["no controller: no banner", "a live controller: no banner", "a stuck controller: a banner"])
def test_an_old_lease_is_a_banner(store: Store, lease_age: float | None, error: str | None) -> None:
    model = build(store, lease_age=lease_age)
    if error is None:
        assert model.error is None
    else:
        assert model.error is not None and model.error.startswith(error)


def test_history_grows_only_with_new_observations(store: Store) -> None:
    history = GpuHistory()
    assert build(store, history).gpus[0].history == (87.0,)
    assert build(store, history, now=NOW + 1).gpus[0].history == (87.0,), "a refresh without new data added one"
    save_state(store, gpu_node(observed_at=501.0, utilization=55.0), NOW + 1)
    assert build(store, history, now=NOW + 2).gpus[0].history == (87.0, 55.0)
    save_state(store, gpu_node(observed_at=501.0, utilization=55.0), NOW + 16)  # saved again, same observation
    assert build(store, history, now=NOW + 16).gpus[0].history == (87.0, 55.0)


def test_history_keeps_the_last_samples_and_skips_unreachable_nodes(store: Store) -> None:
    history = GpuHistory()
    for n in range(HISTORY_LENGTH + 5):
        save_state(store, gpu_node(observed_at=600.0 + n, utilization=float(n)), NOW)
        model = build(store, history)
    samples = {g.key: g.history for g in model.gpus}["gpu1/0"]
    assert samples == tuple(float(n) for n in range(5, HISTORY_LENGTH + 5))
    save_state(store, replace(gpu_node(observed_at=900.0), status="unreachable", error="timeout"), NOW + 1)
    assert {g.key: g.history for g in build(store, history).gpus}["gpu1/0"] == samples


def test_events_are_the_newest_last_and_at_most_EVENT_ROWS(store: Store) -> None:
    with store.transaction() as tx:
        for n in range(EVENT_ROWS + 20):
            tx.append_event("tick", f"event {n}", time=NOW + n)
    events = build(store).events
    assert len(events) == EVENT_ROWS
    assert events[-1].message == f"event {EVENT_ROWS + 19}" and events[0].message == "event 20"
    assert [int(e.key) for e in events] == sorted(int(e.key) for e in events)
    assert events[-1].time == NOW + EVENT_ROWS + 19 and events[-1].actor is None


def test_intent_events_carry_their_actor(store: Store) -> None:
    store.append_event("intent", "restart web: restarted", job="web", actor="ops@host (console)", time=NOW)
    assert build(store).events[-1].actor == "ops@host (console)"


def test_finished_allocations_are_bounded_per_job(store: Store) -> None:
    with store.transaction() as tx:
        tx.save_allocations(Allocation(f"old-{n + 1}", "old", "cpu1", index=n + 1, desired_status="stop",
                                       observed_status="stopped", created_at=NOW - 400 + n) for n in range(15))
    keys = {a.key for a in build(store).allocations}
    assert {k for k in keys if k.startswith("old-")} == {f"old-{n}" for n in range(6, 16)}
    assert {"train-0", "web-0", "web-1"} <= keys


def test_without_an_inventory_only_stored_nodes_show() -> None:
    model = build_model(now=NOW, inventory="i", state="s", source="x", jobs=(), allocations=(), nodes=(),
                        pending={}, cron={}, events=(), hosts=None, history=GpuHistory())
    assert (model.nodes, model.gpus, model.jobs, model.data_age, model.stale_nodes) == ((), (), (), None, frozenset())


@pytest.mark.parametrize(("module", "banned"), [
    ("console.build", ("textual", "asyncssh", "sqlite3")),
    ("console.source", ("textual", "asyncssh")),
], ids=["the model builder is pure", "the data source loads SSH only when it reads logs"])
def test_console_core_imports_no_ui_and_no_ssh(module: str, banned: tuple[str, ...]) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
