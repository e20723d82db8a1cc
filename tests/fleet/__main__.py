"""Manual use: ``python -m tests.fleet up 5`` (until Ctrl-C), ``python -m tests.fleet cleanup``."""

from __future__ import annotations

import argparse
import signal
import sys

from .netns import Fleet, cleanup_stale
from .system import FleetError


def main(argv: list[str] | None = None) -> int:
    """Bring a fleet up and hold it, or remove the fleets of dead runs."""
    parser = argparse.ArgumentParser(prog="python -m tests.fleet", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="bring up N hosts and keep them until Ctrl-C")
    up.add_argument("n", type=int)
    up.add_argument("--stock-limits", action="store_true", help="OpenSSH's MaxStartups/MaxSessions")
    verbs.add_parser("cleanup", help="remove fleets whose owner process is dead")
    args = parser.parse_args(argv)
    try:
        if args.verb == "cleanup":
            removed = cleanup_stale(min_age_s=0)
            print(f"removed {len(removed)} stale fleet(s): {' '.join(removed)}")
            return 0
        with Fleet.up(args.n, stock_limits=args.stock_limits) as fleet:
            print(
                f"fleet {fleet.id}: {len(fleet)} hosts on {fleet.subnet} in {fleet.timings['up']:.2f}s"
            )
            print(f"inventory:   {fleet.inventory_path}")
            print(f"try:         {' '.join(fleet.ssh_argv(fleet.hosts[0], 'hostname'))}")
            print("Ctrl-C tears it down.", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return 0
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
