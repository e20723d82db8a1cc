"""`flex stop JOB`: set a job's desired state to stop; the controller stops its allocations."""

from __future__ import annotations

import argparse

from deployer.commands.intents import add_target_arguments, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex stop`."""
    add_target_arguments(parser, "JOB", "the job to stop (`flex push` runs it again)")


def run(args: argparse.Namespace) -> int:
    """Write a stop intent; exit 2 (nothing written) when no job has that name."""
    return submit(args, "stop")
