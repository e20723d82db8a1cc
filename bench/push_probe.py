"""Time flex's push and probe rounds against N real sshd hosts (a benchmark, not a test).

    python3 -m bench.push_probe --hosts 10,30 --rounds 5 --json bench/results/push_probe.json

Run it as root from the repository root (``tests.fleet`` must be importable: it brings up the
hosts in network namespaces). For each N a fresh fleet is brought up, then every scenario is
repeated ``--rounds`` times; the rounds of one scenario alternate over the tools of ``--tools``
(only ``flex`` today; ansible-core and pyinfra join in issue 6, see ``TOOLS`` below).

Scenarios (all hosts concurrently, one wall time per round; see bench/README.md for details):

- ``connect``        fresh Pool, SSH handshake + auth to every host, nothing run.
- ``cmd-true``       one ``true`` per host on the warm connections (channel + exec round trip).
- ``cmd-python``     one ``python3 -I -S -c pass`` per host (the interpreter start every remote
                     helper and every node runtime verb pays, found on the login shell's PATH).
- ``cmd-python-abs`` the same with /usr/bin/python3 (shows what a PATH shim such as pyenv costs).
- ``cold-push``      from nothing: handshake, runtime install, app push (1 MiB file + HTTP server
                     script), detached start, probe until the allocation runs.
- ``nochange-push``  the same push again on the warm Pool: 0 bytes sent, same pids (verified).
- ``nochange-fresh`` the same, but on a fresh Pool (handshake included, as a CLI run would pay).
- ``probe``          one ``gather_probes`` round (load, memory, allocations of every host).

Nothing here asserts a wall time. A round whose check fails (bytes sent, pid changed, workload not
running, host unreachable) is recorded with ok=false and printed; it never aborts the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import deployer
from deployer.connection import Result, SyncResult, TransportSettings
from deployer.inventory import load_inventory
from deployer.models import Host, JobSpec, NodeState
from deployer.nodeclient import Launch, NodeClient, gather_probes
from deployer.spec import load_job
from deployer.sshconnection import SshConnection
from deployer.transport import Pool

ALLOC_ID = "bench-web"
APP_PORT = 8080  # every host has its own network namespace, so one port number serves all
PAYLOAD_BYTES = 1 << 20
PROBE_TIMEOUT = 10.0
SYSTEM_PYTHON = "/usr/bin/python3"  # cmd-python-abs: the interpreter without PATH lookup (pyenv shims...)
ALIVE_WITHIN = 5.0  # a pushed workload must show as running in a probe within this

# the same server as bench/compare.py's reference workload (it binds without HTTPServer's FQDN lookup,
# which hung ~10 s in the fleet's hosts, where there is no DNS)
SERVER = (Path(__file__).resolve().parent / "peers" / "app" / "server.py").read_text()

JOB = f"""\
# The reference workload of bench/push_probe.py: an app dir with a 1 MiB file and a small HTTP server.
name: {ALLOC_ID}
kind: service
command: [python3, server.py]
files:
  - src: app/server.py
  - src: app/blob.bin
env:
  BENCH_PORT: "{APP_PORT}"
stop:
  signal: SIGTERM
  timeout: 5s
"""


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Sample:
    """One round of one scenario with one tool on N hosts."""

    tool: str
    scenario: str
    n: int
    round: int
    wall_s: float
    per_host_s: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> host -> seconds
    bytes_sent: int = 0
    ok: bool = True
    problems: list[str] = field(default_factory=list)


class MeteredTransport:
    """A Transport that forwards to a Pool and counts what sync() sent, per host."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.bytes_sent: dict[str, int] = {}
        self.files_changed: dict[str, int] = {}

    def reset(self) -> None:
        self.bytes_sent.clear()
        self.files_changed.clear()

    async def run(self, host: Any, argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None) -> Result:
        return await self.pool.run(host, argv, timeout=timeout, input=input, env=env)

    def stream(self, host: Any, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               watches_stdin: bool = False) -> Any:
        return self.pool.stream(host, argv, env=env, watches_stdin=watches_stdin)

    async def sync(self, host: Any, files: Sequence[Any], *, fresh: bool = False) -> SyncResult:
        result = await self.pool.sync(host, files, fresh=fresh)
        self.bytes_sent[result.host] = self.bytes_sent.get(result.host, 0) + result.bytes_sent
        self.files_changed[result.host] = self.files_changed.get(result.host, 0) + len(result.changed)
        return result

    async def close(self) -> None:
        await self.pool.close()


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await fn()
    return time.perf_counter() - started, value


# --- tools -------------------------------------------------------------------------------------


class Tool(Protocol):
    """What every tool of the comparison provides; each method is one timed round on all hosts.

    ansible-core and pyinfra (issue 6) implement this in their own module: `prepare` installs the
    peer into its own virtual environment and writes its inventory (the untimed "peer ready" step),
    `reset_cold` wipes what the tool put on the hosts, and the three push/probe methods run the same
    reference workload (own app dir, own port) and return a Sample. Rounds alternate over tools.
    """

    name: str

    async def prepare(self, fleet: Any, workdir: Path) -> None: ...
    async def reset_cold(self) -> None: ...
    async def cold_push(self, n: int, rnd: int) -> Sample: ...
    async def nochange_push(self, n: int, rnd: int, *, fresh: bool) -> Sample: ...
    async def probe_round(self, n: int, rnd: int) -> Sample: ...
    async def close(self) -> None: ...


class Flex:
    """flex through its library: Pool + NodeClient, exactly what the controller does per host."""

    name = "flex"

    def __init__(self) -> None:
        self.inventory: Any = None
        self.settings = TransportSettings(ssh_config=None)  # the inventory names key and known_hosts
        self.meter: MeteredTransport | None = None
        self.clients: list[NodeClient] = []
        self.job: JobSpec | None = None
        self.pids: dict[str, int | None] = {}  # after the last cold push, for the no-change check
        self.installed = False

    async def prepare(self, fleet: Any, workdir: Path) -> None:
        app = workdir / "app"
        app.mkdir(parents=True, exist_ok=True)
        (app / "server.py").write_text(SERVER)
        (app / "blob.bin").write_bytes(random.Random(0).randbytes(PAYLOAD_BYTES))
        (workdir / "job.yaml").write_text(JOB)
        self.job = load_job(workdir / "job.yaml")
        self.inventory = load_inventory(fleet.inventory_path)
        self.hosts: list[Host] = sorted(self.inventory.hosts, key=lambda h: h.name)
        self.fresh_pool()

    def fresh_pool(self) -> None:
        self.meter = MeteredTransport(Pool(self.hosts, self.settings))
        self.clients = [NodeClient(self.meter, host) for host in self.hosts]

    async def new_pool(self) -> None:
        assert self.meter is not None
        await self.meter.close()
        self.fresh_pool()

    @property
    def pool(self) -> Pool:
        assert self.meter is not None
        return self.meter.pool

    async def close(self) -> None:
        if self.installed:
            await self._all(lambda c: c.stop(ALLOC_ID, timeout=5))
        if self.meter is not None:
            await self.meter.close()

    async def _all(self, fn: Callable[[NodeClient], Awaitable[Any]]) -> list[Any]:
        return await asyncio.gather(*(fn(c) for c in self.clients), return_exceptions=True)

    # --- diagnostics: where the time of a round goes ----------------------------------------

    async def connect_round(self, n: int, rnd: int) -> Sample:
        """Fresh pool, then every host's SSH handshake + authentication at once, nothing run."""
        await self.new_pool()

        async def one(client: NodeClient) -> float:
            conn = self.pool.connection(client.host)
            started = time.perf_counter()
            if isinstance(conn, SshConnection):
                await conn.client()
            return time.perf_counter() - started

        wall, per = await timed(lambda: asyncio.gather(*(one(c) for c in self.clients), return_exceptions=True))
        return self._sample("connect", n, rnd, wall, per)

    async def command_round(self, scenario: str, argv: Sequence[str], n: int, rnd: int) -> Sample:
        """One command per host on the warm connections."""

        async def one(client: NodeClient) -> float:
            started = time.perf_counter()
            result = await self.pool.run(client.host, argv, timeout=30)
            if not result.ok:
                raise RuntimeError(f"{argv[0]} exited {result.exit_status}: {result.stderr.strip()[-200:]}")
            return time.perf_counter() - started

        wall, per = await timed(lambda: asyncio.gather(*(one(c) for c in self.clients), return_exceptions=True))
        return self._sample(scenario, n, rnd, wall, per)

    def _sample(self, scenario: str, n: int, rnd: int, wall: float, per: list[Any]) -> Sample:
        sample = Sample(self.name, scenario, n, rnd, wall)
        for client, value in zip(self.clients, per):
            if isinstance(value, BaseException):
                sample.ok = False
                sample.problems.append(f"{client.host.name}: {value!r}")
            else:
                sample.per_host_s[client.host.name] = value
        return sample

    # --- the reference workload -------------------------------------------------------------

    async def reset_cold(self) -> None:
        """Untimed: stop the allocation, empty every flex root over the transport, drop the Pool."""
        if self.installed:
            await self._all(lambda c: c.stop(ALLOC_ID, timeout=5))

        async def wipe(client: NodeClient) -> None:
            root = await client.root()
            # The root itself may be a mount point (the test fleet bind-mounts a tmpfs there): rm
            # empties it, then fails on the directory (EBUSY); so its exit status is not the test,
            # an empty root is.
            await self.pool.run(client.host, ["rm", "-rf", "--", root], timeout=30)
            left = await self.pool.run(client.host, ["ls", "-A", root], timeout=30)
            if left.stdout.strip():
                raise RuntimeError(f"{client.host.name}: {root} still holds {left.stdout.split()[:5]}")

        for outcome in await self._all(wipe):
            if isinstance(outcome, BaseException):
                raise outcome
        self.installed = False
        self.pids = {}
        await self.new_pool()

    async def _push_one(self, client: NodeClient, connect: bool) -> dict[str, Any]:
        """install + launch + probe until running, on one host; per-phase seconds and what was seen."""
        assert self.job is not None
        phases: dict[str, float] = {}
        started = time.perf_counter()
        if connect:
            conn = self.pool.connection(client.host)
            t = time.perf_counter()
            if isinstance(conn, SshConnection):
                await conn.client()
            phases["connect"] = time.perf_counter() - t
        t = time.perf_counter()
        await client.install()
        phases["install"] = time.perf_counter() - t
        t = time.perf_counter()
        doc = await client.launch(Launch(ALLOC_ID, self.job))
        phases["launch"] = time.perf_counter() - t
        t = time.perf_counter()
        deadline = t + ALIVE_WITHIN
        probes = 0
        while True:
            state = await client.probe()
            probes += 1
            alloc = state.allocations.get(ALLOC_ID)
            if alloc is not None and alloc.is_alive and alloc.pid:
                break
            if time.perf_counter() >= deadline:
                raise RuntimeError(f"{client.host.name}: not running {ALIVE_WITHIN:g}s after start: {alloc}")
            await asyncio.sleep(0.05)
        phases["check"] = time.perf_counter() - t
        return {"total": time.perf_counter() - started, "phases": phases, "pid": alloc.pid,
                "already_running": bool(doc.get("already_running")), "probes": probes}

    async def _push_round(self, scenario: str, n: int, rnd: int, *, connect: bool) -> tuple[Sample, list[Any]]:
        assert self.meter is not None
        self.meter.reset()
        wall, per = await timed(lambda: asyncio.gather(*(self._push_one(c, connect) for c in self.clients),
                                                       return_exceptions=True))
        sample = self._sample(scenario, n, rnd, wall, [v if isinstance(v, BaseException) else v["total"] for v in per])
        for client, value in zip(self.clients, per):
            if isinstance(value, dict):
                for phase, seconds in value["phases"].items():
                    sample.phases.setdefault(phase, {})[client.host.name] = seconds
        sample.bytes_sent = sum(self.meter.bytes_sent.values())
        return sample, per

    async def cold_push(self, n: int, rnd: int) -> Sample:
        sample, per = await self._push_round("cold-push", n, rnd, connect=True)
        self.installed = True
        self.pids = {c.host.name: (v["pid"] if isinstance(v, dict) else None) for c, v in zip(self.clients, per)}
        expected = n * (PAYLOAD_BYTES + len(SERVER.encode()))
        if sample.bytes_sent < expected:
            sample.ok = False
            sample.problems.append(f"cold push sent {sample.bytes_sent} bytes, expected at least {expected}")
        for client, value in zip(self.clients, per):
            if isinstance(value, dict) and value["already_running"]:
                sample.ok = False
                sample.problems.append(f"{client.host.name}: cold start found the workload already running")
        return sample

    async def nochange_push(self, n: int, rnd: int, *, fresh: bool) -> Sample:
        if fresh:
            await self.new_pool()
        sample, per = await self._push_round("nochange-fresh" if fresh else "nochange-push", n, rnd, connect=fresh)
        if sample.bytes_sent != 0:
            sample.ok = False
            sample.problems.append(f"no-change push sent {sample.bytes_sent} bytes")
        for client, value in zip(self.clients, per):
            if not isinstance(value, dict):
                continue
            before = self.pids.get(client.host.name)
            if value["pid"] != before or not value["already_running"]:
                sample.ok = False
                sample.problems.append(f"{client.host.name}: restarted (pid {before} -> {value['pid']}, "
                                       f"already_running={value['already_running']})")
        return sample

    async def probe_round(self, n: int, rnd: int) -> Sample:
        wall, states = await timed(lambda: gather_probes(self.clients, timeout=PROBE_TIMEOUT))
        sample = Sample(self.name, "probe", n, rnd, wall)
        for name, state in states.items():
            if isinstance(state, NodeState) and state.status == "ready" and state.load is not None \
                    and state.memory_available is not None and state.rtt is not None:
                sample.per_host_s[name] = state.rtt
                alloc = state.allocations.get(ALLOC_ID)
                if self.installed and (alloc is None or not alloc.is_alive):
                    sample.ok = False
                    sample.problems.append(f"{name}: the workload is not running")
            else:
                sample.ok = False
                sample.problems.append(f"{name}: {state!r}"[:300])
        return sample


# Issue 6 adds "ansible" and "pyinfra" here (each a Tool whose prepare() is the peer-ready hook).
TOOLS: dict[str, Callable[[], Tool]] = {"flex": Flex}


# --- the run -----------------------------------------------------------------------------------


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """items rotated left by `by`: round r starts with tool r mod len (alternation against drift)."""
    k = by % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


async def bench_fleet(fleet: Any, n: int, rounds: int, tool_names: Sequence[str], workdir: Path,
                      report: Callable[[Sample], None]) -> None:
    tools: list[Tool] = [TOOLS[name]() for name in tool_names]
    for tool in tools:
        await tool.prepare(fleet, workdir / tool.name)
    try:
        flex = next((t for t in tools if isinstance(t, Flex)), None)
        if flex is not None:  # flex-only diagnostics: what one handshake, exec and python start cost
            for rnd in range(rounds):
                report(await flex.connect_round(n, rnd))
                report(await flex.command_round("cmd-true", ["true"], n, rnd))
                report(await flex.command_round("cmd-python", ["python3", "-I", "-S", "-c", "pass"], n, rnd))
                if Path(SYSTEM_PYTHON).exists():  # the hosts share this machine's /usr
                    report(await flex.command_round("cmd-python-abs", [SYSTEM_PYTHON, "-I", "-S", "-c", "pass"],
                                                    n, rnd))
        for rnd in range(rounds):
            for tool in rotated(tools, rnd):
                await tool.reset_cold()
                report(await tool.cold_push(n, rnd))
        for rnd in range(rounds):
            for tool in rotated(tools, rnd):
                report(await tool.nochange_push(n, rnd, fresh=False))
        for rnd in range(rounds):
            for tool in rotated(tools, rnd):
                report(await tool.nochange_push(n, rnd, fresh=True))
        for rnd in range(rounds):
            for tool in rotated(tools, rnd):
                report(await tool.probe_round(n, rnd))
    finally:
        for tool in tools:
            await tool.close()


def summarize(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """One row per (tool, scenario, N): median/min/max wall, per-host median, phases, bytes, ok."""
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.tool, s.scenario, s.n), []).append(s)
    rows = []
    for (tool, scenario, n), group in groups.items():
        walls = [s.wall_s for s in group]
        per_host = [v for s in group for v in s.per_host_s.values()]
        phases: dict[str, list[float]] = {}
        for s in group:
            for phase, by_host in s.phases.items():
                phases.setdefault(phase, []).extend(by_host.values())
        rows.append({
            "tool": tool, "scenario": scenario, "n": n, "rounds": len(group),
            "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "per_host_median_s": statistics.median(per_host) if per_host else None,
            "per_host_max_s": max(per_host) if per_host else None,
            "phase_median_s": {p: statistics.median(v) for p, v in phases.items()},
            "bytes_sent_median": int(statistics.median(s.bytes_sent for s in group)),
            "ok_rounds": sum(s.ok for s in group),
        })
    return rows


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB" if count >= 1 << 20 else f"{count} B"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table (it pastes into bench/README.md as is)."""
    head = ["tool", "scenario", "N", "median", "min-max", "per-host median", "phases (per-host median)",
            "bytes/round", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        phases = ", ".join(f"{p} {fmt_s(v)}" for p, v in r["phase_median_s"].items()) or "-"
        lines.append("| " + " | ".join([
            r["tool"], r["scenario"], str(r["n"]), fmt_s(r["median_s"]),
            f"{fmt_s(r['min_s'])} - {fmt_s(r['max_s'])}", fmt_s(r["per_host_median_s"]), phases,
            fmt_bytes(r["bytes_sent_median"]), f"{r['ok_rounds']}/{r['rounds']}",
        ]) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    def out(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout or done.stderr).strip()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    import asyncssh

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu,
        "memory_total_mib": int(mem) // 1024, "kernel": platform.release(),
        "python": sys.version.split()[0], "flex_version": deployer.__version__,
        "asyncssh": asyncssh.__version__, "openssh": out(["ssh", "-V"]),
        "git_commit": out(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(out(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def clean_shell_rc(fleet: Any) -> None:
    """Give every host an empty ~/.bashrc (and ~/.profile), inside its own mount namespace only.

    The fleet's hosts share this machine's /root. sshd runs every command as `$SHELL -c ...`, and
    Debian's bash sources ~/.bashrc when started by sshd, so whatever this machine's .bashrc does
    (here: `eval "$(pyenv init -)"`, ~20 forks) is paid by every remote command. A bind mount in the
    host's private mount namespace (the fleet unshares with private propagation) hides it there;
    nothing on this machine changes, and it is gone with the fleet.
    """
    empty = fleet.dir / "bench-empty-rc"
    empty.write_text("# bench/push_probe.py --clean-rc: an empty shell rc for the fleet's hosts\n")
    for host in fleet.hosts:
        for rc in ("/root/.bashrc", "/root/.profile"):
            if Path(rc).exists():
                host.exec(["mount", "--bind", str(empty), rc], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.push_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="10,30", help="comma-separated fleet sizes (default 10,30)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument("--tools", default="flex", help=f"comma-separated, of: {', '.join(TOOLS)}")
    parser.add_argument("--json", type=Path, help="write samples, summary and machine info here")
    parser.add_argument("--stock-limits", action="store_true",
                        help="OpenSSH's default MaxStartups/MaxSessions on the hosts (the fleet raises them)")
    parser.add_argument("--clean-rc", action="store_true",
                        help="hide this machine's ~/.bashrc from the hosts' ssh sessions (see clean_shell_rc)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.hosts.split(",") if x.strip()]
    tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tool_names if t not in TOOLS]
    if unknown or args.rounds < 1 or not sizes:
        parser.error(f"unknown tool(s) {unknown}" if unknown else "need at least one size and one round")

    # the test fleet: real sshd hosts in network namespaces
    from tests.fleet import Fleet

    info = machine_info()
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"flex {info['flex_version']}, asyncssh {info['asyncssh']}, {info['openssh']}"
          f"{', hosts with an empty ~/.bashrc' if args.clean_rc else ''}", flush=True)
    samples: list[Sample] = []
    fleets: dict[int, dict[str, float]] = {}

    def report(sample: Sample) -> None:
        samples.append(sample)
        flag = "" if sample.ok else "  FAILED: " + "; ".join(sample.problems[:3])
        print(f"  {sample.tool:6} {sample.scenario:15} N={sample.n:<3} round {sample.round}: "
              f"{fmt_s(sample.wall_s):>9}  {fmt_bytes(sample.bytes_sent):>9}{flag}", flush=True)

    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="flex-bench-") as tmp, \
                Fleet.up(n, stock_limits=args.stock_limits) as fleet:
            fleets[n] = dict(fleet.timings)
            if args.clean_rc:
                clean_shell_rc(fleet)
            print(f"fleet of {n} up in {fleet.timings.get('up', 0):.2f}s", flush=True)
            asyncio.run(bench_fleet(fleet, n, args.rounds, tool_names, Path(tmp), report))
    rows = summarize(samples)
    print()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": info, "args": {"hosts": sizes, "rounds": args.rounds, "tools": tool_names,
                                         "stock_limits": args.stock_limits, "clean_rc": args.clean_rc},
               "fleet_timings_s": fleets, "summary": rows, "samples": [asdict(s) for s in samples]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(s.ok for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
