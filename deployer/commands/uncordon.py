"""`flex uncordon NODE[/GPU]`: undo `flex cordon` (and `flex drain`) of a node, or a GPU's cordon."""

from __future__ import annotations

import argparse

from deployer.commands.intents import add_target_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex uncordon`."""
    add_target_arguments(parser, "NODE[/GPU]", "a node (also ends a drain), or NODE/INDEX for one GPU")


def run(args: argparse.Namespace) -> int:
    """Write an uncordon intent; exit 2 (nothing written) for an unknown node."""
    return submit(args, "uncordon")
