"""Where the wall time of one `flex push` (or `flex probe`) goes, host by host (a diagnostic).

    python3 -m bench.push_trace --hosts 30 --runs cold,nochange,probe     # writes bench/results/push_trace.json

Brings up N sshd hosts (tests.fleet, empty shell rc on the hosts like bench.compare), then runs
the flex CLI **in this process** (``deployer.cli.main``) with timing wrappers around the library
calls every push makes, so nothing in deployer/ changes: the SSH handshake
(``SshConnection._handshake``), every remote command (``SshConnection.run``: the sync helpers'
hash and write commands, the node runtime's verbs), ``NodeClient.install`` and ``launch``, every
document of the probe streams (``NodeClient.probe_stream``) and every controller pass
(``Controller.reconcile_once``). ``cold`` runs on freshly rebooted hosts with an empty state
database, ``nochange`` right after it, ``probe`` is ``flex probe INV --json``.

For each run it prints when each step started and ended (median and max over the hosts, seconds
since the CLI's ``main()`` was called) and how long it took, the passes, and the CPU time of this
process (the controller). With ``--census`` it also counts the Python processes every host ran
during the push and their CPU time, by wrapping each host's python3 in ``/usr/bin/time`` (a bind
mount in the host's own mount namespace).

(The ``--prototype`` patches it once had, for the fixes proposed in bench/README.md, are gone: those
fixes are in deployer/ now.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import BENCH, PEERS, reboot_fleet, write_app
from bench.push_probe import fmt_s

SPANS: list[dict[str, Any]] = []  # {host, what, start, end} in seconds since T0
T0 = [0.0]


def now() -> float:
    return time.perf_counter() - T0[0]


def label(argv: list[str] | tuple[str, ...]) -> str:
    """A short name for a remote command."""
    text = " ".join(argv)
    if "import hashlib,json,os,stat" in text:
        return "cmd sync-hash"
    if "def write_batch(src)" in text:
        return "cmd sync-write"
    m = re.search(r"flexnode\.py --root \S+ (\w+)", text)
    if m:
        return f"cmd verb {m.group(1)}"
    return f"cmd {argv[0] if argv else '?'}"


def install_tracing() -> None:
    """Wrap the library calls of a push with timing; idempotent."""
    from deployer.controller import Controller
    from deployer.nodeclient import NodeClient
    from deployer.sshconnection import SshConnection

    if getattr(SshConnection, "_traced", False):
        return
    SshConnection._traced = True  # type: ignore[attr-defined]

    def span(host: str, what: str, start: float) -> None:
        SPANS.append({"host": host, "what": what, "start": start, "end": now()})

    handshake = SshConnection._handshake

    async def traced_handshake(self: Any) -> Any:
        t = now()
        try:
            return await handshake(self)
        finally:
            span(self.name, "ssh handshake", t)

    run = SshConnection.run

    async def traced_run(self: Any, argv: Any, **kw: Any) -> Any:
        t = now()
        try:
            return await run(self, argv, **kw)
        finally:
            span(self.name, label(argv), t)

    install = NodeClient.install

    async def traced_install(self: Any, **kw: Any) -> Any:
        t = now()
        try:
            return await install(self, **kw)
        finally:
            span(self.host.name, "install (runtime sync)", t)

    launch = NodeClient.launch

    async def traced_launch(self: Any, *a: Any, **kw: Any) -> Any:
        t = now()
        try:
            return await launch(self, *a, **kw)
        finally:
            span(self.host.name, "launch (alloc sync + start verb)", t)

    probe_stream = NodeClient.probe_stream

    async def traced_stream(self: Any, *a: Any, **kw: Any) -> Any:
        t = now()
        n = 0
        async for state in probe_stream(self, *a, **kw):
            n += 1
            if n == 1:
                span(self.host.name, "probe stream: first document", t)
            alive = [x for x in state.allocations.values() if x.is_alive]
            if alive and all(x.health is not None and x.health.ok for x in alive):
                if not any(s["host"] == self.host.name and s["what"] == "probe stream: healthy document"
                           for s in SPANS):
                    span(self.host.name, "probe stream: healthy document", t)
            yield state

    reconcile_once = Controller.reconcile_once

    def traced_pass(self: Any) -> Any:
        t = now()
        plan = reconcile_once(self)
        SPANS.append({"host": "-", "what": "controller pass", "start": t, "end": now(),
                      "plan": str(plan)[:120] if getattr(plan, "items", None) else ""})
        return plan

    wait_first = Controller.wait_first_probes

    async def traced_wait_first(self: Any, timeout: float) -> None:
        t = now()
        await wait_first(self, timeout)
        SPANS.append({"host": "-", "what": "wait for every node's first probe", "start": t, "end": now()})

    SshConnection._handshake = traced_handshake  # type: ignore[method-assign]
    SshConnection.run = traced_run  # type: ignore[method-assign]
    NodeClient.install = traced_install  # type: ignore[method-assign]
    NodeClient.launch = traced_launch  # type: ignore[method-assign]
    NodeClient.probe_stream = traced_stream  # type: ignore[method-assign]
    Controller.reconcile_once = traced_pass  # type: ignore[method-assign]
    Controller.wait_first_probes = traced_wait_first  # type: ignore[method-assign]


def run_cli(argv: list[str]) -> tuple[int, float, float, str]:
    """deployer.cli.main(argv) here; (exit code, wall, CPU of this process, output)."""
    from deployer.cli import main

    SPANS.clear()
    out = io.StringIO()
    cpu = time.process_time()
    T0[0] = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    wall = now()
    return code, wall, time.process_time() - cpu, out.getvalue()


def summary(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: count, start (median, max), end (median, max), duration (median, max)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        groups.setdefault(s["what"], []).append(s)
    rows = []
    for what, group in groups.items():
        starts = [s["start"] for s in group]
        ends = [s["end"] for s in group]
        durs = [s["end"] - s["start"] for s in group]
        rows.append({"what": what, "count": len(group), "start_median": statistics.median(starts),
                     "start_min": min(starts), "end_median": statistics.median(ends), "end_max": max(ends),
                     "duration_median": statistics.median(durs), "duration_max": max(durs),
                     "duration_sum": sum(durs)})
    return sorted(rows, key=lambda r: r["start_min"])


def print_summary(name: str, code: int, wall: float, cpu: float, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {name}: exit {code}, {fmt_s(wall)} wall, controller CPU {fmt_s(cpu)}")
    print("| step | count | starts (first / median) | ends (median / last) | duration (median / max) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['count']} | {r['start_min']:.2f} / {r['start_median']:.2f} s | "
              f"{r['end_median']:.2f} / {r['end_max']:.2f} s | {fmt_s(r['duration_median'])} / "
              f"{fmt_s(r['duration_max'])} |")


# --- the hosts' python processes -----------------------------------------------------------------

WRAPPER = '#!/bin/sh\nexec /usr/bin/time -a -o /tmp/.bench-pytime -f "%e %U %S %C" /tmp/.bench-python "$@"\n'


def wrap_python(fleet: Any) -> None:
    """Every python3 started on the hosts runs under /usr/bin/time (in each host's mount namespace)."""
    real = Path("/usr/bin/python3").resolve()
    for host in fleet.hosts:
        host.exec(["sh", "-c", f"cp {real} /tmp/.bench-python && cat > /tmp/.bench-pywrap && "
                   f"chmod 755 /tmp/.bench-pywrap && mount --bind /tmp/.bench-pywrap {real}"],
                  input=WRAPPER, check=True)


def census(fleet: Any) -> dict[str, dict[str, float]]:
    """The python processes the hosts ran (and that ended) since the last call, by kind."""
    head = re.compile(r"^(\d+\.\d+) (\d+\.\d+) (\d+\.\d+) ", re.M)
    kinds: dict[str, dict[str, float]] = {}
    for host in fleet.hosts:
        out = host.exec(["sh", "-c", "cat /tmp/.bench-pytime 2>/dev/null; : > /tmp/.bench-pytime"]).stdout
        out = re.sub(r"^Command (exited|terminated).*\n", "", out, flags=re.M)
        starts = [m.start() for m in head.finditer(out)] + [len(out)]
        for a, b in zip(starts, starts[1:]):
            record = out[a:b]
            m = head.match(record)
            assert m is not None
            wall, user, sys_ = map(float, m.groups())
            cmd = record[m.end():]
            if "threading" in cmd and "killpg" in cmd:
                kind = "probe stream (watchdog wrapper + flexnode probe --stream)"
            elif "def write_batch(src)" in cmd or "Write a batch of files" in cmd:
                kind = "sync write helper"  # before flexnode.py: its source names flexnode.py
            elif "flexnode.py" in cmd:
                verb = re.search(r"flexnode\.py --root \S+ (\w+)", cmd)
                kind = f"flexnode.py {verb.group(1) if verb else '?'}"
            elif "supervisor.py" in cmd:
                kind = "supervisor"
            elif "import hashlib,json,os,stat" in cmd:
                kind = "sync hash helper"
            else:
                kind = cmd.split("\n", 1)[0][:60]
            k = kinds.setdefault(kind, {"count": 0, "cpu_s": 0.0, "wall_s": 0.0})
            k["count"] += 1
            k["cpu_s"] += user + sys_
            k["wall_s"] += wall
    return kinds


def print_census(kinds: dict[str, dict[str, float]], n: int) -> None:
    total = sum(k["cpu_s"] for k in kinds.values())
    print(f"python processes on the hosts (ended during the run): {sum(int(k['count']) for k in kinds.values())}, "
          f"CPU {total:.2f} s ({total / n * 1000:.0f} ms per host)")
    for kind, k in sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"]):
        each = k["cpu_s"] / k["count"] * 1000
        print(f"  {kind:60} {int(k['count']):4}  CPU {k['cpu_s']:6.2f} s  ({each:.0f} ms each)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.push_trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=30)
    parser.add_argument("--runs", default="cold,nochange,probe", help="comma-separated, in order: cold,nochange,probe")
    parser.add_argument("--census", action="store_true", help="count and time the hosts' python processes")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "push_trace.json")
    args = parser.parse_args(argv)
    from tests.fleet import Fleet

    install_tracing()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flex-trace-") as tmp, Fleet.up(args.hosts) as fleet:
        work = Path(tmp)
        write_app(work / "app")
        (work / "job.yaml").write_text((PEERS / "flex" / "job.yaml").read_text())
        state = work / "state.db"
        inv = str(fleet.inventory_path)
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            if run == "cold":
                reboot_fleet(fleet, clean_rc=True)
                for p in work.glob("state.db*"):
                    p.unlink()
                time.sleep(0.5)
            if args.census:
                if run == "cold" or not results:
                    wrap_python(fleet)
                census(fleet)
            cli = ["probe", inv, "--json"] if run == "probe" else \
                ["push", inv, str(work / "job.yaml"), "--state", str(state)]
            code, wall, cpu, out = run_cli(cli)
            rows = summary(SPANS)
            print_summary(run, code, wall, cpu, rows)
            passes = [s for s in SPANS if s["what"] == "controller pass"]
            if passes:
                print("passes at: " + ", ".join(f"{s['start']:.2f}" for s in passes[:20]))
            doc: dict[str, Any] = {"exit": code, "wall_s": wall, "controller_cpu_s": cpu, "steps": rows,
                                   "spans": list(SPANS), "output_tail": out[-2000:]}
            if args.census:
                time.sleep(0.5)
                kinds = census(fleet)
                print_census(kinds, args.hosts)
                doc["census"] = kinds
            results[run] = doc
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hosts": args.hosts, "runs": results},
                                        indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
