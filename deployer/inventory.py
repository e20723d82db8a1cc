"""Ansible inventories (YAML or INI, told apart by content) resolved into a frozen Inventory.

    file --parse_ini / YAML walk--> Draft (Ansible's InventoryData operations, each located)
         --reconcile--> every group under `all`, hosts with no group in `ungrouped`
         --merge--> per host: all < groups by (depth, ansible_group_priority, name) < host
         --check--> every problem at once (ConfigError) or the Inventory

Groups and precedence follow ansible-core 2.19 exactly, so `to_ansible_list` equals
`ansible-inventory -i FILE --list`. Connection variables: ansible_host (or ansible_ssh_host),
ansible_port (ansible_ssh_port), ansible_user (ansible_ssh_user), ansible_ssh_private_key_file
(ansible_private_key_file), ansible_connection. flex reaches a host either with SSH or locally, so
'ssh', 'smart', 'paramiko' and 'paramiko_ssh' (bare or as ansible.builtin.*) all mean ssh, 'local'
means local, and any other connection plugin is an error. flex's own variables are FLEX_VARS.
Where Ansible only warns (unknown group keys, names that cannot be safe paths) flex refuses.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deployer.document import Document, did_you_mean, parse_document, read_source
from deployer.errors import ConfigError, Location, Problem
from deployer.hostrange import RangeError, expand, split_port
from deployer.inventory_checks import CONNECTION_ALIASES, FLEX_VARS, SAFE_NAME, check_host, check_variable
from deployer.inventory_ini import looks_like_ini, parse_ini
from deployer.models import Group, Host, Inventory, frozen_mapping

log = logging.getLogger(__name__)

GROUP_KEYS = ("hosts", "children", "vars")
# ansible-inventory --list drops these from hostvars (ansible.constants.INTERNAL_STATIC_VARS).
ANSIBLE_INTERNAL = frozenset((
    "ansible_async_path", "ansible_collection_name", "ansible_config_file", "ansible_dependent_role_names",
    "ansible_diff_mode", "ansible_facts", "ansible_forks", "ansible_inventory_sources", "ansible_limit",
    "ansible_play_batch", "ansible_play_hosts", "ansible_play_hosts_all", "ansible_play_role_names",
    "ansible_playbook_python", "ansible_role_name", "ansible_role_names", "ansible_run_tags",
    "ansible_skip_tags", "ansible_verbosity", "ansible_version", "inventory_dir", "inventory_file",
    "inventory_hostname", "inventory_hostname_short", "groups", "group_names", "hostvars", "playbook_dir",
    "play_hosts", "role_name", "role_names", "role_path", "role_uuid"))
SAFE_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
NAME_FIX = ("start with a letter, digit or '_', use only letters, digits, '.', '-', '_' (and ':' in IPv6), "
            "and put the real address in ansible_host")


@dataclass
class _Entity:
    name: str
    at: Location
    vars: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Location] = field(default_factory=dict)


@dataclass
class _Group(_Entity):
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    priority: int = 1


@dataclass
class _Host(_Entity):
    groups: list[str] = field(default_factory=list)


@dataclass
class _Assignment:
    key: str
    value: Any
    at: Location
    value_at: Location


class Draft:
    """Groups and hosts as a parser declared them, in order, before reconcile and merge (an InventorySink)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, _Group] = {}
        self.hosts: dict[str, _Host] = {}
        self.assignments: list[_Assignment] = []
        self.problems: list[Problem] = []
        for name in ("all", "ungrouped"):
            self.add_group(name, Location(source))
        self.add_child("all", "ungrouped", Location(source))

    def report(self, at: Location, message: str, fix: str) -> None:
        """Record a problem; parsing goes on."""
        self.problems.append(Problem(at, message, fix))

    def has_group(self, name: str) -> bool:
        """True when a group of that name was declared."""
        return name in self.groups

    def add_group(self, name: str, at: Location) -> None:
        """Declare a group (again is fine); a name unfit for paths is reported."""
        if name not in self.groups:
            if not SAFE_NAME.match(name):
                self.report(at, f"group name {name!r} is not safe as a file name or shell argument",
                            "use only letters, digits, '.', '-' and '_' in group names")
            self.groups[name] = _Group(name, at)

    def add_child(self, parent: str, child: str, at: Location) -> None:
        """Make child a child group of parent, refusing a cycle like Ansible does."""
        if child == "all":
            self.report(at, f"group '{parent}' lists 'all' as a child", "remove it: every group is already in all")
            return
        loop = self._path(child, parent)
        if loop:
            chain = " -> ".join([parent, *loop])
            self.report(at, f"group '{child}' includes itself: {chain}",
                        f"remove '{child}' from the children of '{parent}'")
            return
        if child not in self.groups[parent].children:
            self.groups[parent].children.append(child)
            self.groups[child].parents.append(parent)

    def add_hosts(self, pattern: str, group: str, at: Location) -> list[str]:
        """Add every host a pattern (ranges, :port) expands to into group; returns their names."""
        host, port = split_port(pattern)
        try:
            names = expand(host)
        except RangeError as exc:
            fix = "write [begin:end] or [begin:end:step] with begin <= end, e.g. gpu[01:16] or node-[a:c]"
            self.report(Location(at.source, at.line, at.column + exc.offset), exc.message, fix)
            return []
        bad = next((n for n in names if not SAFE_HOST.match(n)), None)
        if bad is not None:
            self.report(at, f"host name {bad!r} is not safe as a file name or shell argument", NAME_FIX)
            return []
        for name in names:
            self._add_host(name, group, port, at)
        return names

    def _add_host(self, name: str, group: str, port: int | None, at: Location) -> None:
        if name not in self.hosts:
            self.hosts[name] = _Host(name, at)
            if port is not None:  # like Ansible, a :port counts only where the host first appears
                self._assign(self.hosts[name], "ansible_port", port, at, at)
        if group not in self.hosts[name].groups:  # the host's short list, not the group's long one
            self.groups[group].hosts.append(name)
            self.hosts[name].groups.append(group)

    def set_var(self, owner: str, key: str, value: Any, at: Location, value_at: Location) -> None:
        """Set a variable on a group or host; a group wins when both have that name (as in Ansible)."""
        entity: _Entity = self.groups.get(owner) or self.hosts[owner]
        if isinstance(entity, _Group) and key == "ansible_group_priority":
            self._set_priority(entity, value, value_at)
            return
        self._assign(entity, key, value, at, value_at)

    def _assign(self, entity: _Entity, key: str, value: Any, at: Location, value_at: Location) -> None:
        self.assignments.append(_Assignment(key, value, at, value_at))
        entity.vars[key] = value
        entity.origins[key] = value_at

    def _set_priority(self, group: _Group, value: Any, at: Location) -> None:
        try:
            group.priority = int(value)
        except (TypeError, ValueError):
            self.report(at, f"ansible_group_priority must be an integer, got {value!r}",
                        "set it to a whole number; higher wins among groups at the same depth")

    def _path(self, start: str, goal: str, seen: set[str] | None = None) -> list[str]:
        """Group names from start down to goal through children, or [] when goal is not below start."""
        if start == goal:
            return [start]
        seen = set() if seen is None else seen
        seen.add(start)
        for child in self.groups[start].children:
            below = [] if child in seen else self._path(child, goal, seen)
            if below:
                return [start, *below]
        return []


def load_inventory(path: str | Path) -> Inventory:
    """Read an Ansible inventory file (YAML or INI, decided by content) and resolve it.

    Raises:
        ConfigError: the file is unreadable or invalid; every problem, located, with its fix.
    """
    return parse_inventory(read_source(path, "inventory file"), str(path))


def parse_inventory(text: str, source: str) -> Inventory:
    """Resolve inventory text (YAML or INI, decided by content); source names it in problems.

    Raises:
        ConfigError: every problem, located, with its fix.
    """
    draft = Draft(source)
    if looks_like_ini(text):
        parse_ini(text, source, draft)
    else:
        _feed_yaml(parse_document(text, source), draft)
    return resolve(draft)


def resolve(draft: Draft) -> Inventory:
    """Reconcile and merge a Draft the way ansible-core does, then check every host.

    Raises:
        ConfigError: the draft's problems plus every bad variable and unusable host.
    """
    _reconcile(draft)
    depths = _depths(draft)
    merged = {name: _merge(draft, host, depths) for name, host in draft.hosts.items()}
    checked = (check_variable(a.key, a.value, a.at, a.value_at) for a in draft.assignments)
    problems = draft.problems + [p for p in checked if p]
    for name, (variables, origins, _) in merged.items():
        problems += check_host(name, draft.hosts[name].at, variables, origins, draft.hosts.keys())
    if problems:
        raise ConfigError(list({(p.location, p.message): p for p in problems}.values()))
    groups = {n: Group(n, tuple(g.hosts), tuple(g.children), frozen_mapping(g.vars)) for n, g in draft.groups.items()}
    hosts = tuple(_host(name, variables, names) for name, (variables, _, names) in merged.items())
    for name in draft.groups.keys() & draft.hosts.keys():
        log.warning("%s: '%s' is both a host and a group; its variables go to the group", draft.source, name)
    log.debug("%s: %d hosts in %d groups", draft.source, len(hosts), len(groups))
    return Inventory(draft.source, hosts, frozen_mapping(groups), frozen_mapping(draft.groups["all"].vars))


def to_ansible_list(inventory: Inventory) -> dict[str, Any]:
    """The inventory in the exact shape `ansible-inventory -i FILE --list` prints (ansible-core 2.19)."""
    listing: dict[str, Any] = {}
    for group in inventory.groups.values():
        entry = {"children": list(group.children)} if group.children else {}
        if group.hosts and group.name != "all":
            entry["hosts"] = list(group.hosts)
        if entry:
            listing[group.name] = entry
    hostvars = {h.name: {k: _jsonable(v) for k, v in h.vars.items() if k not in ANSIBLE_INTERNAL}
                for h in inventory.hosts}
    listing["_meta"] = {"hostvars": {n: v for n, v in hostvars.items() if v}, "profile": "inventory_legacy"}
    return listing


# --- YAML: walk the document in Ansible's order, feeding the Draft ---------------------------------

def _feed_yaml(doc: Document, draft: Draft) -> None:
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else f"a {type(doc.data).__name__}"
        message = f"the top level of a YAML inventory must be a mapping of groups, got {what}"
        draft.problems.append(doc.problem((), message, "start the file with `all:` and put hosts, children and vars under it"))
        return
    for name, body in doc.data.items():
        _feed_group(doc, draft, (str(name),), name, body)


def _feed_group(doc: Document, draft: Draft, path: tuple[str, ...], name: Any, body: Any) -> bool:
    if not isinstance(name, str) or not name:
        draft.problems.append(doc.problem(path, f"group name {name!r} is not a string", "quote it", key=True))
        return False
    if body is not None and not isinstance(body, dict):
        draft.problems.append(doc.problem(path, f"group '{name}' must be a mapping, got {body!r}",
                                          "give the group hosts:, children: or vars: (or leave it empty)"))
        return False
    draft.add_group(name, doc.at(path, key=True))
    for key, value in (body or {}).items():
        _feed_section(doc, draft, path, name, key, value)
    return True


def _feed_section(doc: Document, draft: Draft, path: tuple[str, ...], group: str, key: Any, value: Any) -> None:
    where = (*path, str(key))
    if key not in GROUP_KEYS:
        hint = did_you_mean(str(key), GROUP_KEYS)
        draft.problems.append(doc.problem(where, f"unknown key '{key}' in group '{group}'",
                                          f"{hint} (a group holds only hosts, children and vars)", key=True))
        return
    for entry, inner in _entries(doc, draft, where, value).items():
        at = (*where, str(entry))
        if key == "vars":
            _feed_var(doc, draft, group, at, entry, inner)
        elif key == "children":
            if _feed_group(doc, draft, at, entry, inner):
                draft.add_child(group, entry, doc.at(at, key=True))
        else:
            _feed_hosts(doc, draft, group, at, entry, inner)


def _entries(doc: Document, draft: Draft, path: tuple[str, ...], value: Any) -> dict[Any, Any]:
    if isinstance(value, str):
        return {value: None}  # Ansible accepts `hosts: web1` for `hosts: {web1: }`
    if value is None or isinstance(value, dict):
        return value or {}
    draft.problems.append(doc.problem(path, f"'{path[-1]}' must be a mapping, got a {type(value).__name__}",
                                      "write one name per line ending in ':' (a YAML mapping), not a list"))
    return {}


def _feed_hosts(doc: Document, draft: Draft, group: str, path: tuple[str, ...], pattern: Any, host_vars: Any) -> None:
    if not isinstance(pattern, str):
        draft.problems.append(doc.problem(path, f"host name {pattern!r} is not a string", "quote it", key=True))
        return
    if host_vars is not None and not isinstance(host_vars, dict):
        draft.problems.append(doc.problem(path, f"variables of host '{pattern}' must be a mapping, got {host_vars!r}",
                                          "write `name: value` lines under the host, or nothing"))
        return
    for name in draft.add_hosts(pattern, group, doc.at(path, key=True)):
        for key, value in (host_vars or {}).items():
            _feed_var(doc, draft, name, (*path, str(key)), key, value)


def _feed_var(doc: Document, draft: Draft, owner: str, path: tuple[str, ...], key: Any, value: Any) -> None:
    if not isinstance(key, str):
        draft.problems.append(doc.problem(path, f"variable name {key!r} is not a string", "quote it", key=True))
        return
    draft.set_var(owner, key, value, doc.at(path, key=True), doc.at(path))


# --- reconcile and merge, as ansible.inventory.data and ansible.vars.manager do -------------------

def _reconcile(draft: Draft) -> None:
    for group in list(draft.groups.values()):
        if group.name != "all" and not group.parents:
            draft.add_child("all", group.name, group.at)
    ungrouped = draft.groups["ungrouped"]
    for host in draft.hosts.values():
        member = _membership(draft, host)
        if member - {"all", "ungrouped"}:
            if "ungrouped" in host.groups:
                ungrouped.hosts.remove(host.name)
                host.groups.remove("ungrouped")
        elif "ungrouped" not in member:
            ungrouped.hosts.append(host.name)
            host.groups.append("ungrouped")


def _membership(draft: Draft, host: _Host) -> set[str]:
    member: set[str] = set()
    todo = list(host.groups)
    while todo:
        name = todo.pop()
        if name not in member:
            member.add(name)
            todo.extend(draft.groups[name].parents)
    return member


def _depths(draft: Draft) -> dict[str, int]:
    """Each group's longest distance below `all`: Ansible's Group.depth."""
    depths: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in depths:
            depths[name] = max((depth(p) + 1 for p in draft.groups[name].parents), default=0)
        return depths[name]

    for name in draft.groups:
        depth(name)
    return depths


def _merge(draft: Draft, host: _Host, depths: dict[str, int]) -> tuple[dict[str, Any], dict[str, Location], list[str]]:
    """all < groups sorted by (depth, priority, name) < host; each key remembers where its value came from."""
    member = _membership(draft, host) - {"all"}
    order = sorted(member, key=lambda n: (depths[n], draft.groups[n].priority, n))
    variables: dict[str, Any] = {}
    origins: dict[str, Location] = {}
    for entity in (draft.groups["all"], *(draft.groups[n] for n in order), host):
        variables.update(entity.vars)
        origins.update(entity.origins)
    return variables, origins, sorted(member)


def _host(name: str, variables: dict[str, Any], groups: list[str]) -> Host:
    key_file = _first(variables, "ansible_ssh_private_key_file", "ansible_private_key_file")
    place = {k: None if variables.get(k) is None else str(variables[k]) for k in ("flex_datacenter", "flex_rack")}
    return Host(
        name=name,
        address=_first(variables, "ansible_host", "ansible_ssh_host") or name,
        port=int(_first(variables, "ansible_port", "ansible_ssh_port") or 22),
        user=_first(variables, "ansible_user", "ansible_ssh_user"),
        key_file=os.path.expanduser(key_file) if key_file else None,
        connection=CONNECTION_ALIASES[str(variables.get("ansible_connection") or "ssh")],
        datacenter=place["flex_datacenter"],
        rack=place["flex_rack"],
        labels=frozen_mapping(variables.get("flex_labels") or {}),
        flex_root=variables.get("flex_root"),
        groups=tuple(groups),
        vars=frozen_mapping(variables),
    )


def _first(variables: Mapping[str, Any], *names: str) -> Any:
    return next((variables[n] for n in names if variables.get(n) is not None), None)


def _jsonable(value: Any) -> Any:
    """A value as ansible-inventory's JSON shows it: dates as ISO text, tuples and sets as lists."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["CONNECTION_ALIASES", "FLEX_VARS", "Draft", "load_inventory", "parse_inventory", "resolve",
           "to_ansible_list"]
