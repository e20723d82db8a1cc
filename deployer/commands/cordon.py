"""`flex cordon NODE[/GPU]`: place no new work on a node, or on one GPU of it; running work stays."""

from __future__ import annotations

import argparse

from deployer.commands.intents import add_target_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex cordon`."""
    add_target_arguments(parser, "NODE[/GPU]", "a node, or NODE/INDEX for one GPU (node1/0)")


def run(args: argparse.Namespace) -> int:
    """Write a cordon intent; exit 2 (nothing written) for an unknown node."""
    return submit(args, "cordon")
