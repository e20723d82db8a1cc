"""The checks on the variables flex reads from an inventory, and whether each host can be reached.

Each check returns a Verdict: None when the value is fine, else (what is wrong, the fix).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection, Iterable

from deployer.document import did_you_mean
from deployer.errors import Location, Problem
from deployer.hostrange import is_host_like

SSH = ("ssh", "smart", "paramiko", "paramiko_ssh")
CONNECTION_ALIASES = {**{n: "ssh" for n in SSH}, **{f"ansible.builtin.{n}": "ssh" for n in SSH},
               "local": "local", "ansible.builtin.local": "local"}
FLEX_VARS = ("flex_datacenter", "flex_rack", "flex_labels", "flex_root", "flex_known_hosts",
             "flex_playbooks", "flex_proxy_jump")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Verdict = tuple[str, str] | None  # (what is wrong, the fix) or None when the value is fine


def check_variable(key: str, value: Any, at: Location, value_at: Location) -> Problem | None:
    if key.startswith("flex_") and key not in FLEX_VARS:
        return Problem(at, f"unknown flex variable '{key}'", did_you_mean(key, FLEX_VARS))
    check = CHECKS.get(key) if value is not None else None  # null means unset: the default applies
    verdict = check(value) if check else None
    if verdict is None and check and isinstance(value, str) and "{{" in value:
        verdict = ("is a Jinja template", "flex does not render templates in the variables it reads: write the value")
    return Problem(value_at, f"{key} {verdict[0]}", verdict[1]) if verdict else None


def _port(value: Any) -> Verdict:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        return f"must be an integer port, got {value!r}", "write a number from 1 to 65535, e.g. 22"
    if not 1 <= int(value) <= 65535:
        return f"{value} is out of range", "write a port from 1 to 65535"
    return None


def _word(value: Any) -> Verdict:
    if isinstance(value, str) and value and not re.search(r"\s", value) and value[0] != "-":
        return None
    return f"must be a single word with no spaces, got {value!r}", "write the plain name, e.g. deploy"


def _path(value: Any) -> Verdict:
    if isinstance(value, str) and value and not CONTROL.search(value):
        return None
    return f"must be a file path, got {value!r}", "write a path such as ~/.ssh/id_ed25519"


def _connection(value: Any) -> Verdict:
    if isinstance(value, str) and value in CONNECTION_ALIASES:
        return None
    return (f"{value!r} is not a connection flex can use",
            "use ssh or local (smart, paramiko and paramiko_ssh, bare or as ansible.builtin.*, also mean ssh)")


def _place(value: Any) -> Verdict:
    if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and SAFE_NAME.match(value):
        return None
    return f"must be a name (letters, digits, '.', '-', '_'), got {value!r}", "write a short name such as dc1 or r12"


def _labels(value: Any) -> Verdict:
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return (f"must be a mapping of strings to strings, got {value!r}",
            'write `flex_labels: {tier: "gold", gpu: "a100"}` and quote numbers and booleans')


def _root(value: Any) -> Verdict:
    if isinstance(value, str) and value.startswith("/") and not CONTROL.search(value):
        return None
    return f"must be an absolute path, got {value!r}", "write a path starting with '/', e.g. /var/lib/flex"


def _playbooks(value: Any) -> Verdict:
    if isinstance(value, list) and all(isinstance(p, str) and p and not CONTROL.search(p) for p in value):
        return None
    return f"must be a list of job spec paths, got {value!r}", "write a YAML list: [../playbooks/web.yaml]"


CHECKS: dict[str, Callable[[Any], Verdict]] = {
    "ansible_port": _port, "ansible_ssh_port": _port, "ansible_user": _word, "ansible_ssh_user": _word,
    "ansible_ssh_private_key_file": _path, "ansible_private_key_file": _path, "flex_known_hosts": _path,
    "ansible_connection": _connection, "flex_datacenter": _place, "flex_rack": _place, "flex_labels": _labels,
    "flex_root": _root, "flex_playbooks": _playbooks, "flex_proxy_jump": _word,
}


def check_host(name: str, at: Location, variables: dict[str, Any], origins: dict[str, Location],
                names: Collection[str]) -> list[Problem]:
    problems = [p for p in (_address(name, at, variables, origins),) if p]
    jump = variables.get("flex_proxy_jump")
    if isinstance(jump, str) and (jump not in names or jump == name):
        what, hint = ("names the host itself", "") if jump == name else (
            f"names '{jump}', which is not in the inventory", _close(jump, names))
        problems.append(Problem(origins["flex_proxy_jump"], f"flex_proxy_jump {what}",
                                "name another host of this inventory" + hint))
    return problems


def _close(word: str, choices: Iterable[str]) -> str:
    hint = did_you_mean(word, choices)
    return f"; {hint}" if hint.startswith("did you mean") else ""


def _address(name: str, at: Location, variables: dict[str, Any], origins: dict[str, Location]) -> Problem | None:
    key = next((k for k in ("ansible_host", "ansible_ssh_host") if k in variables), None)
    if key is None:
        if CONNECTION_ALIASES.get(str(variables.get("ansible_connection"))) == "local" or is_host_like(name):
            return None
        return Problem(at, f"host '{name}' has no ansible_host and its name is not an address",
                       "set ansible_host to its IP address or DNS name")
    value = variables[key]
    if value is None or isinstance(value, str) and not value.strip():
        return Problem(origins[key], f"{key} is empty, so the host has no address",
                       f"set {key} to an IP address or DNS name, or remove it to use the inventory name")
    if not isinstance(value, str) or not is_host_like(value):
        return Problem(origins[key], f"{key} {value!r} is not an IP address or host name",
                       "write a bare address such as 10.0.0.5 or node1.example.com (no user@, port or template)")
    return None
