"""Start-up time of the flex CLI against ansible-core's and pyinfra's (a benchmark, not a test).

    python3 -m bench.startup            # writes bench/results/startup.json

Runs each command ``--runs`` times (default 20), round-robin over the commands so that machine
drift hits all alike, and prints the median and min-max wall time and the median CPU time (user +
system of the process and its children). Bytecode caching is on for every command (see
``bench.compare.cli_env``: this machine sets PYTHONDONTWRITEBYTECODE). flex is its console script
next to this interpreter (not a PATH shim such as pyenv's); the peers come from
``bench/.venv-peers`` (made by ``python3 -m bench.compare``, or here when absent). Also timed: the
bare interpreter and the imports every SSH verb of flex pays (``deployer.nodeclient``), and the
heaviest imports of ``flex --help`` and of an SSH verb (``python3 -X importtime``; ``--importtime 0``
skips them).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.compare import BENCH, DEFAULT_VENV, Flex, cli_env, ensure_peers, loadavg
from bench.push_probe import fmt_s, machine_info

ROOT = BENCH.parent


def commands(venv: Path) -> dict[str, list[str]]:
    flex = Flex.command()
    py = sys.executable
    return {
        "flex --help": [*flex, "--help"],
        "flex validate inventory/local.yaml": [*flex, "validate", "inventory/local.yaml"],
        "ansible --version": [str(venv / "bin" / "ansible"), "--version"],
        "pyinfra --version": [str(venv / "bin" / "pyinfra"), "--version"],
        "python3 -c pass (flex's interpreter)": [py, "-c", "pass"],
        "python3 -c 'import deployer.nodeclient' (every SSH verb)": [py, "-c", "import deployer.nodeclient"],
    }


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, check=False, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


def importtime(argv: list[str], top: int) -> list[tuple[str, float]]:
    """The heaviest imports (depth <= 3) (cumulative microseconds -> seconds) of `python3 -X importtime`."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True,
                          text=True, check=False, env=cli_env(DEFAULT_VENV))
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if m and len(m.group(2)) <= 6:  # the top level and three below it
            rows.append((f"{m.group(3)} (depth {len(m.group(2)) // 2})", int(m.group(1)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peers' virtualenv")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "startup.json")
    parser.add_argument("--importtime", type=int, default=8, metavar="N",
                        help="print the N heaviest imports of flex (0: skip)")
    args = parser.parse_args(argv)
    peers = ensure_peers(args.venv)
    cmds = commands(args.venv)
    info = machine_info()
    info["peers"] = peers
    print(f"# {info['date']}  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}; "
          f"ansible-core {peers['ansible-core']}, pyinfra {peers['pyinfra']}; load {loadavg()}", flush=True)
    env = cli_env(args.venv)  # bytecode caching on, as after a pip install (see bench.compare.cli_env)
    for argv_ in cmds.values():  # warm the page cache and the bytecode caches
        run_once(argv_, env)
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cmds}
    loads = [loadavg()[0]]
    for _ in range(args.runs):
        for name, argv_ in cmds.items():
            samples[name].append(run_once(argv_, env))
        loads.append(loadavg()[0])
    rows: list[dict[str, Any]] = []
    for name, runs in samples.items():
        walls = [w for w, _, _ in runs]
        rows.append({"command": name, "argv": shlex.join(cmds[name]), "runs": len(runs),
                     "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
                     "cpu_median_s": statistics.median(c for _, c, _ in runs),
                     "failed_runs": sum(rc != 0 for _, _, rc in runs)})
    print("\n| command | median | min-max | CPU median |\n|---|---|---|---|")
    for r in rows:
        bad = f" ({r['failed_runs']} failed)" if r["failed_runs"] else ""
        print(f"| `{r['command']}`{bad} | {fmt_s(r['median_s'])} | {fmt_s(r['min_s'])} - {fmt_s(r['max_s'])} "
              f"| {fmt_s(r['cpu_median_s'])} |")
    print(f"\nload average (1 min) during the run: {min(loads):.2f} - {max(loads):.2f}")
    imports: dict[str, Any] = {}
    if args.importtime:
        for label, code in (("flex --help", "from deployer.cli import main; import sys; sys.argv=['flex','--help']\n"
                                                 "try: main()\nexcept SystemExit: pass"),
                            ("an SSH verb (flex probe)", "import deployer.commands.probe, deployer.nodeclient, "
                                                         "deployer.transport, deployer.inventory")):
            heavy = importtime(["-c", code], args.importtime)
            imports[label] = heavy
            print(f"\nheaviest imports of {label} (cumulative):")
            for mod, seconds in heavy:
                print(f"  {fmt_s(seconds):>8}  {mod}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "runs": args.runs, "load1": loads, "summary": rows,
                                         "imports": imports,
                                         "samples": {k: [list(x) for x in v] for k, v in samples.items()}},
                                        indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(r["failed_runs"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
