"""`flex schema job|inventory`: print a JSON Schema that editors (yaml-language-server) can use."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

from deployer.commands import emit

SCHEMAS = {"job": "job.schema.json", "inventory": "inventory.schema.json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex schema`."""
    parser.add_argument("which", choices=sorted(SCHEMAS), help="which schema to print")


def load_schema(which: str) -> dict[str, Any]:
    """The packaged JSON Schema called which ('job' or 'inventory')."""
    text = resources.files("deployer.schemas").joinpath(SCHEMAS[which]).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def run(args: argparse.Namespace) -> int:
    """Print the schema; exit 0."""
    emit(json.dumps(load_schema(args.which), indent=2))
    return 0
