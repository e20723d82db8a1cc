"""`flex console [INVENTORY]`: the live console (nodes, GPUs, jobs, events, logs; restart/stop/drain).

The console is the `console` package (Textual). The core never imports it (DESIGN.md, Layout): this
verb loads it by name when it runs, so `flex --help` and every other verb start without textual.
"""

from __future__ import annotations

import argparse
import importlib

from deployer.commands import add_inventory_arguments, state_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex console`."""
    add_inventory_arguments(parser, json_output=False)
    parser.add_argument("--read-only", action="store_true",
                        help="look, never act: restart, stop, drain and cordon are disabled")
    parser.epilog = ("Attaches to the controller that owns the state database, or runs the reconcile loop "
                     "itself when none runs (--read-only never does). Keys: `?` in any view.")


def run(args: argparse.Namespace) -> int:
    """Run the console until q or ctrl+c; exit 0.

    Raises:
        ConfigError: the inventory is invalid (from the data source, before the screen opens).
    """
    source_module = importlib.import_module("console.source")
    app_module = importlib.import_module("console.app")
    source = source_module.Source.open(args.inventory, state_path(args.inventory, args.state),
                                       read_only=args.read_only)
    try:
        app_module.FlexConsole(source, read_only=args.read_only).run()
    finally:
        (getattr(source, "close", None) or source.stop)()
    return 0
