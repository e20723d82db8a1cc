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
