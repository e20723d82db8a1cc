"""The CPU a command costs the whole machine, not only its own process (a diagnostic).

    python3 -m bench.boxcpu --runs 3 -- flex push FLEET/inventory.yaml job.yaml

For each run: wall time, the machine's busy CPU time over the run (/proc/stat: user, nice, system,
irq and softirq of every core), the command's own CPU (itself and the children it waited for) and
the rest: on a test fleet in network namespaces that is sshd, the hosts' processes and the kernel.
Subtract an idle baseline (`-- sleep 1` gives it) when the rest is small.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def busy_seconds() -> float:
    """Busy CPU time of the whole machine since boot, in seconds."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.boxcpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    worst = 0
    for _ in range(args.runs):
        cpu0, busy0, start = children_cpu(), busy_seconds(), time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
        wall, busy, own = time.perf_counter() - start, busy_seconds() - busy0, children_cpu() - cpu0
        print(f"wall {wall:.2f} s  machine CPU {busy:.2f} s ({busy / wall / os.cpu_count() * 100:.0f} % of "
              f"{os.cpu_count()} cores)  command {own:.2f} s  rest {busy - own:.2f} s  exit {done.returncode}")
        worst = max(worst, done.returncode)
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
