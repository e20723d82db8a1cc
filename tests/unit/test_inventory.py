"""The inventory loader: facts of the good fixtures, every bad fixture's located problems, INI values.

A parsing bug gets a new fixture file: a good one under tests/fixtures/inventories/ (the integration
test compares it with ansible-inventory), a bad one under bad/ with a NAME.expected file listing
`LINE:COLUMN text-in-the-message`, one line per problem.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.errors import ConfigError
from deployer.inventory import load_inventory, parse_inventory, to_ansible_list
from deployer.inventory_ini import parse_value
from deployer.models import Inventory

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "inventories"
EXAMPLES = ROOT / "inventory"
BAD = sorted(p for p in (FIXTURES / "bad").iterdir() if p.suffix in (".yaml", ".ini"))
SCHEMA = json.loads((ROOT / "deployer" / "schemas" / "inventory.schema.json").read_text())


def load(name: str) -> Inventory:
    """A fixture (or, with an inventory/ prefix, an example) by file name."""
    return load_inventory(ROOT / name if name.startswith("inventory/") else FIXTURES / name)


def fact(inventory: Inventory, host: str, path: str) -> Any:
    """host.attribute or host.attribute.key of one host, e.g. 'vars.color' or 'labels.role'."""
    attribute, _, key = path.partition(".")
    value = getattr(inventory.host(host), attribute)
    return value[key] if key else value


FACTS = [
    # precedence (ansible-core: all < groups by depth, priority, name < host)
    ("precedence.yaml", "h2", "vars.color", "host", "a host variable beats its groups"),
    ("precedence.yaml", "h1", "vars.color", "child", "a child group beats its parent"),
    ("precedence.yaml", "h1", "vars.shape", "parent", "a parent group beats all"),
    ("precedence.yaml", "h3", "vars.sibling", "zebra", "siblings at one depth merge in name order, the last name wins"),
    ("precedence.yaml", "h1", "vars.size", "child", "a group two levels down beats groups one level down"),
    ("precedence.yaml", "h4", "vars.tie", "both", "depth is the longest path from all"),
    ("precedence.yaml", "h1", "vars.settings", {"c": 3}, "a mapping is replaced, not merged"),
    ("precedence.yaml", "h3", "vars.who", "second", "the last host entry wins for the same variable"),
    ("priority.yaml", "p1", "vars.winner", "alpha", "ansible_group_priority beats the name order"),
    ("priority.yaml", "p2", "vars.depth_test", "inner", "depth beats ansible_group_priority"),
    ("deep_nesting.yaml", "deep1", "vars.level", "shelf", "the deepest of four nested groups wins"),
    ("deep_nesting.yaml", "deep2", "vars.from_region", 1, "variables flow down four levels"),
    ("deep_nesting.yaml", "deep1", "groups", ("rack", "region", "shelf", "zone"), "a host is in every ancestor group"),
    ("deep_nesting.yaml", "zonehost", "vars.level", "zone", "a host directly in a middle group gets that level"),
    # membership
    ("multi_group.yaml", "shared", "groups", ("db", "only_children", "web"), "one host in several groups"),
    ("multi_group.yaml", "shared", "vars.note", "from db", "host variables in a later group entry win"),
    ("multi_group.yaml", "loner", "groups", ("ungrouped",), "a host only under all is ungrouped"),
    ("multi_group.yaml", "w1", "groups", ("only_children", "web"), "a grouped host leaves an explicit ungrouped"),
    ("ini_children.ini", "early.example.com", "groups", ("ungrouped",), "INI hosts before any section are ungrouped"),
    ("ini_children.ini", "later.example.com", "groups", ("frontend", "site"),
     "a later section takes a host out of ungrouped"),
    ("ini_children.ini", "be1.example.com", "vars.tier", "back", "INI child group vars beat the parent's"),
    # connection fields
    ("ranges.yaml", "edge02", "port", 2222, "a :port on a range applies to every host"),
    ("ranges.yaml", "edge02", "user", "edge", "range host variables apply to every host"),
    ("yaml_forms.yaml", "alpha.example.com", "port", 2200, "a :port after a name is ansible_port"),
    ("yaml_forms.yaml", "2001:db8::7", "port", 2202, "a bracketed IPv6 address takes a port"),
    ("yaml_forms.yaml", "beta.example.com", "port", 2203, "ansible_port sets the port"),
    ("yaml_forms.yaml", "lonely.example.com", "port", 22, "the port defaults to 22"),
    ("yaml_forms.yaml", "lonely.example.com", "vars.released", datetime.date(2024, 5, 1), "YAML dates stay dates"),
    ("ini_values.ini", "web1", "address", "10.0.0.1", "ansible_host is the address"),
    ("ini_values.ini", "web3", "address", "web3", "the name is the address without ansible_host"),
    ("ini_values.ini", "web1", "user", "deploy", "ansible_user is the user"),
    ("ini_values.ini", "web3", "port", 2200, "an INI :port is the port"),
    ("fleet.yaml", "n04.dc1.example.com", "labels", {"accelerator": "h100"}, "host labels replace group labels"),
    ("fleet.yaml", "n03.dc1.example.com", "rack", "r1", "flex_rack from a rack group"),
    ("fleet.yaml", "n3.dc2.example.com", "datacenter", "dc2", "flex_datacenter from a datacenter group"),
    ("fleet.yaml", "n3.dc2.example.com", "flex_root", "/var/lib/flex", "flex_root from all.vars"),
    ("inventory/local.yaml", "node1", "connection", "local", "the default inventory needs no SSH"),
    ("inventory/lab.yaml", "gpu02.dc2.example.com", "port", 2222, "lab dc2 listens on 2222"),
    ("inventory/lab.yaml", "bastion.example.com", "address", "203.0.113.10", "the lab bastion has a public address"),
    ("inventory/lab.yaml", "gpu05.dc1.example.com", "vars.flex_proxy_jump", "bastion.example.com",
     "lab hosts jump through the bastion"),
    ("inventory/lab.yaml", "web1.dc1.example.com", "key_file", os.path.expanduser("~/.ssh/flex_lab"),
     "the key file is expanded"),
]

INI_VALUES = [
    ("5", 5, "an integer"),
    ("True", True, "a Python boolean"),
    ("yes", "yes", "a YAML boolean stays text"),
    ('"quoted str"', "quoted str", "a quoted string loses its quotes"),
    ("hello world # comment", "hello world # comment", "text keeps a trailing comment"),
    ("7 # comment", 7, "a literal ignores a trailing comment"),
    ("[1, 'two']", [1, "two"], "a list"),
    ("(1, 2)", [1, 2], "a tuple becomes a list"),
    ("{'a': 1}", {"a": 1}, "a dict"),
    ("None", None, "None"),
    ("010", "010", "a leading zero is not a number"),
    ("0x1f", 31, "hexadecimal"),
    ("...", "...", "an ellipsis is text"),
    ("1j", "1j", "a complex number is text"),
    ("b'raw'", "raw", "bytes become text"),
    ("", "", "nothing is the empty string"),
]

DETECTION = [
    ("all:\n  hosts:\n    h1:\n", "hosts.ini", "YAML in a file named .ini is read as YAML"),
    ("[web]\nh1\n", "hosts.yaml", "INI in a file named .yaml is read as INI"),
    ("# comment\n; another\nh1 ansible_port=2200\n", "hosts", "an INI file that starts with a host line is INI"),
    ("---\nall:\n  hosts:\n    h1:\n", "hosts", "a YAML document marker means YAML"),
    ('{"all": {"hosts": {"h1": null}}}', "hosts.json", "JSON is YAML"),
]


@pytest.mark.parametrize(("name", "host", "path", "expected"), [f[:4] for f in FACTS], ids=[f[4] for f in FACTS])
def test_resolved_fact(name: str, host: str, path: str, expected: Any) -> None:
    assert fact(load(name), host, path) == expected


def expected_problems(path: Path) -> list[tuple[int, int, str]]:
    """The NAME.expected file next to a bad fixture: `LINE:COLUMN text` per line, '#' comments."""
    rows = []
    for line in path.with_name(path.name + ".expected").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            where, text = line.split(" ", 1)
            row, column = where.split(":")
            rows.append((int(row), int(column), text))
    return rows


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_inventory_reports_every_problem_located(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    got = [(p.location.line, p.location.column, p.message) for p in caught.value.problems]
    want = expected_problems(path)
    assert len(got) == len(want), caught.value.render()
    for (line, column, message), (want_line, want_column, text) in zip(got, sorted(want)):
        assert (line, column) == (want_line, want_column) and text in message, caught.value.render()
    assert all(p.fix and p.location.source == str(path) for p in caught.value.problems)


def test_three_mistakes_give_three_problems_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_inventory(FIXTURES / "bad" / "three_errors.yaml")
    assert len(caught.value.problems) == 3
    assert "3 problems found" in str(caught.value)


@pytest.mark.parametrize(("text", "value"), [c[:2] for c in INI_VALUES], ids=[c[2] for c in INI_VALUES])
def test_ini_value_is_read_as_ansible_reads_it(text: str, value: Any) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize(("text", "source"), [c[:2] for c in DETECTION], ids=[c[2] for c in DETECTION])
def test_format_is_told_by_content(text: str, source: str) -> None:
    assert parse_inventory(text, source).host("h1").name == "h1"


@pytest.mark.parametrize("pair", [("fleet.yaml", "fleet.ini"), ("inventory/lab.yaml", "inventory/lab.ini")],
                         ids=["the fixture fleet is the same in INI and YAML", "the lab is the same in INI and YAML"])
def test_ini_and_yaml_of_one_fleet_resolve_equal(pair: tuple[str, str]) -> None:
    yaml_form, ini_form = (dataclasses.replace(load(name), source="") for name in pair)
    assert yaml_form == ini_form


def test_connection_aliases_mean_ssh_or_local() -> None:
    text = "".join(f"h{i} ansible_connection={c}\n" for i, c in enumerate(
        ["smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh", "ansible.builtin.local", "local", "ssh"]))
    assert [h.connection for h in parse_inventory(text, "x").hosts] == ["ssh"] * 4 + ["local"] * 2 + ["ssh"]


def test_old_ssh_variable_names_still_count() -> None:
    text = "h1 ansible_ssh_host=10.0.0.9 ansible_ssh_port=2201 ansible_ssh_user=ops ansible_private_key_file=/k\n"
    host = parse_inventory(text, "x").host("h1")
    assert (host.address, host.port, host.user, host.key_file) == ("10.0.0.9", 2201, "ops", "/k")


def test_inventory_vars_are_the_all_groups_own() -> None:
    inventory = load("inventory/local.yaml")
    assert dict(inventory.vars) == {"flex_playbooks": [
        "../playbooks/webapp.yaml", "../playbooks/etl.yaml", "../playbooks/nightly-report.yaml"]}


def test_local_example_gives_each_node_its_own_root() -> None:
    hosts = load("inventory/local.yaml").hosts
    assert [h.name for h in hosts] == ["node1", "node2"] and all(h.is_local and h.datacenter and h.rack for h in hosts)
    assert len({h.flex_root for h in hosts}) == 2


def test_lab_example_has_two_datacenters_racks_gpus_and_a_bastion() -> None:
    inventory = load("inventory/lab.yaml")
    assert {h.datacenter for h in inventory.hosts} == {"dc1", "dc2"}
    assert len({h.rack for h in inventory.hosts}) == 4
    assert len([h for h in inventory.hosts if "gpu" in h.groups]) == 10
    assert inventory.host("bastion.example.com").vars.get("flex_proxy_jump") is None


def test_ansible_list_keeps_empty_groups_only_as_children() -> None:
    listing = to_ansible_list(load("multi_group.yaml"))
    assert "empty" in listing["all"]["children"] and "empty" not in listing
    assert sorted(listing["ungrouped"]["hosts"]) == ["loner", "stray"]
    assert listing["_meta"]["profile"] == "inventory_legacy"


def test_ansible_list_shows_dates_as_iso_text_and_hides_ansible_internal_names() -> None:
    listing = to_ansible_list(parse_inventory("all:\n  hosts:\n    h1:\n      d: 2024-05-01\n      groups: x\n", "x"))
    assert listing["_meta"]["hostvars"] == {"h1": {"d": "2024-05-01"}}


def test_a_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_inventory(FIXTURES / "does-not-exist.yaml")


GOOD_YAML = sorted([*FIXTURES.glob("*.yaml"), *EXAMPLES.glob("*.yaml")])
SCHEMA_REJECTS = [
    ("all:\n  host: {}\n", "an unknown group key"),
    ("all:\n  vars:\n    flex_datacentre: dc1\n", "an unknown flex variable"),
    ("all:\n  hosts:\n    h1:\n      ansible_connection: winrm\n", "an unknown connection"),
    ("all:\n  hosts:\n    h1:\n      flex_root: relative\n", "a relative flex_root"),
    ("- all\n", "a list at the top"),
]


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", GOOD_YAML, ids=[p.name for p in GOOD_YAML])
def test_schema_accepts_good_yaml(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


@pytest.mark.parametrize("text", [c[0] for c in SCHEMA_REJECTS], ids=[c[1] for c in SCHEMA_REJECTS])
def test_schema_rejects(text: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), SCHEMA)


# --- property: any fleet written in INI and in YAML resolves the same --------------------------------

words = st.sampled_from(["red", "blue", "gold", "yes", "none", "x_1", "web", "db"])  # text literal_eval refuses
values = st.one_of(st.integers(-1000, 1000), words)
variables = st.dictionaries(st.sampled_from(["color", "size", "tier", "rank"]), values, max_size=3)


@st.composite
def fleets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Groups g0..gN: children only point to later groups (no cycle); hosts with their own variables."""
    count = draw(st.integers(1, 5))
    groups = []
    for index in range(count):
        later = [f"g{i}" for i in range(index + 1, count)]
        groups.append({
            "name": f"g{index}",
            "vars": draw(variables),
            "priority": draw(st.none() | st.integers(0, 3)),
            "children": draw(st.lists(st.sampled_from(later), unique=True)) if later else [],
            "hosts": draw(st.dictionaries(st.sampled_from([f"h{i}" for i in range(6)]), variables, max_size=3)),
        })
    return groups


def as_yaml(fleet: list[dict[str, Any]]) -> str:
    """The fleet as a YAML inventory: every group at the top level, children by reference."""
    document = {}
    for group in fleet:
        priority = {} if group["priority"] is None else {"ansible_group_priority": group["priority"]}
        document[group["name"]] = {"vars": {**group["vars"], **priority}, "hosts": group["hosts"] or None,
                                   "children": {child: None for child in group["children"]} or None}
    return yaml.safe_dump(document, sort_keys=False)


def as_ini(fleet: list[dict[str, Any]]) -> str:
    """The same fleet as an INI inventory."""
    lines = []
    for group in fleet:
        lines.append(f"[{group['name']}]")
        lines += [" ".join([host, *(f"{k}={v}" for k, v in hv.items())]) for host, hv in group["hosts"].items()]
        lines += [f"[{group['name']}:children]", *group["children"], f"[{group['name']}:vars]"]
        lines += [f"{k} = {v}" for k, v in group["vars"].items()]
        lines += [] if group["priority"] is None else [f"ansible_group_priority = {group['priority']}"]
    return "\n".join(lines) + "\n"


def comparable(inventory: Inventory) -> dict[str, Any]:
    """An inventory with its list orders dropped: the hosts, each host's groups and merged variables."""
    return {h.name: (h.groups, dict(h.vars)) for h in inventory.hosts}


@settings(max_examples=30, deadline=None)  # ~50 ms each: YAML parsing is pure Python
@given(fleet=fleets())
def test_any_fleet_resolves_the_same_from_ini_and_yaml(fleet: list[dict[str, Any]]) -> None:
    assert comparable(parse_inventory(as_yaml(fleet), "f.yaml")) == comparable(parse_inventory(as_ini(fleet), "f.ini"))
