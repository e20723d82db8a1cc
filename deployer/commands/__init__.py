"""One module per CLI verb: `add_arguments(parser)` and `run(args) -> exit code`.

A verb module imports only argparse-level things at import time; everything heavy (asyncssh, textual,
sqlite3) is imported inside `run`, so building the parser stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

DEFAULT_INVENTORY = "inventory/local.yaml"  # the embedded default fleet (local connection, no sshd)


def default_inventory() -> str:
    """The inventory a verb uses when none is given: $FLEX_INVENTORY, else DEFAULT_INVENTORY."""
    return os.environ.get("FLEX_INVENTORY", DEFAULT_INVENTORY)


def emit_json(value: Any) -> None:
    """Print value as indented JSON on stdout (the `--json` output of every read command)."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def emit(text: str = "") -> None:
    """Print one line of human output on stdout."""
    sys.stdout.write(text + "\n")


def state_path(inventory: str, override: str | None = None) -> str:
    """The state database of an inventory: --state, else $FLEX_STATE, else one file per inventory path
    under $XDG_STATE_HOME/flex (~/.local/state/flex), so `flex push X` and `flex status X` agree."""
    import hashlib
    from pathlib import Path

    if override:
        return override
    if os.environ.get("FLEX_STATE"):
        return os.environ["FLEX_STATE"]
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "flex"
    resolved = Path(inventory).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    return str(base / f"{resolved.stem}-{digest}.db")


def add_inventory_arguments(parser: Any, *, json_output: bool = True, positional: bool = True) -> None:
    """The options every state-reading verb shares: INVENTORY (a positional, or -i when the verb's
    positional is a target), --state, and --json."""
    help_text = f"inventory file (default: $FLEX_INVENTORY or {DEFAULT_INVENTORY})"
    if positional:
        parser.add_argument("inventory", nargs="?", default=default_inventory(), help=help_text)
    else:
        parser.add_argument("-i", "--inventory", default=default_inventory(), help=help_text)
    parser.add_argument("--state", metavar="PATH", default=None,
                        help="state database (default: $FLEX_STATE, or one per inventory under ~/.local/state/flex)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def open_store(args: Any) -> Any:
    """The Store of args.inventory / args.state (created when new)."""
    from deployer.store import Store

    return Store.open(state_path(args.inventory, getattr(args, "state", None)))


def actor() -> str:
    """Who is asking, for the intent log: user@host."""
    import getpass
    import platform

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{platform.node()}"
