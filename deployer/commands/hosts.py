"""`flex hosts trust HOST...`: record a host's SSH key when none is known (never replaces one)."""

from __future__ import annotations

import argparse
from typing import Any

from deployer.commands import DEFAULT_INVENTORY, default_inventory, emit, emit_json


def add_inventory_option(parser: argparse.ArgumentParser) -> None:
    """The -i/--inventory option shared by verbs that act on hosts ($FLEX_INVENTORY is the default)."""
    default = default_inventory()
    parser.add_argument("-i", "--inventory", default=default,
                        help=f"inventory file (default: $FLEX_INVENTORY or {DEFAULT_INVENTORY}; now {default})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex hosts`: one sub-verb, `trust`."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    trust = actions.add_parser("trust", help="record the key of hosts with none known (never replaces one)",
                               description="Fetch each host's SSH key and record it in its known_hosts file "
                               "when none is recorded. A changed key is refused: remove the old line yourself "
                               "after checking with the host's owner.")
    trust.add_argument("hosts", nargs="*", metavar="HOST", help="inventory host names")
    trust.add_argument("--all", action="store_true", help="every SSH host of the inventory")
    add_inventory_option(trust)
    trust.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace) -> int:
    """Fetch each host's key and record it when none is known; a changed key is refused (exit 3)."""
    import asyncio

    from deployer.errors import ConfigError
    from deployer.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    names = list(inventory.host_names) if args.all else args.hosts
    if not names:
        raise ConfigError("no host given", "name the hosts to trust, or pass --all")
    unknown = [n for n in names if n not in inventory.host_names]
    if unknown:
        from deployer.document import did_you_mean

        raise ConfigError(f"{args.inventory}: no host {', '.join(unknown)} in the inventory",
                          did_you_mean(unknown[0], inventory.host_names))
    remote = [n for n in names if not inventory.host(n).is_local]
    results: dict[str, str | Exception] = {n: "no key needed (local connection)" for n in names if n not in remote}
    results.update(asyncio.run(_trust_all(inventory, remote)))
    return _report(args, results)


async def _trust_all(inventory: Any, names: list[str]) -> dict[str, str | Exception]:
    import asyncio

    from deployer.errors import TransportError
    from deployer.transport import Pool

    async with Pool.from_inventory(inventory) as pool:
        async def one(name: str) -> str | Exception:
            try:
                return await pool.trust(name)
            except TransportError as exc:
                return exc
        values = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, values))


def _report(args: argparse.Namespace, results: dict[str, str | Exception]) -> int:
    failed = {n: r for n, r in results.items() if isinstance(r, Exception)}
    if args.json:
        emit_json({n: ({"error": str(r)} if isinstance(r, Exception) else {"fingerprint": r})
                   for n, r in results.items()})
    else:
        for name, value in results.items():
            emit(f"{'FAILED' if isinstance(value, Exception) else 'ok':<7} {name}: {value}")
    return 3 if failed else 0
