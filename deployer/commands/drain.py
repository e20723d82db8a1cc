"""`flex drain NODE`: cordon a node and move its allocations elsewhere (`flex uncordon` undoes it)."""

from __future__ import annotations

import argparse

from deployer.commands.intents import add_target_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex drain`."""
    add_target_arguments(parser, "NODE", "an inventory host (or a node the state database knows)")


def run(args: argparse.Namespace) -> int:
    """Write a drain intent; exit 2 (nothing written) for an unknown node."""
    return submit(args, "drain")
