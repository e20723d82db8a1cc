"""`flex inventory INVENTORY [--list | --host HOST]`: the inventory as flex resolved it."""

from __future__ import annotations

import argparse

from deployer.commands import emit, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `flex inventory`."""
    parser.add_argument("inventory", help="Ansible inventory file (YAML or INI)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="JSON in the shape of `ansible-inventory --list`")
    mode.add_argument("--host", metavar="HOST", help="JSON of one host's merged variables")
    parser.add_argument("--json", action="store_true", help="same as --list")


def run(args: argparse.Namespace) -> int:
    """Resolve the inventory and print it; exit 2 with located problems when it is invalid."""
    from deployer.inventory import load_inventory, to_ansible_list

    inventory = load_inventory(args.inventory)
    if args.list or args.json:
        emit_json(to_ansible_list(inventory))
    elif args.host:
        try:
            emit_json(dict(inventory.host(args.host).vars))
        except KeyError:
            from deployer.document import did_you_mean
            from deployer.errors import ConfigError

            hint = did_you_mean(args.host, inventory.host_names)
            raise ConfigError(f"{args.inventory}: no host '{args.host}' in the inventory; {hint}") from None
    else:
        for host in inventory.hosts:
            where = "local" if host.is_local else f"{host.user + '@' if host.user else ''}{host.address}:{host.port}"
            place = "/".join(p for p in (host.datacenter, host.rack) if p) or "-"
            emit(f"{host.name:<24} {where:<28} {place:<14} groups: {', '.join(host.groups) or '-'}")
    return 0
