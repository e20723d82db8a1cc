"""The `flex` command line: argument parsing, dispatch, and mapping errors to exit codes.

Each verb's handler lives in deployer/commands/ and is imported only when that verb runs, so
`flex --help` and `flex validate` never load textual or asyncssh. A FlexError becomes a clear message
and its exit code; a traceback means a bug in flex.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import Callable, Sequence

from deployer import __version__
from deployer.errors import FlexError

# verb -> (module under deployer.commands, one-line help). The order is the order of `flex --help`.
VERBS: dict[str, tuple[str, str]] = {
    "validate": ("validate", "check an inventory and job specs; every problem at once, located"),
    "inventory": ("inventory", "show the resolved inventory (--list: like ansible-inventory --list)"),
    "schema": ("schema", "print the JSON Schema of a job spec or an inventory, for editors"),
    "probe": ("probe", "probe hosts once: load, memory, disk, GPUs (NVML) and allocations"),
    "plan": ("plan", "what `flex push` would change, changing nothing; exit 0 no change, 1 changes"),
    "push": ("push", "submit jobs and converge the fleet: place, start, heal; exit 0 when converged"),
    "hosts": ("hosts", "manage SSH host keys: `flex hosts trust HOST...` records a key when none is known"),
    "status": ("status", "jobs, allocations and nodes from the state database; exit 1 when a job is not running"),
    "events": ("events", "the event log, oldest first (-f follows it)"),
    "logs": ("logs", "an allocation's stdout or stderr, also after it stopped (-f follows it to its end)"),
    "restart": ("restart", "restart a job's allocations, or one allocation (the controller applies it)"),
    "stop": ("stop", "stop a job (the controller applies it; `flex push` runs it again)"),
    "drain": ("drain", "move a node's allocations elsewhere and place nothing new there"),
    "cordon": ("cordon", "place nothing new on a node, or on one GPU of it (NODE/GPU)"),
    "uncordon": ("uncordon", "undo cordon or drain of a node, or a GPU's cordon"),
    "controller": ("controller", "run the reconcile loop as a daemon until SIGTERM (one per state database)"),
    "console": ("console", "the live console: nodes, GPUs, jobs, events, logs; restart/stop/drain from it"),
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 2 with a hint, like every other config error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n  fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: every verb with its one-line help and its own options."""
    parser = _Parser(
        prog="flex",
        description="Agentless workload orchestrator: one job file per workload, SSH only, and it heals.",
        epilog="Run `flex VERB --help` for a verb's options. Exit codes: 0 ok, 1 changes or failures, "
        "2 bad input, 3 unreachable hosts, 4 state database.",
    )
    parser.add_argument("--version", action="version", version=f"flex {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for verb, (module, summary) in VERBS.items():
        sub = verbs.add_parser(verb, help=summary, description=summary)
        _module(module).add_arguments(sub)
        sub.set_defaults(_handler=module)
    return parser


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"deployer.commands.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flex` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = _module(args._handler).run
    try:
        return handler(args)
    except FlexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `flex ... | head`: the reader went away; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def entry() -> None:
    """The `flex` console script (and `python -m deployer.cli`): main(), then a quick exit.

    By the time main() returns, everything flex keeps is committed and closed (the state database,
    the SSH connections, the event loop); what the interpreter would still do is tear down the
    modules it imported (asyncssh, cryptography, ...): ~50-100 ms of every command. So the output and
    the log are flushed and the process ends with os._exit. main() itself returns normally, for
    callers in the same process (tests, benchmarks)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # `flex ... | head`: the reader is gone
    logging.shutdown()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":  # pragma: no cover
    entry()
