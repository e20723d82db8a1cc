"""`flex restart JOB|ALLOC`: ask the controller to restart a job's allocations, or one allocation.

A restart is a generation bump: several requests before the next pass coalesce into one restart.
"""

from __future__ import annotations

import argparse

from deployer.commands.intents import add_target_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex restart`."""
    add_target_arguments(parser, "JOB|ALLOC", "a job name (every allocation) or one allocation id")


def run(args: argparse.Namespace) -> int:
    """Write a restart intent; exit 2 (nothing written) when no job or allocation has that name."""
    return submit(args, "restart")
