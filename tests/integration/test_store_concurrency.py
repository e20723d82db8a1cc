"""FAULTS.md F24: the controller, and two CLI/console processes at once on one state database.

Three real processes write for about two seconds: one "controller" saves allocations, appends events and
applies restart intents; two "CLI" processes request restarts, append events and read. No "database is
locked" escapes, no intent is lost, and each writer's events keep their order without gaps.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployer.models import Allocation, JobSpec
from deployer.store import Store

DURATION = 2.0


def controller(path: str, start: Any, results: Any) -> None:
    done, applied, errors = 0, 0, []
    try:
        with Store.open(path) as store:
            start.wait()
            end = time.time() + DURATION
            while time.time() < end:
                intents = [i.id for i in store.pending_intents()]  # before the targets (see store.py)
                due = store.due_restarts()
                with store.transaction() as tx:
                    tx.save_allocation(Allocation(id=f"batch-{done}", job="batch", node=f"n{done % 7}",
                                                  observed_status="running", created_at=time.time()))
                    for a, target in due:
                        tx.save_allocation(replace(a, restarts=a.restarts + 1), launched_generation=target)
                    applied += tx.mark_applied(intents, "restarted")
                    tx.append_event("controller", str(done))
                done += 1
    except Exception:  # noqa: BLE001 - reported to the test
        errors.append(traceback.format_exc())
    results.put(("controller", done, applied, errors))


def cli(name: str, path: str, start: Any, results: Any) -> None:
    done, errors = 0, []
    try:
        with Store.open(path) as store:
            start.wait()
            end = time.time() + DURATION
            while time.time() < end:
                store.request_restart("web", f"{name}@test")
                seq = store.append_event(name, str(done))
                done += 1
                store.allocations(job="web")
                assert [e.message for e in store.events(after_seq=seq - 1, limit=1)] == [str(done - 1)]
                store.lease_holder(time.time())
    except Exception:  # noqa: BLE001 - reported to the test
        errors.append(traceback.format_exc())
    results.put((name, done, 0, errors))


def test_f24_store_controller_and_two_cli_processes_share_one_database_unlocked(tmp_path: Path) -> None:
    path = str(tmp_path / "flex.db")
    with Store.open(path) as store:
        store.put_job(JobSpec(name="web", command=("sleep", "60"), count=2), "", "web.yaml")
        store.save_allocations([Allocation(id="web-0", job="web", node="n1"),
                                Allocation(id="web-1", job="web", node="n2", index=1)])
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=controller, args=(path, start, results)),
             ctx.Process(target=cli, args=("cli1", path, start, results)),
             ctx.Process(target=cli, args=("cli2", path, start, results))]
    for p in procs:
        p.start()
    start.set()
    reports = {name: (done, applied, errors) for name, done, applied, errors in
               (results.get(timeout=30) for _ in procs)}
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0

    assert {name: errors for name, (_, _, errors) in reports.items()} == {"controller": [], "cli1": [],
                                                                          "cli2": []}
    requested = reports["cli1"][0] + reports["cli2"][0]
    assert min(done for done, _, _ in reports.values()) >= 10, reports

    with Store.open(path) as store:
        intents = store.intents()
        assert len(intents) == requested  # none lost
        for name in ("cli1", "cli2"):
            assert sum(i.actor == f"{name}@test" for i in intents) == reports[name][0]
        assert store.get_job("web").restart_generation == requested  # type: ignore[union-attr]
        applied = reports["controller"][1]
        assert applied == sum(i.applied_at is not None for i in intents)
        assert len(store.pending_intents()) == requested - applied

        events = store.events(limit=1_000_000)
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))
        for writer in ("controller", "cli1", "cli2"):
            mine = [e.message for e in events if e.kind == writer]
            assert mine == [str(n) for n in range(reports[writer][0])]  # in order, no gaps

        # One more pass applies whatever came after the controller's last one, exactly once.
        with store.transaction() as tx:
            for a, target in store.due_restarts():
                tx.save_allocation(a, launched_generation=target)
            tx.mark_applied([i.id for i in store.pending_intents()], "restarted")
        assert store.due_restarts() == [] and store.pending_intents() == []
        assert set(store.launched_generations(job="web").values()) == {requested}
