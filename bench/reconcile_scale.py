"""Time one reconcile pass over a large synthetic cluster (a benchmark, not a test; no sshd needed).

    python3 -m bench.reconcile_scale --nodes 1000,5000 --gpus 8 --json bench/results/reconcile_scale.json

For each size N: N ready GPU nodes (``--gpus`` each) and 10 GPU services whose allocations fill
them, ``--per-node`` (default 8) per node with one GPU, an http port and a health check each; the
allocations of a job are spread over all nodes. Every allocation has its record, its observation
on its node, its launch generation and its timers, as the controller's `ClusterSnapshot` would hold
them. Scenarios, each timed as `deployer.reconcile.reconcile(desired, snapshot, now)`:

- ``steady``       everything running and healthy: the plan must be empty (only ignores).
- ``exited-10pct`` 10% of the allocations (chosen at random, seed 0) have exited (exit 1): the plan
                   must hold one restart and one mark per exited allocation.
- ``lost-1pct``    (extra) 1% of the nodes unreachable for longer than the grace, with 2% spare
                   empty nodes added: their allocations are lost and placed again (the scheduler runs).

``--controller`` (on by default) also times the controller's whole pass (`Controller.reconcile_once`:
store reads, snapshot, reconcile, persist, dispatch, node records) on a SQLite store holding the
same jobs and allocations; no node is contacted (operations are scheduled but the node clients are
absent). Memory: the tracemalloc size of the snapshot held (and the peak while building it), and
the peak of one pass. The steady scenario also times probe ingestion: `parse_probe` of one node's
probe document (8 GPUs, 8 allocations) plus the controller's change check, per document, and what
that costs per second at one document per node every ``--probe-interval``. ``--profile`` prints the
top functions of a pass (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.push_probe import fmt_s, machine_info
from deployer.document import parse_document
from deployer.models import (
    NODE_READY,
    NODE_UNREACHABLE,
    Allocation,
    AllocationObservation,
    GpuState,
    HealthResult,
    Host,
    Inventory,
    JobSpec,
    NodeState,
    frozen_mapping,
)
from deployer.plan import IGNORE, LOST, PLACE, RESTART, AllocTimers, ClusterSnapshot, DesiredJob, Plan
from deployer.reconcile import reconcile
from deployer.reconcile_jobs import allocation_version
from deployer.spec import parse_job

ROOT = Path(__file__).resolve().parents[1]
JOBS = 10
NOW = 100_000.0  # the controller's monotonic clock
WALL = 1_800_000_000.0
GIB = 1 << 30


def job_yaml(name: str, count: int) -> str:
    return f"""\
name: {name}
kind: service
count: {count}
command: [python3, train.py]
ports:
  - name: http
health: {{http: /healthz, interval: 10s}}
resources: {{cpus: 1, memory: 4GiB, gpus: 1, gpu_model: "*H100*"}}
reschedule: {{grace: 15s}}
"""


def make_jobs(total_allocs: int) -> tuple[dict[str, DesiredJob], dict[str, str]]:
    """10 jobs whose counts add up to total_allocs; the YAML of each (for the store)."""
    desired, texts = {}, {}
    for j in range(JOBS):
        name = f"job{j:02d}"
        count = total_allocs // JOBS + (1 if j < total_allocs % JOBS else 0)
        text = job_yaml(name, count)
        spec = parse_job(parse_document(text, f"synthetic/{name}.yaml"))
        desired[name] = DesiredJob(spec, submitted_at=WALL - 3600)
        texts[name] = text
    return desired, texts


def node_name(i: int) -> str:
    return f"n{i:05d}"


def make_snapshot(n: int, gpus: int, per_node: int, desired: dict[str, DesiredJob], *, spare: int = 0,
                  exited: float = 0.0, lost_nodes: float = 0.0, seed: int = 0) -> ClusterSnapshot:
    """The snapshot of a full cluster (see the module docstring); `spare` empty ready nodes added."""
    rng = random.Random(seed)
    specs: list[JobSpec] = [d.spec for d in desired.values()]
    versions = {s.name: allocation_version(s) for s in specs}
    next_index = dict.fromkeys(versions, 0)
    hosts: dict[str, Host] = {}
    nodes: dict[str, NodeState] = {}
    allocations: list[Allocation] = []
    timers: dict[str, AllocTimers] = {}
    launched: dict[str, int] = {}
    down = set(rng.sample(range(n), int(n * lost_nodes))) if lost_nodes else set()
    health = HealthResult(ok=True, detail="200", checked_at=WALL - 5, failures=0)
    t = 0
    for i in range(n + spare):
        name = node_name(i)
        hosts[name] = Host(name=name, address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", datacenter="dc1",
                           rack=f"r{i // 40:03d}")
        observations: dict[str, AllocationObservation] = {}
        for slot in range(per_node if i < n else 0):
            spec = specs[t % JOBS]
            t += 1
            index = next_index[spec.name]
            next_index[spec.name] += 1
            alloc = Allocation(id=f"{spec.name}-{index}-{rng.getrandbits(24):06x}", job=spec.name, node=name,
                               index=index, job_version=versions[spec.name], cpus=1.0, memory=4 * GIB,
                               gpus=(slot % gpus,), ports=frozen_mapping({"http": 20000 + slot}),
                               observed_status="running", restarts=0, created_at=WALL - 3600)
            allocations.append(alloc)
            launched[alloc.id] = 0
            timers[alloc.id] = AllocTimers(running_since=NOW - 3000)
            if rng.random() < exited:
                obs = AllocationObservation(alloc.id, "exited", is_alive=False, exit_code=1, started_at=WALL - 3600,
                                            finished_at=WALL - 1, launches=1, health=health)
                timers[alloc.id] = AllocTimers(running_since=NOW - 3000, exit_seen_at=NOW - 0.5)
            else:
                obs = AllocationObservation(alloc.id, "running", is_alive=True, pid=1000 + slot,
                                            start_time="12345", started_at=WALL - 3600, launches=1, health=health)
            observations[alloc.id] = obs
        gpu_states = tuple(GpuState(g, uuid=f"GPU-{i:05d}-{g}", name="NVIDIA H100 80GB HBM3", memory_total=80 * GIB,
                                    memory_used=GIB, utilization=50.0) for g in range(gpus))
        state = NodeState(name, status=NODE_READY, observed_at=NOW - 0.5, boot_id=f"boot-{i}", hostname=name,
                          cpus=128, load=(1.0, 1.0, 1.0), memory_total=1024 * GIB, memory_available=512 * GIB,
                          disk_total=2000 * GIB, disk_free=1000 * GIB, uptime=86400.0, gpus_known=True,
                          gpus=gpu_states, allocations=frozen_mapping(observations))
        if i in down:
            state = replace(state, status=NODE_UNREACHABLE, unreachable_since=NOW - 60, error="no route to host")
        nodes[name] = state
    return ClusterSnapshot(hosts=hosts, nodes=nodes, allocations=tuple(allocations), launched=launched,
                           timers=timers, wall=WALL, salt="bench")


def expected(plan: Plan, scenario: str, snap: ClusterSnapshot) -> str | None:
    """None when the plan is what the scenario must give, else what is wrong."""
    counts = {b: len(plan.bucket(b)) for b in (PLACE, RESTART, LOST, IGNORE)}
    if scenario == "steady":
        return None if plan.is_empty and not plan.items else f"not empty: {plan.summary()}"
    if scenario == "exited-10pct":
        exited = sum(1 for node in snap.nodes.values() for o in node.allocations.values() if not o.is_alive)
        if counts[RESTART] == exited and len(plan.marks) == exited and len(plan.items) == exited:
            return None
        return f"{exited} exited, plan: {plan.summary()}, {len(plan.marks)} marks"
    if scenario == "lost-1pct":
        lost = sum(1 for a in snap.allocations if not snap.node(a.node).is_ready)
        if counts[LOST] == lost and counts[PLACE] == lost:
            return None
        return f"{lost} on lost nodes, plan: {plan.summary()}, pending {dict(plan.pending)}"
    return None


def timed_passes(fn: Callable[[], Any], repeat: int) -> tuple[list[float], list[float], Any]:
    """Wall and CPU seconds (this process) of each call, and the last value. CPU time is the number to
    trust on a shared machine: wall time includes waiting for a core."""
    walls, cpus, value = [], [], None
    for _ in range(repeat):
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, value


def cpu_best(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The least CPU seconds of `repeat` calls."""
    return min(timed_passes(fn, repeat)[1])


def traced(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """fn's value, the traced bytes it leaves allocated (while the value is held), and the peak."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    value = fn()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, current - base, peak - base


def profile(fn: Callable[[], Any], top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- probe ingestion: what the controller spends per probe document ---------------------------------


def probe_text(state: NodeState) -> str:
    """The node runtime's probe document (flexnode.py probe) that would give this NodeState."""
    gpus: list[dict[str, Any]] = [
        {"index": g.index, "uuid": g.uuid, "name": g.name, "healthy": True, "error": None,
         "utilization_gpu": g.utilization, "utilization_memory": 20.0, "memory_used": g.memory_used,
         "memory_total": g.memory_total, "temperature": 55.0, "power_draw": 350.5, "power_limit": 700.0,
         "ecc_uncorrected": 0, "processes": []} for g in state.gpus]
    allocs = {}
    for alloc_id, o in state.allocations.items():
        allocs[alloc_id] = {
            "alloc_id": alloc_id, "pid": o.pid, "pgid": o.pid, "start_time": o.start_time, "boot_id": state.boot_id,
            "started_at": o.started_at, "finished_at": o.finished_at, "exit_code": o.exit_code, "signal": None,
            "supervisor_pid": 999, "error": None, "alive": o.is_alive, "supervisor_alive": True,
            "stored_status": o.status, "status": o.status, "restarts": o.launches, "stop_requested": False,
            "job": alloc_id.split("-")[0], "gpus": [0],
            "health": None if o.health is None else {"ok": o.health.ok, "detail": o.health.detail,
                                                     "checked_at": o.health.checked_at, "failures": 0},
            "log_tail": []}
    doc = {"ok": True, "version": "0.1.0", "time": WALL, "boot_id": state.boot_id, "hostname": state.hostname,
           "cpus": state.cpus, "load": list(state.load or (0, 0, 0)),
           "memory": {"total": state.memory_total, "available": state.memory_available},
           "disk": {"total": state.disk_total, "free": state.disk_free}, "uptime": state.uptime,
           "runtime": {"dir": "/var/lib/flex/runtime/1-abc", "python": "3.11.2"},
           "gpus": {"status": "ok", "reason": None, "driver": "550.54.15", "nvml_version": "12.550.54.15",
                    "gpus": gpus},
           "allocations": allocs, "orphans": [], "trigger": "interval", "seq": 100}
    return json.dumps(doc)


def probe_ingestion(snap: ClusterSnapshot, sample: int = 500) -> dict[str, Any]:
    """CPU per probe document: parse_probe, then the controller's change check against the last one."""
    from deployer.controller import _allocs_changed
    from deployer.probe import parse_probe

    states = list(snap.nodes.values())[:sample]
    texts = [probe_text(s) for s in states]

    def ingest() -> None:
        for state, text in zip(states, texts):
            _allocs_changed(state, parse_probe(state.name, text, observed_at=NOW))

    per_doc = cpu_best(ingest) / len(texts)
    return {"doc_bytes": statistics.median(len(t) for t in texts), "cpu_per_doc_s": per_doc}


# --- the controller's whole pass ---------------------------------------------------------------------


def controller_passes(snap: ClusterSnapshot, texts: dict[str, str], repeat: int, workdir: Path) -> dict[str, Any]:
    """Controller.reconcile_once on a store holding the snapshot's jobs and allocations (no node I/O)."""
    from deployer.controller import Controller, ControllerSettings, node_record
    from deployer.store import Store

    async def run() -> dict[str, Any]:
        store = Store.open(workdir / f"state-{len(snap.nodes)}-{os.getpid()}-{time.monotonic_ns()}.db")
        try:
            with store.transaction() as tx:
                for name, text in texts.items():
                    tx.put_job(parse_job(parse_document(text, f"synthetic/{name}.yaml")), text,
                               f"synthetic/{name}.yaml", now=WALL - 3600)
                for alloc in snap.allocations:
                    tx.save_allocation(alloc, launched_generation=0)
            inventory = Inventory("synthetic", tuple(snap.hosts.values()))
            controller = Controller(inventory, store, ControllerSettings(stale_after=1e9))
            controller.executor.client = lambda name: None  # nothing leaves this process
            if not store.acquire_lease(controller.owner, 60.0, time.time()):
                raise RuntimeError("no lease")
            controller.nodes = dict(snap.nodes)
            # the first pass also saves every node's record (as every pass does every 5 s)
            first, first_cpu = time.perf_counter(), time.process_time()
            plan = controller.reconcile_once()
            first, first_cpu = time.perf_counter() - first, time.process_time() - first_cpu
            await asyncio.gather(*controller.executor.busy.values(), return_exceptions=True)
            walls, cpus = [], []
            for _ in range(repeat):
                gc.collect()
                started, cpu = time.perf_counter(), time.process_time()
                controller.reconcile_once()
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu)
                await asyncio.gather(*controller.executor.busy.values(), return_exceptions=True)
            desired = controller._desired()
            parts = {  # CPU seconds of the pieces of a pass, each alone (best of 3)
                "store.allocations()": cpu_best(store.allocations),
                "store.nodes()": cpu_best(store.nodes),
                "snapshot (store reads + timers)": cpu_best(
                    lambda: controller._snapshot(time.monotonic(), time.time())),
                "reconcile": cpu_best(lambda: reconcile(desired, snap, NOW)),
                "node_record() x nodes (the 5 s save)": cpu_best(
                    lambda: [node_record(state) for state in controller.nodes.values()]),
            }
            store.release_lease(controller.owner)
            await controller.pool.close()
            return {"first_s": first, "first_cpu_s": first_cpu, "first_plan": plan.summary(), "passes_s": walls,
                    "passes_cpu_s": cpus, "parts_cpu_s": parts}
        finally:
            store.close()

    return asyncio.run(run())


# --- main ----------------------------------------------------------------------------------------


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    total = n * args.per_node
    desired, texts = make_jobs(total)
    rows = []
    scenarios: dict[str, dict[str, Any]] = {"steady": {}, "exited-10pct": {"exited": 0.10},
                 "lost-1pct": {"lost_nodes": 0.01, "spare": max(1, n // 50)}}
    for scenario in args.scenarios:
        kwargs = scenarios[scenario]
        snap, held, build_peak = traced(lambda: make_snapshot(n, args.gpus, args.per_node, desired, **kwargs))
        walls, cpus, plan = timed_passes(lambda: reconcile(desired, snap, NOW), args.repeat)
        problem = expected(plan, scenario, snap)
        _, _, pass_peak = traced(lambda: reconcile(desired, snap, NOW))
        row: dict[str, Any] = {
            "nodes": len(snap.nodes), "allocations": len(snap.allocations), "scenario": scenario,
            "plan": plan.summary(), "items": len(plan.items), "marks": len(plan.marks), "ok": problem is None,
            "problem": problem, "pass_s": walls, "pass_cpu_s": cpus, "pass_median_s": statistics.median(walls),
            "pass_min_s": min(walls), "pass_cpu_median_s": statistics.median(cpus), "pass_cpu_min_s": min(cpus),
            "snapshot_bytes": held, "snapshot_build_peak_bytes": build_peak, "pass_peak_bytes": pass_peak,
        }
        if scenario == "steady":
            row["probe"] = probe_ingestion(snap)
            row["probe"]["cpu_per_second_s"] = row["probe"]["cpu_per_doc_s"] * n / args.probe_interval
            print(f"  N={n:<5} probe documents: {row['probe']['doc_bytes'] / 1024:.1f} KiB, "
                  f"{row['probe']['cpu_per_doc_s'] * 1e6:.0f} us cpu each to parse and compare: "
                  f"{row['probe']['cpu_per_second_s']:.2f} s cpu per second at one document per node every "
                  f"{args.probe_interval:g}s", flush=True)
        if args.controller and scenario in ("steady", "exited-10pct"):
            row["controller"] = controller_passes(snap, texts, args.repeat, workdir)
            row["controller_median_s"] = statistics.median(row["controller"]["passes_s"])
            row["controller_cpu_median_s"] = statistics.median(row["controller"]["passes_cpu_s"])
        if args.profile:
            row["profile"] = profile(lambda: reconcile(desired, snap, NOW), args.profile)
        rows.append(row)
        ctl = f"  controller pass: first {fmt_s(row['controller']['first_s'])}, then " \
              f"{fmt_s(row['controller_median_s'])} (cpu {fmt_s(row['controller_cpu_median_s'])})" \
            if "controller" in row else ""
        print(f"  N={n:<5} {scenario:13} pass {fmt_s(row['pass_median_s']):>8} (cpu {fmt_s(row['pass_cpu_median_s'])}) "
              f"snapshot {held / 2**20:.1f} MiB  plan: {row['plan']}{ctl}"
              f"{'' if problem is None else '  WRONG PLAN: ' + problem}", flush=True)
        if "controller" in row:
            print("      controller pass pieces (cpu): " + ", ".join(
                f"{k} {fmt_s(v)}" for k, v in row["controller"]["parts_cpu_s"].items()), flush=True)
        if args.profile:
            print(row["profile"], flush=True)
        del snap, plan
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ["nodes", "allocations", "scenario", "reconcile pass: wall median (cpu median)",
            "controller pass: wall median (cpu); first pass wall (cpu)", "snapshot held", "peak building it",
            "peak of a pass", "plan"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        c = r.get("controller")
        ctl = (f"{fmt_s(r['controller_median_s'])} ({fmt_s(r['controller_cpu_median_s'])}); "
               f"{fmt_s(c['first_s'])} ({fmt_s(c['first_cpu_s'])})") if c else "-"
        lines.append("| " + " | ".join([
            str(r["nodes"]), str(r["allocations"]), r["scenario"],
            f"{fmt_s(r['pass_median_s'])} ({fmt_s(r['pass_cpu_median_s'])})", ctl,
            f"{r['snapshot_bytes'] / 2**20:.1f} MiB", f"{r['snapshot_build_peak_bytes'] / 2**20:.1f} MiB",
            f"{r['pass_peak_bytes'] / 2**20:.1f} MiB", r["plan"] + ("" if r["ok"] else " (WRONG)"),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.reconcile_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1000,5000", help="comma-separated cluster sizes (default 1000,5000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--per-node", type=int, default=8, help="allocations per node, 1 GPU each (default 8)")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per scenario (default 5)")
    parser.add_argument("--scenarios", default="steady,exited-10pct,lost-1pct", help="comma-separated subset")
    parser.add_argument("--probe-interval", type=float, default=1.0,
                        help="for the probe ingestion rate: seconds between a node's documents (default 1)")
    parser.add_argument("--no-controller", dest="controller", action="store_false",
                        help="skip the controller's whole pass (store + snapshot + reconcile + persist)")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP",
                        help="print the TOP functions of a pass by own time (cProfile)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "reconcile_scale.json")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.per_node > args.gpus:
        parser.error("--per-node must be at most --gpus (one GPU per allocation)")

    info = machine_info()
    info["loadavg_before"] = os.getloadavg()
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"load {info['loadavg_before'][0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flex-reconcile-") as tmp:
        for n in sizes:
            rows.extend(bench_size(n, args, Path(tmp)))
    info["loadavg_after"] = os.getloadavg()
    print()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "rows": rows}
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
