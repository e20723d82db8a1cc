"""FAULTS.md F10, randomized: `flex controller` SIGKILLed at random moments, 20 times, while it pushes a job
to 10 hosts and while it heals (workloads killed and restarts asked for while no controller runs).

Seeded: the seed is printed and every step is logged, and FLEX_KILL_SEED=N replays the same schedule
(`FLEX_KILL_SEED=N pytest -s tests/integration/test_controller_kill_random.py`). At the end one more
controller runs until the fleet converges, and then, from each host's /proc and the state database:
every allocation desired running runs exactly once, no index has two live copies, no allocation was
ever created twice for an index, every intent was applied exactly once, and the events say so.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from deployer.store import Store
from tests.integration.controllerkit import (
    alloc_state,
    copies,
    flex_env,
    live_processes,
    spawn_flex,
    submit,
    write_spec,
)

HOSTS = 10
KILLS = 20
JOB = """\
kind: service
count: 10
command: [sleep, "3600"]
placement: {spread: rack, distinct_hosts: true}
resources: {cpus: 0.1, memory: 16MiB}
restart: {attempts: 1000, delay: 0.2s, max_delay: 1s}
reschedule: {grace: 60s}
stop: {timeout: 1s}
"""


def _seed() -> int:
    chosen = os.environ.get("FLEX_KILL_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


def _first_pass(state: Path, after: int, proc: Any, timeout: float) -> bool:
    """True once the controller's first pass is committed (a new controller records every node's state
    then), False if it exited or took longer than timeout."""
    deadline = time.monotonic() + timeout
    with Store.open(state) as store:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e.kind.startswith("node_") for e in store.events(after_seq=after, limit=10_000)):
                return True
            time.sleep(0.05)
    return False


def _kill_workloads(fleet: Any, rng: random.Random, killed: Counter[str]) -> list[str]:
    """SIGKILL 1-3 random workloads of the job (while no controller runs); the allocation ids hit."""
    running = [(host, alloc, pid) for host, allocs in sorted(live_processes(fleet).items())
               for alloc, pids in sorted(allocs.items()) if alloc.startswith("web-") for pid in pids]
    hits = rng.sample(running, min(len(running), rng.randint(1, 3)))
    for host, alloc, pid in hits:
        fleet.host(host).exec(["kill", "-9", str(pid)])
        killed[alloc] += 1
    return [alloc for _, alloc, _ in hits]


def _cut(events: list[Any]) -> int:
    """How many launches and restarts a SIGKILL interrupted: begun by one controller, never confirmed by it."""
    cut, open_ops = 0, set()
    for event in events:
        if event.kind in ("placed", "restarting"):
            open_ops.add(event.alloc)
        elif event.kind in ("started", "restarted"):
            open_ops.discard(event.alloc)
        elif event.kind == "controller" and "dead controller" in event.message:
            cut, open_ops = cut + len(open_ops), set()
    return cut


def _converged(store: Store, fleet: Any) -> bool:
    wanted = [a for a in store.allocations(job="web") if a.desired_status == "run"]
    if len(wanted) != 10 or any(a.observed_status != "running" for a in wanted):
        return False
    if store.pending_intents() or store.due_restarts():
        return False
    return copies(fleet, "web-") == {a.id: [a.node] for a in wanted}


def test_f10_random_controller_sigkills_during_push_and_healing_converge_to_one_copy_each(
        make_fleet: Any, tmp_path: Path) -> None:
    seed = _seed()
    print(f"FLEX_KILL_SEED={seed}")
    rng = random.Random(seed)
    steps: list[str] = []
    replay = f"(replay: FLEX_KILL_SEED={seed})"
    fleet = make_fleet(HOSTS)
    inventory, state = fleet.write_inventory(tmp_path / "inventory.yaml"), tmp_path / "state.db"
    env, log = flex_env(state), tmp_path / "controller.log"
    with Store.open(state) as store:
        submit(store, write_spec(tmp_path, "web", JOB))  # what `flex push` writes; the controller pushes it
    killed: Counter[str] = Counter()
    intents: Counter[str] = Counter()
    started_at = time.monotonic()
    for round_ in range(KILLS):
        offset = log.stat().st_size if log.exists() else 0
        with Store.open(state) as store:
            seq = store.last_event_seq()
        proc = spawn_flex("controller", str(inventory), "--probe-interval", "0.3", "--lease-ttl", "0", env=env, log=log)
        if rng.random() < 0.2:  # while it starts: imports, lease, connections, first probes
            wait = rng.uniform(0.1, 2.0)
            time.sleep(wait)
            where = f"{wait:.2f}s after spawn"
        else:  # while it works: placement, launches, restarts, stops in flight (the first pass dispatches them)
            assert _first_pass(state, seq, proc, 60), f"controller run {round_} made no pass {replay}:\n" + \
                log.read_text()[offset:][-3000:]
            wait = rng.uniform(0.0, 2.5)
            time.sleep(wait)
            where = f"{wait:.2f}s after its first pass"
        assert proc.poll() is None, f"controller run {round_} exited by itself {replay}:\n{log.read_text()[offset:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        steps.append(f"{round_}: SIGKILL {where}")
        if rng.random() < 0.5:
            steps.append(f"{round_}: killed workloads {_kill_workloads(fleet, rng, killed)}")
        if rng.random() < 0.5:
            with Store.open(state) as store:
                targets = ["web"] + sorted(a.id for a in store.allocations(job="web") if a.desired_status == "run")
                for _ in range(rng.randint(1, 2)):
                    target = rng.choice(targets)
                    store.request_restart(target, "chaos@test")
                    intents[target] += 1
                    steps.append(f"{round_}: restart {target} requested")
    chaos = time.monotonic() - started_at

    offset = log.stat().st_size
    final = spawn_flex("controller", str(inventory), "--probe-interval", "0.3", "--lease-ttl", "0", env=env, log=log)
    try:
        with Store.open(state) as store:
            deadline = time.monotonic() + 120
            while not (_converged(store, fleet) and (time.sleep(1.0) or _converged(store, fleet))):
                assert final.poll() is None, f"the last controller exited {replay}:\n{log.read_text()[offset:]}"
                assert time.monotonic() < deadline, f"no convergence {replay}\n" + "\n".join(steps) + \
                    f"\npending intents: {store.pending_intents()}\n{log.read_text()[offset:][-3000:]}"
                time.sleep(0.3)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(30)
    assert final.returncode == 0, log.read_text()[offset:][-3000:]
    with Store.open(state) as store:
        records = store.allocations(job="web")
        wanted = [a for a in records if a.desired_status == "run"]
        job = store.get_job("web")
        written = store.intents()
        events = store.events(limit=1_000_000)
        launched = store.launched_generations(job="web")
    history = "\n".join(steps) + f"\n{replay}, {chaos:.0f}s of chaos, {_cut(events)} operations cut by a kill"
    print(history)
    where = copies(fleet, "web-")
    assert where == {a.id: [a.node] for a in wanted}, f"not exactly one copy of each allocation:\n{history}"
    assert sorted(a.index for a in wanted) == list(range(10)) and len({a.node for a in wanted}) == 10, history
    assert len(records) == 10, f"an index was placed twice (a duplicate push):\n{history}\n{records}"
    # every intent applied once: applied_at set (once: the store never overwrites it), one event each
    assert len(written) == sum(intents.values()) and all(i.applied_at for i in written), (written, history)
    assert sum(e.kind == "intent" for e in events) == len(written), history
    assert job is not None and all(launched[a.id] >= job.restart_generation for a in wanted), (launched, history)
    for alloc in wanted:  # relaunched for what asked for it, and never more often than that
        launches = alloc_state(fleet, alloc.node, alloc.id)["restarts"]
        bound = 1 + killed[alloc.id] + intents[alloc.id] + intents["web"]
        assert launches <= bound, f"{alloc.id} launched {launches} times, at most {bound} asked for:\n{history}"
        # a killed workload is restarted; a restart asked for before its first launch is that launch
        kinds = {e.kind for e in events if e.alloc == alloc.id}
        if killed[alloc.id] or intents[alloc.id]:
            wanted_kinds = {"restarting"} if killed[alloc.id] else {"restarting", "started"}
            assert kinds & wanted_kinds, f"{alloc.id}: no restart recorded ({sorted(kinds)})\n{history}"
    assert any(e.kind == "placed" for e in events) and any(e.kind == "controller" and "dead controller" in
                                                           e.message for e in events), history
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
