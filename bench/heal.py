"""Time how fast the controller heals a service on real sshd hosts (a benchmark, not a test).

    python3 -m bench.heal --hosts 6 --rounds 20 --grace 3 --clean-rc --json bench/results/heal.json

Run it as root from the repository root (``tests.fleet`` brings the hosts up in network
namespaces). One fleet, one in-process controller (`deployer.controller.Controller` with its default
settings except ``--probe-interval``/``--stale-after``, the transport's default settings), and one
service: 3 copies of playbooks/files/webapp/server.py with an http health check, a restart budget
that never runs out (1000 per hour, ``--restart-delay`` between restarts: 0 by default, so the
numbers show the machinery and not the backoff) and a reschedule grace of ``--grace`` seconds.

Scenarios (bench/README.md has the details):

- ``crash``     SIGKILL one workload (kill -9 inside its host, pid from the allocation's state.json);
                time until state.json shows a new pid running, until the controller's store
                records the allocation running again (observed alive and healthy), and until the
                controller holds a passing health check made AFTER the new run started (the store's
                "running" may rest on the killed run's last check: see bench/README.md).
                ``--rounds`` times, over the 3 allocations in turn.
- ``node-loss`` SIGKILL a host holding an allocation (every process of the host dies); time until
                a replacement is recorded running on another host. ``--node-rounds`` times; the host
                is booted again between rounds. Target: grace + 3 s.
- ``partition`` cut a host holding an allocation off the network until its replacement runs
                elsewhere, then heal it; time from the heal until exactly one copy of every wanted
                allocation runs (processes counted in /proc by FLEX_ALLOC_ID, as
                tests/integration/controllerkit.LIVE_SCRIPT does). ``--partition-rounds`` times.

Nothing here asserts a wall time; a round that times out is recorded with ok=false and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.push_probe import clean_shell_rc, fmt_s, machine_info
from deployer.connection import TransportSettings
from deployer.controller import Controller, ControllerSettings
from deployer.inventory import load_inventory
from deployer.models import Allocation
from deployer.spec import load_job
from deployer.store import Store

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "playbooks" / "files" / "webapp" / "server.py"
JOB = "web"
COUNT = 3
POLL_S = 0.01  # poll state.json and the store every 10 ms
SCAN_POLL_S = 0.02  # the /proc scan of (partition) costs a few ms: every 20 ms
ROUND_TIMEOUT = 60.0


def job_yaml(grace: float, restart_delay: float) -> str:
    return f"""\
name: {JOB}
kind: service
count: {COUNT}
command: [python3, server.py]
files:
  - src: {SERVER}
ports:
  - name: http
health: {{http: /healthz, interval: 1s, timeout: 1s, failures: 2, grace: 1s}}
resources: {{cpus: 0.1, memory: 32MiB}}
restart: {{attempts: 1000, interval: 1h, delay: {restart_delay:g}s, backoff: 1, max_delay: {max(restart_delay, 1):g}s}}
reschedule: {{grace: {grace:g}s}}
stop: {{timeout: 2s}}
"""


@dataclass
class Sample:
    scenario: str
    round: int
    ok: bool = True
    node: str = ""
    alloc: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # measurement -> seconds after the fault
    events: dict[str, float] = field(default_factory=dict)  # first store event of a kind -> seconds after
    log: list[str] = field(default_factory=list)  # the store's events of the round: "+1.234s kind alloc: message"
    problem: str = ""


# --- what runs where, read from /proc (never from flex's records) ---------------------------------


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def live_copies(fleet: Any) -> dict[str, dict[str, list[int]]]:
    """alloc id -> host -> pids of its workload processes (health checks left out, zombies too).

    controllerkit.LIVE_SCRIPT's scan, done once from this machine's /proc instead of one python3 per
    host: every host's processes are visible here, and a process belongs to the host whose pid
    namespace it is in (other fleets on this machine, other tests' workloads, are left out).
    """
    hosts = {}
    for host in fleet.hosts:
        pid = host.sshd_pid
        ns = _pid_ns(pid) if pid else None
        if ns:
            hosts[ns] = host.name
    out: dict[str, dict[str, list[int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ns = _pid_ns(int(entry))
        if ns not in hosts:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state in ("Z", "X"):
            continue
        keys = dict(e.split(b"=", 1) for e in env if b"=" in e)
        if b"FLEX_ALLOC_ID" in keys and b"FLEX_HEALTH_CHECK" not in keys:
            out.setdefault(keys[b"FLEX_ALLOC_ID"].decode(), {}).setdefault(hosts[ns], []).append(int(entry))
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def alloc_state(fleet: Any, node: str, alloc_id: str) -> dict[str, Any] | None:
    """The node runtime's state.json of an allocation (None while unreadable or mid-write)."""
    return _read_json(fleet.host(node).flex_root_path / "allocs" / alloc_id / "state.json")


# --- the controller ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, fleet: Any, workdir: Path, args: argparse.Namespace) -> None:
        self.fleet, self.args = fleet, args
        self.settings = ControllerSettings(probe_interval=args.probe_interval, stale_after=args.stale_after)
        self.store = Store.open(workdir / "state.db")
        self.controller = Controller(load_inventory(fleet.inventory_path), self.store, self.settings,
                                     TransportSettings(ssh_config=None))
        spec_path = workdir / f"{JOB}.yaml"
        spec_path.write_text(job_yaml(args.grace, args.restart_delay))
        self.spec_path = spec_path
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Bench:
        await self.controller.start()
        self.task = asyncio.ensure_future(self.controller.run(stop=self.stop))
        self.store.put_job(load_job(self.spec_path), self.spec_path.read_text(), str(self.spec_path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        await self.controller.close()
        self.store.close()

    def check(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # the loop died: raise its error

    async def until(self, condition: Callable[[], Any], timeout: float, poll: float = POLL_S) -> Any:
        """Poll condition until truthy; None after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            value = condition()
            if value:
                return value
            await asyncio.sleep(poll)
        return None

    def running(self) -> list[Allocation]:
        return [a for a in self.store.allocations(job=JOB) if a.desired_status == "run"
                and a.observed_status == "running"]

    def settled(self) -> bool:
        """3 allocations running on ready nodes, nothing in flight, one copy each, nothing extra."""
        running = self.running()
        if len(running) != COUNT or self.controller.executor.busy:
            return False
        if any(not self.controller.nodes.get(a.node) or not self.controller.nodes[a.node].is_ready for a in running):
            return False
        live = live_copies(self.fleet)
        return set(live) == {a.id for a in running} and all(
            len(h) == 1 and len(p) == 1 for h in live.values() for p in h.values())

    async def settle(self, timeout: float = ROUND_TIMEOUT) -> None:
        if not await self.until(self.settled, timeout, poll=0.1):
            raise RuntimeError(f"the service did not settle within {timeout:g}s: {self.running()} "
                               f"live {live_copies(self.fleet)}")
        await asyncio.sleep(0.5)  # let the passes of the last change finish

    def event_log(self, seq: int, t0: float) -> list[str]:
        """Every event of the job after seq, as text with its time after wall time t0 (for the JSON)."""
        return [f"{event.time - t0:+.3f}s {event.kind} {event.alloc or ''}@{event.node or ''}: {event.message}"
                for event in self.store.events(after_seq=seq, limit=10000, job=JOB)]

    def events_since(self, seq: int, t0: float, alloc: str | None = None) -> dict[str, float]:
        """First event of each kind after seq (for alloc, when given), as seconds after wall time t0."""
        out: dict[str, float] = {}
        for event in self.store.events(after_seq=seq, limit=10000, job=JOB):
            if alloc is not None and event.alloc != alloc:
                continue
            out.setdefault(event.kind, round(event.time - t0, 4))
        return out

    # --- (a) crash -> running again ----------------------------------------------------------------

    async def crash(self, rnd: int) -> Sample:
        await self.settle()
        victims = sorted(self.running(), key=lambda a: a.index)
        victim = victims[rnd % len(victims)]
        sample = Sample("crash", rnd, node=victim.node, alloc=victim.id)
        before = alloc_state(self.fleet, victim.node, victim.id) or {}
        obs = self.controller.nodes[victim.node].allocations.get(victim.id)
        launches = obs.launches if obs else 0
        seq = self.store.last_event_seq()
        host = self.fleet.host(victim.node)
        t0 = time.time()
        t0m = time.monotonic()
        await asyncio.to_thread(host.exec, ["kill", "-9", str(before["pid"])], check=True)
        sample.seconds["kill_exec"] = time.monotonic() - t0m

        def node_running() -> dict[str, Any] | None:
            state = alloc_state(self.fleet, victim.node, victim.id)
            if state and state.get("pid") not in (None, before["pid"]) and state.get("status") == "running":
                return state
            return None

        state = await self.until(node_running, ROUND_TIMEOUT)
        if state is None:
            sample.ok, sample.problem = False, "state.json never showed a new pid running"
            return sample
        sample.seconds["node_running"] = time.monotonic() - t0m
        if state.get("started_at"):
            sample.seconds["node_started_at"] = state["started_at"] - t0  # the supervisor's own clock

        def store_running() -> bool:
            now = self.controller.nodes[victim.node].allocations.get(victim.id)
            record = next((a for a in self.store.allocations(job=JOB) if a.id == victim.id), None)
            return bool(now and now.launches > launches and record and record.observed_status == "running")

        if not await self.until(store_running, ROUND_TIMEOUT):
            sample.ok, sample.problem = False, "the store never recorded the new run running"
            return sample
        sample.seconds["store_running"] = time.monotonic() - t0m
        # Which health result made it "running": the node's health.json when the store said so. A check
        # from before the new run started means the previous run's result was taken for this one.
        health = _read_json(self.fleet.host(victim.node).flex_root_path / "allocs" / victim.id / "health.json")
        started = (alloc_state(self.fleet, victim.node, victim.id) or {}).get("started_at")
        if health and health.get("checked_at") and started:
            sample.seconds["health_checked_minus_run_start"] = health["checked_at"] - started

        def fresh_health() -> bool:  # the controller holds a passing check made after the new run started
            now = self.controller.nodes[victim.node].allocations.get(victim.id)
            return bool(now and now.launches > launches and now.is_alive and now.health and now.health.ok
                        and now.started_at and (now.health.checked_at or 0) >= now.started_at)

        if await self.until(fresh_health, ROUND_TIMEOUT):
            sample.seconds["controller_fresh_health"] = time.monotonic() - t0m
        else:
            sample.ok, sample.problem = False, "no passing health check of the new run reached the controller"
        sample.events = self.events_since(seq, t0, victim.id)
        sample.log = self.event_log(seq, t0)
        return sample

    # --- (b) node loss -> replacement running ------------------------------------------------------

    async def node_loss(self, rnd: int) -> Sample:
        await self.settle()
        victims = sorted(self.running(), key=lambda a: a.index)
        victim = victims[rnd % len(victims)]
        sample = Sample("node-loss", rnd, node=victim.node, alloc=victim.id)
        host = self.fleet.host(victim.node)
        seq = self.store.last_event_seq()
        last_probe = self.controller.nodes[victim.node].observed_at
        t0, t0m = time.time(), time.monotonic()
        await asyncio.to_thread(host.kill)
        sample.seconds["kill_reaped"] = time.monotonic() - t0m
        if last_probe is not None:
            sample.seconds["last_probe_before"] = t0m - last_probe

        def unreachable() -> bool:
            return not self.controller.nodes[victim.node].is_ready

        def replaced() -> Allocation | None:
            return next((a for a in self.running() if a.index == victim.index and a.id != victim.id
                         and a.node != victim.node), None)

        try:
            if await self.until(unreachable, ROUND_TIMEOUT):
                sample.seconds["unreachable"] = time.monotonic() - t0m
            new = await self.until(replaced, ROUND_TIMEOUT)
            if new is None:
                sample.ok, sample.problem = False, "no replacement running"
            else:
                sample.seconds["replacement_running"] = time.monotonic() - t0m
                sample.events = {f"{k}(old)": v for k, v in self.events_since(seq, t0, victim.id).items()}
                sample.events.update(self.events_since(seq, t0, new.id))
                sample.node = f"{victim.node}->{new.node}"
                sample.seconds["target"] = self.args.grace + 3.0
            sample.log = self.event_log(seq, t0)
        finally:
            await asyncio.to_thread(self.boot, host)
        return sample

    def boot(self, host: Any) -> None:
        """Start a killed host again; its new mount namespace needs --clean-rc's bind mounts again (without
        them every remote command on it pays this machine's ~/.bashrc: 0.3-0.5 s instead of 20 ms)."""
        host.start()
        if self.args.clean_rc:
            empty = self.fleet.dir / "bench-empty-rc"
            for rc in ("/root/.bashrc", "/root/.profile"):
                if Path(rc).exists():
                    host.exec(["mount", "--bind", str(empty), rc], check=True)

    # --- (c) partition, heal -> one copy -----------------------------------------------------------

    async def partition(self, rnd: int) -> Sample:
        await self.settle()
        victims = sorted(self.running(), key=lambda a: a.index)
        victim = victims[rnd % len(victims)]
        sample = Sample("partition", rnd, node=victim.node, alloc=victim.id)
        host = self.fleet.host(victim.node)
        seq = self.store.last_event_seq()
        cut, cut_m = time.time(), time.monotonic()
        await asyncio.to_thread(host.partition)
        healed = False
        try:
            def replaced() -> Allocation | None:
                return next((a for a in self.running() if a.index == victim.index and a.id != victim.id), None)

            new = await self.until(replaced, ROUND_TIMEOUT)
            if new is None:
                sample.ok, sample.problem = False, "no replacement while partitioned"
                return sample
            sample.seconds["partition_to_replacement_running"] = time.monotonic() - cut_m
            both = live_copies(self.fleet)
            if victim.id not in both:
                sample.ok, sample.problem = False, "the partitioned copy did not keep running while cut off"
            t0, t0m = time.time(), time.monotonic()
            await asyncio.to_thread(host.heal)
            healed = True
            sample.seconds["partitioned_for"] = t0m - cut_m

            def node_ready() -> bool:
                return self.controller.nodes[victim.node].is_ready

            def one_copy() -> bool:
                wanted = {a.id for a in self.store.allocations(job=JOB) if a.desired_status == "run"}
                live = live_copies(self.fleet)
                return len(wanted) == COUNT and set(live) == wanted and all(
                    len(h) == 1 and len(p) == 1 for h in live.values() for p in h.values())

            async def ready_watch() -> None:
                if await self.until(node_ready, ROUND_TIMEOUT):
                    sample.seconds["node_ready_again"] = time.monotonic() - t0m

            watcher = asyncio.ensure_future(ready_watch())
            done = await self.until(one_copy, ROUND_TIMEOUT, poll=SCAN_POLL_S)
            if done is None:
                sample.ok, sample.problem = False, f"still not one copy each: {live_copies(self.fleet)}"
            else:
                sample.seconds["heal_to_one_copy"] = time.monotonic() - t0m
            await asyncio.wait_for(watcher, ROUND_TIMEOUT)
            # events as seconds after the cut (the stop of the old copy: also after the heal)
            sample.events = {f"{k}(old)": v for k, v in self.events_since(seq, cut, victim.id).items()}
            sample.events.update(self.events_since(seq, cut, new.id))
            sample.node = f"{victim.node}->{new.node}"
            sample.log = self.event_log(seq, cut)
            if "stopping(old)" in sample.events:
                sample.seconds["heal_to_stop_sent"] = sample.events["stopping(old)"] - (t0 - cut)
        finally:
            if not healed:
                await asyncio.to_thread(host.heal)
        return sample


# --- running and reporting ----------------------------------------------------------------------------


async def bench(fleet: Any, workdir: Path, args: argparse.Namespace, report: Callable[[Sample], None]) -> None:
    async with Bench(fleet, workdir, args) as b:
        up = time.monotonic()
        await b.settle(120)
        print(f"service running ({COUNT} copies, healthy) {time.monotonic() - up:.1f}s after submit", flush=True)
        scenarios = [("crash", args.rounds, b.crash), ("node-loss", args.node_rounds, b.node_loss),
                     ("partition", args.partition_rounds, b.partition)]
        for name, rounds, fn in scenarios:
            if name not in args.scenarios:
                continue
            for rnd in range(rounds):
                try:
                    report(await fn(rnd))
                except RuntimeError as exc:
                    report(Sample(name, rnd, ok=False, problem=str(exc)))


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for scenario in dict.fromkeys(s.scenario for s in samples):
        group = [s for s in samples if s.scenario == scenario]
        keys = list(dict.fromkeys(k for s in group for k in s.seconds))
        ekeys = list(dict.fromkeys(k for s in group for k in s.events))
        measures = {}
        for key in keys + [f"event:{k}" for k in ekeys]:
            values = [s.events[key[6:]] if key.startswith("event:") else s.seconds[key] for s in group
                      if (key[6:] in s.events if key.startswith("event:") else key in s.seconds)]
            measures[key] = {"n": len(values), "median": statistics.median(values), "min": min(values),
                             "max": max(values)}
        rows.append({"scenario": scenario, "rounds": len(group), "ok_rounds": sum(s.ok for s in group),
                     "measures": measures})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | measure (seconds after the fault; partition: its heal, its events: the cut) | median | "
             "min | max | n |", "|---|---|---|---|---|---|"]
    for row in rows:
        for key, m in row["measures"].items():
            if key == "target":
                continue
            lines.append(f"| {row['scenario']} | {key} | {fmt_s(m['median'])} | {fmt_s(m['min'])} | "
                         f"{fmt_s(m['max'])} | {m['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.heal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=6, help="fleet size (default 6)")
    parser.add_argument("--rounds", type=int, default=20, help="crash rounds (default 20)")
    parser.add_argument("--node-rounds", type=int, default=3, help="node-loss rounds (default 3)")
    parser.add_argument("--partition-rounds", type=int, default=3, help="partition rounds (default 3)")
    parser.add_argument("--grace", type=float, default=3.0, help="the job's reschedule grace, seconds (default 3)")
    parser.add_argument("--probe-interval", type=float, default=ControllerSettings.probe_interval,
                        help="seconds between a node's probe documents (default %(default)s)")
    parser.add_argument("--stale-after", type=float, default=ControllerSettings.stale_after,
                        help="a node silent this long is unreachable (default %(default)s)")
    parser.add_argument("--restart-delay", type=float, default=0.0,
                        help="the job's restart delay, seconds, no backoff (default 0: restart at once)")
    parser.add_argument("--scenarios", default="crash,node-loss,partition", help="comma-separated subset")
    parser.add_argument("--clean-rc", action="store_true", help="hide this machine's ~/.bashrc from the hosts")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "heal.json")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.hosts < COUNT + 1:
        parser.error(f"need at least {COUNT + 1} hosts (a lost node's copy goes to another host)")

    from tests.fleet import Fleet

    info = machine_info()
    info["loadavg_before"] = os.getloadavg()
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"{info['openssh']}; probe interval {args.probe_interval:g}s, grace {args.grace:g}s, "
          f"stale after {args.stale_after:g}s{', hosts with an empty ~/.bashrc' if args.clean_rc else ''}", flush=True)
    samples: list[Sample] = []

    def report(sample: Sample) -> None:
        samples.append(sample)
        shown = "  ".join(f"{k} {fmt_s(v)}" for k, v in sample.seconds.items() if k != "target")
        flag = "" if sample.ok else f"  FAILED: {sample.problem}"
        print(f"  {sample.scenario:9} round {sample.round:2} {sample.node}: {shown}{flag}", flush=True)

    with tempfile.TemporaryDirectory(prefix="flex-heal-") as tmp, Fleet.up(args.hosts) as fleet:
        if args.clean_rc:
            clean_shell_rc(fleet)
        print(f"fleet of {args.hosts} up in {fleet.timings.get('up', 0):.2f}s", flush=True)
        asyncio.run(bench(fleet, Path(tmp), args, report))
    rows = summarize(samples)
    info["loadavg_after"] = os.getloadavg()
    print()
    print(table(rows))
    print(f"load average before {info['loadavg_before'][0]:.2f}, after {info['loadavg_after'][0]:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "controller_settings": asdict(ControllerSettings(probe_interval=args.probe_interval,
                                                            stale_after=args.stale_after)),
           "job": job_yaml(args.grace, args.restart_delay), "summary": rows,
           "samples": [asdict(s) for s in samples]}
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if all(s.ok for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
