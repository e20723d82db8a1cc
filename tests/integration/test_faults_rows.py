"""FAULTS.md, row by row: the index of which test asserts each row's "must hold", and the rows no other
file covers (F1, F2, F8's freed GPUs and ports, F17, F24 with real CLI processes).

Every row has at least one test named test_fNN_...; `test_every_faults_row_has_a_test_named_after_it`
fails when a row loses its test, a test is renamed away from its row, or FAULTS.md grows a row nobody
tests. The fleet tests below assert with evidence from the hosts (state.json launch counts, /proc) and
from the store (records, events, intents), never from timing alone.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployer.controller import ControllerSettings
from deployer.inventory import load_inventory
from deployer.models import NODE_READY, Allocation, RestartPolicy
from deployer.nodeclient import Launch, NodeClient
from deployer.reconcile import backoff
from deployer.reconcile_jobs import allocation_version
from deployer.spec import load_job
from deployer.store import Store
from deployer.transport import Pool
from tests.fakenvml.plugin import FakeNvml
from tests.integration.controllerkit import (
    FAST,
    ROOT,
    RunningController,
    alloc_state,
    copies,
    flex,
    flex_env,
    spawn_flex,
    submit,
    wait_for,
    write_spec,
)
from tests.integration.transportkit import fast_settings

MakeFleet = Callable[..., Any]
HERE = Path(__file__).resolve().parent

# --- the index ----------------------------------------------------------------------------------------

C_FAULTS, C_FLEET, F_FAULTS = "test_controller_faults.py", "test_controller_fleet.py", "test_fleet_faults.py"
ROWS_FILE, KILLS, SECRETS = "test_faults_rows.py", "test_controller_kill_random.py", "test_secrets_and_bad_input.py"
STORE = "test_store_concurrency.py"

#: FAULTS.md row -> the tests asserting its "must hold" (file relative to tests/integration, function).
ROWS: dict[int, list[tuple[str, str]]] = {
    1: [(ROWS_FILE, "test_f01_nonzero_exit_restarts_in_place_with_capped_backoff_then_reschedules_or_fails")],
    2: [(ROWS_FILE, "test_f02_batch_exit_0_is_complete_and_never_restarted_or_rescheduled")],
    3: [(C_FAULTS, "test_f03_crash_loop_is_bounded_and_shown_as_crash_looping")],
    4: [(C_FAULTS, "test_f04_short_partition_adopts_the_same_pids")],
    5: [(C_FLEET, "test_f05_long_partition_reschedules_and_heals_to_one_copy_logging_the_overlap")],
    6: [(C_FAULTS, "test_f06_long_partition_with_policy_wait_places_nothing_elsewhere")],
    7: [(C_FAULTS, "test_f07_lease_fencing_stops_the_cut_copy_before_its_replacement_starts")],
    8: [(C_FLEET, "test_f08_dead_host_is_replaced_after_the_grace"),
        (ROWS_FILE, "test_f08_dead_node_is_lost_after_the_grace_and_frees_its_gpus_and_ports")],
    9: [(C_FAULTS, "test_f09_rebooted_node_restarts_its_allocations_at_once_in_place")],
    10: [(C_FLEET, "test_f10_controller_sigkilled_mid_push_leaves_no_duplicate_and_a_later_push_converges"),
         (KILLS, "test_f10_random_controller_sigkills_during_push_and_healing_converge_to_one_copy_each"),
         (ROWS_FILE, "test_f10_restart_launched_by_a_controller_killed_before_recording_it_is_not_applied_again")],
    11: [(C_FAULTS, "test_f11_controller_restart_on_a_healthy_fleet_restarts_nothing")],
    12: [(C_FAULTS, "test_f12_connection_cut_mid_launch_leaves_one_copy"),
         (C_FAULTS, "test_f12_launch_cut_after_the_files_were_pushed_is_started_once")],
    13: [(F_FAULTS, "test_f13_hung_node_is_dropped_by_keepalive_and_blocks_no_one")],
    14: [(F_FAULTS, "test_f14_hanging_command_is_bounded_and_killed_on_the_node")],
    15: [(F_FAULTS, "test_f15_many_fresh_connections_to_a_stock_sshd_all_succeed")],
    16: [(F_FAULTS, "test_f16_more_runs_than_max_sessions_share_one_connection")],
    17: [(ROWS_FILE, "test_f17_slow_link_operations_succeed_and_health_does_not_flap")],
    18: [(F_FAULTS, "test_f18_changed_host_key_is_refused_before_anything_is_sent"),
         (SECRETS, "test_f18_changed_host_key_gets_no_byte_and_shows_untrusted_with_the_fix")],
    19: [(F_FAULTS, "test_f19_wrong_key_fails_clearly_after_one_attempt")],
    20: [(F_FAULTS, "test_f20_full_disk_keeps_the_old_file_and_retry_is_idempotent")],
    21: [(F_FAULTS, "test_f21_lost_gpu_is_unhealthy_and_the_others_complete")],
    22: [(F_FAULTS, "test_f22_nvml_unavailable_means_gpus_unknown_with_the_reason")],
    23: [(F_FAULTS, "test_f23_unsupported_metric_is_none_and_the_others_stay")],
    24: [(STORE, "test_f24_store_controller_and_two_cli_processes_share_one_database_unlocked"),
         (ROWS_FILE, "test_f24_cli_writers_controller_and_readers_at_once_lock_nothing_and_lose_no_intent")],
    25: [(C_FLEET, "test_f25_restart_asked_while_no_controller_runs_is_applied_once")],
    26: [(C_FAULTS, "test_f26_wall_clock_steps_evict_nothing_and_never_stall_a_backoff")],
    27: [(C_FAULTS, "test_f27_node_removed_from_the_inventory_is_drained_not_lost")],
    28: [(C_FAULTS, "test_f28_orphan_workload_is_reported_and_stopped")],
}


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _faults_md() -> Path | None:
    for candidate in (ROOT / "FAULTS.md", ROOT / "docs" / "FAULTS.md", ROOT.parent / "shared" / "FAULTS.md"):
        if candidate.is_file():
            return candidate
    return None


def test_every_faults_row_has_a_test_named_after_it() -> None:
    assert sorted(ROWS) == list(range(1, 29))
    defined = {path.name: _functions(path) for path in HERE.glob("test_*.py")}
    for row, tests in ROWS.items():
        for file, name in tests:
            assert name.startswith(f"test_f{row:02d}_"), f"F{row}: {name} is not named after its row"
            assert name in defined.get(file, ()), f"F{row}: no {name} in {file}"
    named = {(f, n) for f, names in defined.items() for n in names if re.match(r"test_f\d\d_", n)}
    indexed = {t for tests in ROWS.values() for t in tests}
    assert named <= indexed, f"row tests missing from the index: {sorted(named - indexed)}"
    faults = _faults_md()
    if faults is not None:  # the design note lives beside the repository; CI may not have it
        rows = {int(n) for n in re.findall(r"^\| F(\d+) \|", faults.read_text(), re.M)}
        assert rows == set(ROWS), f"{faults} rows differ from the index: {sorted(rows ^ set(ROWS))}"


# --- shared ---------------------------------------------------------------------------------------------

SMALL = "resources: {cpus: 0.1, memory: 16MiB}\nstop: {timeout: 1s}\n"


def _events(store: Store, alloc: str | None = None, after: int = 0) -> list[Any]:
    return [e for e in store.events(after_seq=after, limit=100_000) if alloc is None or e.alloc == alloc]


def _record(store: Store, alloc_id: str) -> Any:
    return next((a for a in store.allocations() if a.id == alloc_id), None)


async def _passes(rc: RunningController, n: int) -> None:
    start = rc.controller.passes
    await rc.until(lambda: rc.controller.passes >= start + n, 30, f"{n} more passes")


# --- F1 -------------------------------------------------------------------------------------------------

F1_RESTART = RestartPolicy(attempts=3, delay=0.5, backoff=10.0, max_delay=1.0)  # uncapped, #3 would wait 5 s
RUN_FOR = 0.3  # each run records its start on the node's clock, runs this long, exits 3
F1_BODY = (f'command: [sh, -c, "date +%s.%N >> runs.txt; sleep {RUN_FOR}; exit 3"]\n'
           "restart: {attempts: 3, delay: 0.5s, backoff: 10, max_delay: 1s}\n"
           "reschedule: {grace: 10s, delay: 2s}\n" + SMALL)


def _restarts(store: Store, alloc_id: str) -> list[tuple[Any, Any]]:
    """(the exited event before it, the restarting event) of each restart of an allocation."""
    out, exited = [], None
    for event in _events(store, alloc_id):
        if event.kind == "exited":
            exited = event
        elif event.kind == "restarting":
            out.append((exited, event))
    return out


async def test_f01_nonzero_exit_restarts_in_place_with_capped_backoff_then_reschedules_or_fails(
        make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    async with RunningController(fleet.write_inventory(tmp_path / "inv.yaml"), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "svc", "kind: service\n" + F1_BODY))
        submit(rc.store, write_spec(tmp_path, "bat", "kind: batch\n" + F1_BODY))
        svc = (await rc.until(lambda: rc.store.allocations(job="svc"), 30, "svc placed"))[0]
        bat = (await rc.until(lambda: rc.store.allocations(job="bat"), 30, "bat placed"))[0]
        await rc.until(lambda: (r := _record(rc.store, svc.id)) and r.observed_status == "failed", 90,
                       "svc's restart budget spent")
        new = (await rc.until(lambda: [a for a in rc.store.allocations(job="svc") if a.id != svc.id], 30,
                              "svc rescheduled"))[0]
        await rc.until(lambda: _record(rc.store, bat.id).observed_status == "failed", 60, "bat failed for good")
        await _passes(rc, 10)

        for alloc in (svc, bat):  # restarted on its own node, each after its backoff; the counter recorded
            restarts = _restarts(rc.store, alloc.id)
            assert len(restarts) == F1_RESTART.attempts, [e.message for _, e in restarts]
            for n, (exited, restarting) in enumerate(restarts, 1):
                delay = backoff(F1_RESTART, n - 1, alloc.id)
                assert exited is not None and "exit 3" in exited.message, exited
                assert f"restart {n}/3" in restarting.message, restarting.message
                if n > 1:  # capped (<= max_delay, not delay x backoff^n) and jittered (hashed per allocation)
                    assert f"after {delay:.1f}s backoff" in restarting.message, (delay, restarting.message)
                    assert delay <= F1_RESTART.max_delay
            assert "crash-looping" in restarts[-1][1].message
            runs = [float(t) for t in (fleet.host(alloc.node).flex_root_path / "allocs" / alloc.id /
                                       "runs.txt").read_text().split()]
            assert len(runs) == 1 + F1_RESTART.attempts, runs
            for n in range(1, len(runs)):  # node clock: each start waited for the run before it plus the backoff
                delay = backoff(F1_RESTART, n - 1, alloc.id)
                assert runs[n] - runs[n - 1] >= RUN_FOR + delay - 0.05, (n, delay, runs)
            relaunches = [e.message for e in _events(rc.store, alloc.id) if e.kind == "restarted"]
            assert len(relaunches) == F1_RESTART.attempts and all(f"on {alloc.node}" in m for m in relaunches)
            assert all(e.node == alloc.node for e in _events(rc.store, alloc.id)), "moved off its node"
            state = alloc_state(fleet, alloc.node, alloc.id)
            assert state["restarts"] == 1 + F1_RESTART.attempts and state["exit_code"] == 3, state
            assert _record(rc.store, alloc.id).restarts == F1_RESTART.attempts

        svc_failed = next(e for e in _events(rc.store, svc.id) if e.kind == "failed")
        assert "restart budget spent (3/3" in svc_failed.message and "rescheduled" in svc_failed.message
        assert _record(rc.store, svc.id).desired_status == "stop"
        placed = next(e for e in _events(rc.store, new.id) if e.kind == "placed")
        last_exit = alloc_state(fleet, svc.node, svc.id)["finished_at"]  # the node's clock
        assert placed.time - last_exit >= 2.0, "replaced before the reschedule delay (2s) had passed"
        assert new.index == svc.index and new.node != svc.node, "rescheduled onto the node it failed on"

        bat_failed = next(e for e in _events(rc.store, bat.id) if e.kind == "failed")
        assert "failed for good" in bat_failed.message
        assert [a.id for a in rc.store.allocations(job="bat")] == [bat.id], "a failed batch run was placed again"
        assert _record(rc.store, bat.id).desired_status == "run"  # final, kept as the job's outcome
        assert alloc_state(fleet, bat.node, bat.id)["restarts"] == 4, "a failed batch run was started again"
        assert not copies(fleet, "bat-")


# --- F2 -------------------------------------------------------------------------------------------------


async def test_f02_batch_exit_0_is_complete_and_never_restarted_or_rescheduled(make_fleet: MakeFleet,
                                                                                  tmp_path: Path) -> None:
    fleet = make_fleet(2)
    inventory, state = fleet.write_inventory(tmp_path / "inv.yaml"), tmp_path / "state.db"
    body = 'kind: batch\ncommand: [sh, -c, "echo done; exit 0"]\nrestart: {attempts: 3, delay: 0.2s}\n' + SMALL
    async with RunningController(inventory, state, tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "once", body))
        alloc = (await rc.until(lambda: rc.store.allocations(job="once"), 30, "once placed"))[0]
        await rc.until(lambda: _record(rc.store, alloc.id).observed_status == "complete", 40, "once complete")
        await _passes(rc, 15)
    async with RunningController(inventory, state, tmp_path) as rc:  # a new controller sees it complete too
        await _passes(rc, 10)
        assert [a.id for a in rc.store.allocations(job="once")] == [alloc.id], "rescheduled"
        record = _record(rc.store, alloc.id)
        assert (record.observed_status, record.desired_status, record.exit_code, record.restarts) == \
            ("complete", "run", 0, 0)
        kinds = [e.kind for e in _events(rc.store, alloc.id)]
        assert kinds.count("placed") == 1 and kinds.count("started") == 1 and kinds.count("complete") == 1, kinds
        assert not {"restarting", "restarted", "failed", "lost", "stopping"} & set(kinds), kinds
    node_state = alloc_state(fleet, alloc.node, alloc.id)
    assert node_state["restarts"] == 1 and node_state["exit_code"] == 0, node_state


# --- F8 -------------------------------------------------------------------------------------------------

NVML_CONF = "nvml.conf"
TRAIN = ("kind: service\ncommand: [sleep, \"3600\"]\nresources: {cpus: 0.1, memory: 16MiB, gpus: 2}\n"
         "ports: [{name: api, port: 18080}]\nreschedule: {grace: 2s}\nstop: {timeout: 1s}\n")


async def test_f08_dead_node_is_lost_after_the_grace_and_frees_its_gpus_and_ports(
        make_fleet: MakeFleet, fake_nvml: FakeNvml, tmp_path: Path) -> None:
    from tests.fleet.netns import DEFAULT_FLEX_ROOT

    fleet = make_fleet(2, host_env=lambda name: fake_nvml.env(f"{DEFAULT_FLEX_ROOT}/{NVML_CONF}"))
    for host in fleet.hosts:
        fake_nvml.write_config(host.flex_root_path / NVML_CONF, 2, host=host.name)
    async with RunningController(fleet.write_inventory(tmp_path / "inv.yaml"), tmp_path / "state.db", tmp_path) as rc:
        submit(rc.store, write_spec(tmp_path, "train", TRAIN))
        old = (await rc.until(lambda: rc.running("train"), 30, "train running"))[0]
        assert old.gpus == (0, 1) and dict(old.ports) == {"api": 18080}
        dead = fleet.host(old.node)
        other = next(h for h in fleet.hosts if h is not dead)
        seq = rc.store.last_event_seq()
        dead.kill()
        killed = time.monotonic()
        new = (await rc.until(lambda: [a for a in rc.running("train") if a.id != old.id], 30,
                              "a replacement running on the other node"))[0]
        assert time.monotonic() - killed >= 2.0, "replaced before the grace"
        assert new.node == other.name and new.gpus == (0, 1) and dict(new.ports) == {"api": 18080}
        lost = _record(rc.store, old.id)
        assert (lost.observed_status, lost.desired_status, lost.holds_resources) == ("lost", "stop", False)
        assert any(e.kind == "lost" and "grace 2s" in e.message for e in _events(rc.store, old.id, seq))

        # the same GPUs and port again: only the dead node's, so they must have been freed with it
        submit(rc.store, write_spec(tmp_path, "train2", TRAIN))
        await _passes(rc, 5)
        assert not rc.store.allocations(job="train2"), "placed while no node has two free GPUs and port 18080"
        assert rc.store.job_statuses().get("train2"), "no reason given for the pending job"
        dead.start()  # the machine is back after its repair: same name, same GPUs, nothing running
        placed = (await rc.until(lambda: rc.running("train2"), 40, "train2 running on the returned node"))[0]
        assert placed.node == dead.name and placed.gpus == (0, 1) and dict(placed.ports) == {"api": 18080}
        await rc.until(lambda: rc.controller.nodes[dead.name].allocations.get(old.id) is not None, 10,
                       "the returned node reports the lost allocation's directory")
        await _passes(rc, 5)
        assert _record(rc.store, old.id).observed_status == "lost", "the lost record changed after the return"
        assert copies(fleet, "train") == {new.id: [other.name], placed.id: [dead.name]}
        assert alloc_state(fleet, dead.name, old.id)["restarts"] == 1, "the lost allocation was started again"


# --- F10, deterministic: the restart launched by a controller that died before recording it -------------


async def test_f10_restart_launched_by_a_controller_killed_before_recording_it_is_not_applied_again(
        make_fleet: MakeFleet, tmp_path: Path) -> None:
    """The window the randomized kill test hits by chance: the node ran the restart's launch, the controller
    died before its transaction. The next controller must see the restart done (the node keeps the run's
    generation), record it and apply the intent, and never launch it a second time."""
    fleet = make_fleet(2)
    inventory, state = fleet.write_inventory(tmp_path / "inv.yaml"), tmp_path / "state.db"
    path = write_spec(tmp_path, "web", 'kind: service\ncommand: [sleep, "3600"]\n' + SMALL)
    spec = load_job(path)
    alloc = Allocation("web-0-c0ffee", "web", "h02", job_version=allocation_version(spec), cpus=spec.resources.cpus,
                       memory=spec.resources.memory, observed_status="running", created_at=time.time())
    with Store.open(state) as store:  # ran at generation 0; then `flex restart web` (generation 1)
        submit(store, path)
        store.save_allocation(alloc, launched_generation=0)
        intent = store.request_restart("web", "oncall@test")
    hosts = {h.name: h for h in load_inventory(inventory).hosts}
    async with Pool(list(hosts.values()), fast_settings(tmp_path)) as pool:  # the dead controller's launch
        client = NodeClient(pool, hosts["h02"])
        await client.install()
        assert (await client.launch(Launch(alloc.id, spec, generation=1))).get("ok")
    async with RunningController(inventory, state, tmp_path) as rc:
        await rc.until(lambda: not rc.store.pending_intents() and _record(rc.store, alloc.id).observed_status ==
                       "running", 30, "the intent applied")
        await _passes(rc, 10)
        kinds = [e.kind for e in _events(rc.store, alloc.id)]
        assert "adopted" in kinds and "restarting" not in kinds, kinds
        assert rc.store.launched_generations()[alloc.id] == 1 and not rc.store.due_restarts()
        applied = next(i for i in rc.store.intents() if i.id == intent.id)
        assert applied.applied_at is not None and applied.result == "restarted"
    assert alloc_state(fleet, "h02", alloc.id)["restarts"] == 1, "the restart was applied a second time"
    assert copies(fleet, "web-") == {alloc.id: ["h02"]}


# --- F17 ------------------------------------------------------------------------------------------------


PROXY = r"""
import asyncio, sys

TARGET, DELAY = sys.argv[1], float(sys.argv[2])


async def pipe(src, dst):
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await src.read(65536)
            queue.put_nowait((loop.time() + DELAY, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()


async def client(reader, writer):
    up_reader, up_writer = await asyncio.open_connection(TARGET, 22)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
    for w in (writer, up_writer):
        w.close()


async def main():
    server = await asyncio.start_server(client, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
"""


class SlowLink:
    """A TCP proxy process on 127.0.0.1 in front of one host's sshd that holds every chunk `delay` seconds
    in each direction, in order: an added latency (tc netem is not available in this kernel). A process of
    its own, so that the controller under test never waits for it (nor it for the controller)."""

    def __init__(self, target: str, delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SlowLink:
        self._proc = subprocess.Popen([sys.executable, "-c", PROXY, self.target, str(self.delay)],
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)


async def test_f17_slow_link_operations_succeed_and_health_does_not_flap(make_fleet: MakeFleet,
                                                                         tmp_path: Path) -> None:
    from tests.fleet.sshd import known_hosts_line

    fleet = make_fleet(2)
    slow, fast = fleet.hosts
    delay = 0.15  # each way: a 300 ms round trip, 20 times the bridge's
    with SlowLink(slow.ip, delay) as link:
        known = tmp_path / "slow_known_hosts"
        known.write_text(known_hosts_line("127.0.0.1", slow.public_key, link.port) + "\n")
        inventory = fleet.write_inventory(tmp_path / "inv.yaml", host_vars=lambda h: {
            "ansible_host": "127.0.0.1", "ansible_port": link.port, "flex_known_hosts": str(known)} if h is slow else {})
        # production's staleness (4 missed probes), not FAST's: a loaded test machine is no slow link
        settings = replace(FAST, stale_after=ControllerSettings().stale_after)
        async with RunningController(inventory, tmp_path / "state.db", tmp_path, settings) as rc:
            await rc.controller.wait_first_probes(20)
            started = time.monotonic()
            assert (await rc.controller.pool.run(slow.name, ["true"], timeout=20)).ok
            slow_run = time.monotonic() - started
            started = time.monotonic()
            assert (await rc.controller.pool.run(fast.name, ["true"], timeout=20)).ok
            assert slow_run >= 2 * delay, f"no latency added ({slow_run:.3f}s)"  # a lower bound: no wall-time upper bound

            submit(rc.store, write_spec(tmp_path, "web", "kind: service\ncount: 2\ncommand: [sleep, \"3600\"]\n"
                                        "placement: {distinct_hosts: true}\nrestart: {attempts: 3, delay: 0.2s}\n"
                                        "reschedule: {grace: 3s}\n" + SMALL))
            await rc.until(lambda: len(rc.running("web")) == 2, 40, "web running on both nodes")
            far = next(a for a in rc.running("web") if a.node == slow.name)
            rc.store.request_restart(far.id, "oncall@test")  # an operation across the slow link
            await rc.until(lambda: not rc.store.pending_intents() and alloc_state(fleet, slow.name, far.id)[
                "restarts"] == 2 and len(rc.running("web")) == 2, 30, "the restart applied over the slow link")
            seen = set()
            watch_until = time.monotonic() + 6.0  # twenty probe intervals, three keepalive windows
            while time.monotonic() < watch_until:
                seen.add(rc.controller.nodes[slow.name].status)
                await asyncio.sleep(0.1)
            events = _events(rc.store)
            running = {a.id: alloc_state(fleet, a.node, a.id)["restarts"] for a in rc.running("web")}
    assert seen == {NODE_READY}, f"the slow node was seen {seen}"
    assert not [e for e in events if e.kind.startswith("node_") and e.kind != "node_ready"], events
    flaps = [e for e in events if e.kind in ("lost", "unknown", "exited", "failed", "error", "stopping")]
    assert not flaps, flaps
    restarts = [e for e in events if e.kind == "restarting"]
    assert [(e.alloc, "restart requested" in e.message) for e in restarts] == [(far.id, True)], restarts
    assert running == {far.id: 2, **{a: 1 for a in running if a != far.id}}


# --- F24 ------------------------------------------------------------------------------------------------

WRITERS, WRITES = 3, 5


def _console_reader(inventory: Path, state: Path, stop: threading.Event, out: dict[str, Any]) -> None:
    """The console's data source (read-only) polling the database like the UI does, until stop."""
    try:
        from console.source import Source
    except Exception as exc:  # noqa: BLE001 - the console is optional here; the CLI readers are not
        out["skipped"] = f"console not importable: {exc}"
        return
    try:
        with Source.open(str(inventory), str(state), read_only=True) as source:
            while not stop.is_set():
                source.poll()
                out["polls"] = out.get("polls", 0) + 1
                time.sleep(0.05)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        out["error"] = f"{type(exc).__name__}: {exc}"


def _status_reader(env: dict[str, str], inventory: Path, stop: threading.Event, out: list[Any]) -> None:
    while not stop.is_set():
        out.append(flex("status", str(inventory), "--json", env=env, timeout=60))


async def test_f24_cli_writers_controller_and_readers_at_once_lock_nothing_and_lose_no_intent(
        make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    inventory, state = fleet.write_inventory(tmp_path / "inv.yaml"), tmp_path / "state.db"
    env = flex_env(state)
    spec = write_spec(tmp_path, "web", 'kind: service\ncount: 2\ncommand: [sleep, "3600"]\n' + SMALL)
    controller = spawn_flex("controller", str(inventory), "--probe-interval", "0.3", env=env,
                            log=tmp_path / "controller.log")
    stop = threading.Event()
    readers: list[Any] = []
    console: dict[str, Any] = {}
    threads = [threading.Thread(target=_status_reader, args=(env, inventory, stop, readers)),
               threading.Thread(target=_console_reader, args=(inventory, state, stop, console))]
    try:
        with Store.open(state) as store:  # the daemon holds the lease: push hands the job to it
            wait_for(lambda: store.lease_holder(time.time()), 60, "the controller holds the lease")
        pushed = await asyncio.to_thread(flex, "push", str(inventory), str(spec), "--timeout", "60", env=env)
        assert pushed.returncode == 0 and "handed to the running controller" in pushed.stdout, pushed
        for thread in threads:
            thread.start()
        loop = f"for i in $(seq {WRITES}); do {sys.executable} -m deployer.cli restart web -i {inventory}; " \
               "echo \"rc=$?\"; done"
        writers = [subprocess.Popen(["sh", "-c", loop], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for _ in range(WRITERS)]
        outputs = [(await asyncio.to_thread(w.communicate, timeout=240))[0] for w in writers]
        with Store.open(state) as store:
            deadline = time.monotonic() + 60
            while store.pending_intents() or store.due_restarts() or \
                    sum(a.observed_status == "running" for a in store.allocations(job="web")) < 2:
                assert time.monotonic() < deadline, f"not applied: {store.pending_intents()}"
                await asyncio.sleep(0.2)
            intents, job = store.intents(), store.get_job("web")
            intent_events = [e for e in store.events(limit=100_000) if e.kind == "intent"]
            launched = store.launched_generations(job="web")
            allocs = [a for a in store.allocations(job="web") if a.desired_status == "run"]
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(60)
        controller.send_signal(signal.SIGTERM)
        controller.wait(30)
    log = (tmp_path / "controller.log").read_text()
    everything = "\n".join([log, *outputs, *(r.stdout + r.stderr for r in readers), json.dumps(console)])
    assert "locked" not in everything.lower() and "Traceback" not in everything, everything[-3000:]
    assert controller.returncode == 0, log[-2000:]
    assert all(out.count("rc=0") == WRITES for out in outputs), outputs
    assert len(readers) >= 3 and all(r.returncode in (0, 1) and json.loads(r.stdout)["jobs"] for r in readers)
    assert "error" not in console and ("skipped" in console or console.get("polls", 0) > 0), console
    requested = WRITERS * WRITES
    assert len(intents) == requested and all(i.kind == "restart" and i.applied_at for i in intents), intents
    assert len(intent_events) == requested, "an intent applied twice, or never"
    assert job is not None and job.restart_generation == requested
    assert {launched[a.id] for a in allocs} == {requested}, "an allocation missed the last restart generation"
    for alloc in allocs:  # coalesced: at least one relaunch, never more than one per intent
        assert 2 <= alloc_state(fleet, alloc.node, alloc.id)["restarts"] <= 1 + requested
    assert sorted(copies(fleet, "web-")) == sorted(a.id for a in allocs)
