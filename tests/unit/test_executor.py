"""deployer/executor.py (and the controller's lease renewals) against a real SQLite store and node clients that answer at once: what it
commits, and how many commits (each one an fsync of the WAL with synchronous=FULL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from deployer.controller import Controller, ControllerBusy, ControllerSettings
from deployer.executor import Executor
from deployer.inventory import parse_inventory
from deployer.models import Allocation, JobSpec
from deployer.plan import PLACE, ClusterSnapshot, Item, Plan
from deployer.store import Store

SPEC = JobSpec(name="web", command=("sleep", "60"), count=30)


class AnsweringClient:
    """A NodeClient whose launches succeed at once, with the pid the node would report."""

    def __init__(self) -> None:
        self.launched: list[str] = []

    async def launch(self, launch: Any, secrets: Any = None) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.launched.append(launch.alloc_id)
        return {"ok": True, "pid": 1000 + len(self.launched), "restarts": 1}


async def test_the_launches_confirmed_between_two_passes_are_committed_by_the_next_pass(tmp_path: Path) -> None:
    """30 nodes answering between two passes cost the next pass's one COMMIT (each one an fsync), not 30
    of their own; until then the controller's snapshot reads them from Executor.confirmed()."""
    store = Store.open(tmp_path / "flex.db")
    client = AnsweringClient()
    executor = Executor(store, lambda node: client)  # type: ignore[arg-type,return-value]
    allocs = [Allocation(id=f"web-{i}", job="web", node=f"n{i}", index=i) for i in range(30)]
    plan = Plan(items=tuple(Item(PLACE, "web", "new", a) for a in allocs))
    executor.persist(plan, ClusterSnapshot(), 1.0)
    commits: list[str] = []
    store._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    await asyncio.gather(*executor.dispatch(plan, ClusterSnapshot(), {"web": SPEC}))
    assert len(client.launched) == 30 and commits == []
    assert {r.observed_status for r, _ in executor.confirmed().values()} == {"starting"}
    executor.persist(Plan(), ClusterSnapshot(), 2.0)  # the next pass
    assert len(commits) == 1 and executor.confirmed() == {}
    assert {a.observed_status for a in store.allocations()} == {"starting"}
    started = [e for e in store.events() if e.kind == "started"]
    assert sorted(e.alloc for e in started) == sorted(a.id for a in allocs)
    assert all(e.message.startswith("started, pid ") for e in started)
    executor.persist(Plan(), ClusterSnapshot(), 3.0)  # nothing to write: no commit
    executor.flush()
    assert len(commits) == 1
    store.close()


def test_the_controller_lease_is_renewed_once_a_second_not_on_every_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each renewal is a commit: 15 passes in a second renew once; a pass after a longer pause renews
    first, and learns there that another controller took the lease over."""
    inventory = parse_inventory(f"all:\n  hosts:\n    n1:\n      ansible_connection: local\n"
                                f"      flex_root: {tmp_path / 'root'}\n", "inventory.yaml")
    store = Store.open(tmp_path / "flex.db")
    controller = Controller(inventory, store, ControllerSettings(controller_lease_ttl=15.0))
    assert store.acquire_lease(controller.owner, 15.0, time.time())
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    renewals: list[str] = []
    store._conn.set_trace_callback(lambda sql: renewals.append(sql) if "controller_lease" in sql else None)
    for _ in range(15):
        controller.reconcile_once()
        clock[0] += 0.05
    assert len(renewals) == 1
    clock[0] += 20.0  # a pause past the TTL: another controller took the lease meanwhile
    with store.transaction() as tx:
        tx._exec("UPDATE controller_lease SET owner = 'other', expires_at = ?", (time.time() + 15,))
    with pytest.raises(ControllerBusy, match="took the lease over"):
        controller.reconcile_once()
    store.close()


def test_node_states_due_for_their_periodic_save_are_spread_over_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A status change is saved by the next pass; the periodic save (NODE_SAVE_INTERVAL) of an unchanged
    node goes to at most a fifth of the nodes per pass (at least 50), the oldest first: 1,000 nodes
    saved at once made one pass in five seconds ~0.4 s longer."""
    from deployer.models import NodeState

    hosts = "".join(f"    n{i:03d}:\n      ansible_connection: local\n" for i in range(300))
    inventory = parse_inventory(f"all:\n  hosts:\n{hosts}", "inventory.yaml")
    store = Store.open(tmp_path / "flex.db")
    controller = Controller(inventory, store, ControllerSettings())
    assert store.acquire_lease(controller.owner, 15.0, time.time())
    controller.nodes = {h.name: NodeState(h.name, status="ready") for h in inventory.hosts}
    wall = [1000.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    saved: list[str] = []
    store._conn.set_trace_callback(lambda sql: saved.append(sql) if sql.startswith("INSERT INTO nodes") else None)
    controller.reconcile_once()
    assert len(saved) == 300  # every status is new
    for step, expected in ((1.0, 0), (10.0, 60), (0.1, 60), (0.1, 60)):
        wall[0] += step
        saved.clear()
        controller.reconcile_once()
        assert len(saved) == expected, (step, len(saved))
    oldest = sorted(controller._saved_nodes.values(), key=lambda entry: entry[1])[0][1]
    assert oldest == 1000.0  # 120 of the 300 still wait: the next passes take them
    controller.nodes["n007"] = NodeState("n007", status="unreachable")
    saved.clear()
    wall[0] += 0.1
    controller.reconcile_once()
    assert len(saved) == 61  # the change, and the next 60 due
    store.close()


def test_a_restart_requested_between_a_launch_and_the_next_pass_is_not_hidden_by_the_launch_record(
        tmp_path: Path) -> None:
    """The next pass reads a confirmed launch's record over the store's, but keeps the store's higher
    generation: `flex restart ALLOC` written meanwhile is seen by that very pass (and kept by its commit)."""
    from dataclasses import replace as changed

    from deployer.controller import _confirmed_over

    stored = Allocation(id="web-0", job="web", node="n1", generation=1)
    launched = changed(Allocation(id="web-0", job="web", node="n1"), observed_status="starting")
    assert _confirmed_over(stored, launched) == changed(launched, generation=1)
    assert _confirmed_over(changed(stored, generation=0), launched) is launched
