"""Placements per second of the pure scheduler (a benchmark, not a test).

    python3 -m bench.placements --rounds 5 --out bench/results/placements.json

No hosts, no SSH: a synthetic fleet of ``--nodes`` (default 1,000) GPU nodes (8 x "NVIDIA H100 80GB
HBM3", 80 GiB each, 64 cpus, 1 TiB memory; 25 racks in 2 datacenters; a few nodes unreachable,
cordoned or with an unhealthy GPU) and ``--jobs`` (default 100) jobs of ``--count`` (default 100)
allocations each, 10,000 allocations in all:

- ``gpu1``/``gpu2``/``gpu4``/``gpu8``: batch/training jobs of 1, 2, 4 or 8 GPUs per allocation
  (bin-packed; half of them ask for the model glob "*H100*", which takes the per-GPU fit path);
- ``cpu-service``: services of 1 cpu with two dynamic ports, spread over racks;
- ``gang``: one distributed training job, all or nothing, distinct hosts, 8 GPUs per member.

One round is what the controller does over a pass per job: for each job (in a fixed shuffled order)
rebuild ``Cluster`` from the allocations placed so far (``Cluster.build``, timed as *build*), then one
``place(job, count, cluster)`` call (timed as *place*); its Assignments become ``Allocation`` records
(untimed) for the next job's build. After the 100 jobs, one system job is placed with
``place_system`` on the full cluster. Separately, ``Cluster.build`` is timed for ``--build-sizes``
nodes (default 1,000 and 5,000) empty and full (10 allocations per node, as after a round).

Times are wall time (``--clock wall``, the default) or this process's CPU time (``--clock cpu``: on a
machine that other work shares, it leaves out the time the scheduler waited for a core). The time the
cyclic garbage collector ran inside the timed calls is shown apart ("of which GC").

Every round makes the same decisions (the scheduler is pure); the sha256 of all of them is printed
and written, so a change to the scheduler that must keep its decisions can be checked against it.
Nothing here asserts a wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import hashlib
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deployer
from deployer.models import (
    NODE_READY,
    NODE_UNREACHABLE,
    Allocation,
    GpuState,
    Host,
    JobSpec,
    NodeState,
    Placement,
    Port,
    Resources,
)
from deployer.scheduler import Assignment, Cluster, PlacementResult, place, place_system

GIB = 1024**3
TIB = 1024**4
GPU_NAME = "NVIDIA H100 80GB HBM3"
GPUS_PER_NODE = 8
NODES_PER_RACK = 40
DATACENTERS = ("dc-east", "dc-west")
SEED = 20261123

# (kind, GPUs per allocation, number of jobs out of 100): 7,600 of the 8,000 GPUs when every job is placed
MIX: tuple[tuple[str, int, int], ...] = (
    ("gpu1", 1, 12), ("gpu2", 2, 8), ("gpu4", 4, 6), ("gpu8", 8, 2), ("gang", 8, 1), ("cpu-service", 0, 71))


# --- the synthetic fleet -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """Hosts and node states keyed by name, plus what the controller would pass to Cluster.build."""

    hosts: Mapping[str, Host]
    nodes: Mapping[str, NodeState]
    cordoned: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()

    def build(self, allocations: Sequence[Allocation]) -> Cluster:
        """The controller's Cluster.build call for this fleet."""
        return Cluster.build(self.hosts, self.nodes, allocations, self.cordoned, self.draining)


def node_name(i: int) -> str:
    """Zero-padded, so name order is number order."""
    return f"n{i:05d}"


def make_fleet(n: int) -> Fleet:
    """n ready GPU nodes with a handful of realistic blemishes (unreachable, cordoned, one bad GPU)."""
    hosts: dict[str, Host] = {}
    nodes: dict[str, NodeState] = {}
    racks = max(1, n // NODES_PER_RACK)
    for i in range(n):
        name, rack = node_name(i), i % racks
        hosts[name] = Host(name, address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", user="flex",
                           datacenter=DATACENTERS[rack * len(DATACENTERS) // racks], rack=f"r{rack:03d}",
                           labels={"pool": "gpu", "sku": "h100-sxm", "zone": f"z{rack % 3}"})
        gpus = tuple(GpuState(g, uuid=f"GPU-{i:05d}-{g}", name=GPU_NAME, memory_total=80 * GIB,
                              is_healthy=not (i % 97 == 5 and g == 3)) for g in range(GPUS_PER_NODE))
        status = NODE_UNREACHABLE if i % 331 == 17 else NODE_READY
        nodes[name] = NodeState(name, status=status, cpus=64, memory_total=TIB, memory_available=TIB,
                                gpus_known=True, gpus=gpus)
    cordoned = frozenset({node_name(n // 2), f"{node_name(n // 3)}/0"})
    return Fleet(hosts, nodes, cordoned, frozenset({node_name(n - 1)}))


def make_jobs(jobs: int, count: int) -> list[tuple[str, JobSpec]]:
    """`jobs` (kind, JobSpec) pairs in MIX's proportions (each GPU kind at least once, cpu services
    the rest), in a fixed shuffled order."""
    scale = jobs / sum(n for _, _, n in MIX)
    per_kind = {kind: max(1, round(n * scale)) for kind, _, n in MIX if kind != "cpu-service"}
    per_kind["cpu-service"] = max(0, jobs - sum(per_kind.values()))
    out = [(kind, job_spec(kind, gpus, j, count)) for kind, gpus, _ in MIX for j in range(per_kind[kind])]
    random.Random(SEED).shuffle(out)
    return out[:jobs]


def job_spec(kind: str, gpus: int, j: int, count: int) -> JobSpec:
    """One job of the mix."""
    name = f"{kind}-{j:02d}"
    if kind == "cpu-service":
        return JobSpec(name, ("serve",), count=count, resources=Resources(cpus=1, memory=2 * GIB),
                       ports=(Port("http"), Port("metrics")), placement=Placement(spread="rack"))
    model = "*H100*" if j % 2 else None
    res = Resources(cpus=4 * gpus, memory=64 * GIB * gpus, gpus=gpus, gpu_model=model)
    if kind == "gang":
        return JobSpec(name, ("torchrun",), kind="batch", count=count, gang=True, resources=res,
                       placement=Placement(distinct_hosts=True))
    return JobSpec(name, ("train",), kind="batch", count=count, resources=res)


SYSTEM_JOB = JobSpec("node-exporter", ("exporter",), kind="system", resources=Resources(cpus=0.1, memory=GIB // 4),
                     ports=(Port("metrics", 9100),))


def allocations_of(job: JobSpec, assignments: Sequence[Assignment]) -> list[Allocation]:
    """The records the controller persists for new assignments (they hold resources from now on)."""
    r = job.resources
    return [Allocation(f"{job.name}-{a.index}", job.name, a.node, a.index, cpus=r.cpus, memory=r.memory,
                       gpus=a.gpus, ports=a.ports, rank=a.rank, observed_status="running") for a in assignments]


# --- one round ------------------------------------------------------------------------------------------


class GcClock:
    """Seconds the cyclic garbage collector ran since install (it runs inside whatever was being timed)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._tick)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._tick)

    def _tick(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._start = self.clock()
        else:
            self.total += self.clock() - self._start


@dataclass
class Round:
    """One pass over every job: per-job timings, what was placed, and the digest of every decision."""

    place_s: dict[str, float] = field(default_factory=dict)  # per kind
    build_s: float = 0.0
    build_gc_s: float = 0.0  # of build_s, in the garbage collector
    place_gc_s: float = 0.0  # of the place time, in the garbage collector
    placed: dict[str, int] = field(default_factory=dict)  # per kind
    wanted: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    system_s: float = 0.0
    system_placed: int = 0
    digest: str = ""

    @property
    def total_placed(self) -> int:
        return sum(self.placed.values())

    @property
    def total_place_s(self) -> float:
        return sum(self.place_s.values())


def decision_text(job: JobSpec, result: PlacementResult) -> str:
    """A canonical line per placement call: every node, index, GPU, port, rank and the failure."""
    rows = [f"{a.node}:{a.index}:{a.gpus}:{sorted(a.ports.items())}:{a.rank}:{sorted(a.env.items())}"
            for a in result.assignments]
    return f"{job.name}|{';'.join(rows)}|{result.failure.sentence() if result.failure else ''}\n"


def run_round(fleet: Fleet, jobs: Sequence[tuple[str, JobSpec]], count: int,
              clock: Callable[[], float] = time.perf_counter) -> tuple[Round, list[Allocation]]:
    """Place every job against a cluster rebuilt from the allocations so far; then the system job."""
    rnd, digest = Round(), hashlib.sha256()
    allocs: list[Allocation] = []
    with GcClock(clock) as gc_clock:
        for kind, job in jobs:
            g0, t0 = gc_clock.total, clock()
            cluster = fleet.build(allocs)
            g1, t1 = gc_clock.total, clock()
            result = place(job, count, cluster)
            g2, t2 = gc_clock.total, clock()
            rnd.build_s += t1 - t0
            rnd.build_gc_s += g1 - g0
            rnd.place_s[kind] = rnd.place_s.get(kind, 0.0) + t2 - t1
            rnd.place_gc_s += g2 - g1
            _record(rnd, kind, job, count, result, digest)
            allocs.extend(allocations_of(job, result.assignments))
    cluster = fleet.build(allocs)
    t0 = clock()
    system = place_system(SYSTEM_JOB, cluster)
    rnd.system_s = clock() - t0
    rnd.system_placed = len(system.assignments)
    digest.update(decision_text(SYSTEM_JOB, system).encode())
    rnd.digest = digest.hexdigest()
    return rnd, allocs


def _record(rnd: Round, kind: str, job: JobSpec, count: int, result: PlacementResult, digest: Any) -> None:
    """Count one place call's outcome under its kind and add its decisions to the digest."""
    rnd.placed[kind] = rnd.placed.get(kind, 0) + len(result.assignments)
    rnd.wanted[kind] = rnd.wanted.get(kind, 0) + count
    rnd.calls[kind] = rnd.calls.get(kind, 0) + 1
    if result.failure:
        rnd.failures.append(result.failure.sentence())
    digest.update(decision_text(job, result).encode())


def scaled_allocations(allocs: Sequence[Allocation], base: int, n: int) -> list[Allocation]:
    """The allocations of a `base`-node round copied onto every block of `base` nodes of an n-node fleet."""
    out = []
    for block in range(n // base):
        for a in allocs:
            node = node_name(int(a.node[1:]) + block * base)
            out.append(Allocation(f"{a.id}-{block}", a.job, node, a.index, cpus=a.cpus, memory=a.memory,
                                  gpus=a.gpus, ports=a.ports, rank=a.rank, observed_status=a.observed_status))
    return out


def time_builds(sizes: Sequence[int], base: int, allocs: Sequence[Allocation], rounds: int,
                clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Median/min/max of Cluster.build per size, empty and with the round's allocations scaled up."""
    rows = []
    for n in sizes:
        fleet = make_fleet(n)
        full = scaled_allocations(allocs, base, n)
        for label, records in (("empty", []), ("full", full)):
            times = []
            for _ in range(rounds):
                t0 = clock()
                fleet.build(records)
                times.append(clock() - t0)
            rows.append({"nodes": n, "allocations": len(records), "state": label,
                         "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
    return rows


# --- report ---------------------------------------------------------------------------------------------


def rate_row(name: str, placed: Sequence[int], seconds: Sequence[float], calls: int,
             gc_seconds: Sequence[float] = ()) -> dict[str, Any]:
    """Placements/s per round (median, min, max), the median time of one call and of the collector."""
    rates = [p / s if s else 0.0 for p, s in zip(placed, seconds)]
    return {"kind": name, "calls_per_round": calls, "placed_per_round": placed[0],
            "rate_median": statistics.median(rates) if placed[0] else None,
            "rate_min": min(rates) if placed[0] else None, "rate_max": max(rates) if placed[0] else None,
            "seconds_median": statistics.median(seconds),
            "ms_per_call_median": statistics.median(seconds) / max(calls, 1) * 1000,
            "gc_seconds_median": statistics.median(gc_seconds) if gc_seconds else None}


def summarize(rounds: Sequence[Round]) -> list[dict[str, Any]]:
    """The headline rows (place, place + build) and one row per kind."""
    first = rounds[0]
    calls = sum(first.calls.values())
    placed = [r.total_placed for r in rounds]
    rows = [
        rate_row("place (all jobs)", placed, [r.total_place_s for r in rounds], calls,
                 [r.place_gc_s for r in rounds]),
        rate_row("place + Cluster.build", placed, [r.total_place_s + r.build_s for r in rounds], calls,
                 [r.place_gc_s + r.build_gc_s for r in rounds]),
        rate_row("Cluster.build before each job", [0] * len(rounds), [r.build_s for r in rounds], calls,
                 [r.build_gc_s for r in rounds]),
    ]
    for kind in first.calls:
        rows.append(rate_row(kind, [r.placed[kind] for r in rounds], [r.place_s[kind] for r in rounds],
                             first.calls[kind]))
    rows.append(rate_row("system (place_system)", [r.system_placed for r in rounds], [r.system_s for r in rounds], 1))
    return rows


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def table(rows: Sequence[Mapping[str, Any]], build_rows: Sequence[Mapping[str, Any]]) -> str:
    """Two Markdown tables (they paste into bench/README.md as they are)."""
    head = ["what", "calls/round", "placed/round", "placements/s median", "min-max", "time/round", "per call",
            "of which GC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        span = "-" if r["rate_min"] is None else f"{fmt_rate(r['rate_min'])} - {fmt_rate(r['rate_max'])}"
        lines.append("| " + " | ".join([
            r["kind"], str(r["calls_per_round"]), f"{r['placed_per_round']:,}" if r["placed_per_round"] else "-",
            fmt_rate(r["rate_median"]), span, fmt_ms(r["seconds_median"]), f"{r['ms_per_call_median']:.2f} ms",
            "-" if r["gc_seconds_median"] is None else fmt_ms(r["gc_seconds_median"]),
        ]) + " |")
    lines += ["", "| Cluster.build | nodes | allocations | median | min-max |", "|---|---|---|---|---|"]
    for b in build_rows:
        lines.append(f"| {b['state']} | {b['nodes']:,} | {b['allocations']:,} | {fmt_ms(b['median_s'])} | "
                     f"{fmt_ms(b['min_s'])} - {fmt_ms(b['max_s'])} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Date, CPUs, Python, flex version and git commit, for the JSON file."""
    def out(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return done.stdout.strip()
        except OSError:
            return ""

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else platform.processor()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu_model": cpu, "python": sys.version.split()[0],
        "flex_version": deployer.__version__, "git_commit": out(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(out(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def profiled(fn: Callable[[], Any], top: int) -> None:
    """Run fn under cProfile and print the top functions by own time."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.placements", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--nodes", type=int, default=1000, help="fleet size of a round (default 1000)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per round (default 100)")
    parser.add_argument("--count", type=int, default=100, help="allocations per job (default 100)")
    parser.add_argument("--build-sizes", default="1000,5000", help="node counts for Cluster.build (default 1000,5000)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/placements.json"), help="the JSON result")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter (default); cpu: this process's CPU time, for a busy machine")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also run one round under cProfile and print the top N functions")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.build_sizes.split(",") if x.strip()]
    if args.rounds < 1 or args.nodes < 1 or args.jobs < 1 or args.count < 1:
        parser.error("rounds, nodes, jobs and count must be at least 1")

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    info = machine_info()
    info["load_average"] = os.getloadavg()
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"flex {info['flex_version']}, load average {info['load_average'][0]:.2f}, {args.clock} clock", flush=True)
    fleet, jobs = make_fleet(args.nodes), make_jobs(args.jobs, args.count)
    print(f"{args.nodes} nodes x {GPUS_PER_NODE} GPUs, {len(jobs)} jobs x {args.count} allocations", flush=True)
    rounds: list[Round] = []
    allocs: list[Allocation] = []
    for i in range(args.rounds):
        gc.collect()
        rnd, allocs = run_round(fleet, jobs, args.count, clock)
        rounds.append(rnd)
        print(f"  round {i}: {rnd.total_placed:,} placed in {fmt_ms(rnd.total_place_s)} "
              f"({rnd.total_placed / rnd.total_place_s:,.0f}/s), build {fmt_ms(rnd.build_s)} "
              f"(GC {fmt_ms(rnd.build_gc_s)}), "
              f"system {rnd.system_placed} in {fmt_ms(rnd.system_s)}, {len(rnd.failures)} failures", flush=True)
    digests = {r.digest for r in rounds}
    if len(digests) != 1:
        print(f"rounds made different decisions: {sorted(digests)}", file=sys.stderr)
        return 1
    for sentence in rounds[0].failures:
        print(f"  not all placed: {sentence}")
    rows = summarize(rounds)
    build_rows = time_builds(sizes, args.nodes, allocs, args.rounds, clock)
    print()
    print(table(rows, build_rows))
    print(f"\ndecisions sha256 {rounds[0].digest}")
    if args.profile:
        profiled(lambda: run_round(fleet, jobs, args.count), args.profile)
    info["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info,
           "args": {"clock": args.clock, "rounds": args.rounds, "nodes": args.nodes, "jobs": args.jobs,
                    "count": args.count, "build_sizes": sizes},
           "decisions_sha256": rounds[0].digest, "failures": rounds[0].failures, "summary": rows,
           "cluster_build": build_rows,
           "rounds": [{"place_s": r.place_s, "place_gc_s": r.place_gc_s, "build_s": r.build_s,
                       "build_gc_s": r.build_gc_s, "placed": r.placed, "wanted": r.wanted,
                       "calls": r.calls, "system_s": r.system_s, "system_placed": r.system_placed}
                      for r in rounds]}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
