"""flex's inventory resolution against the real `ansible-inventory --list` (ansible-core from the test extras).

Every good fixture and every example inventory is resolved twice, by flex and by ansible-inventory,
and the two listings must be equal: the same hosts, the same group membership (lists in the same
order), the same merged variables. The ansible-inventory processes (about a second each) all run at
once in a module fixture, so the whole file takes a couple of seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deployer.inventory import load_inventory, to_ansible_list

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "inventories"
INVENTORIES = sorted([*FIXTURES.glob("*.yaml"), *FIXTURES.glob("*.ini"), *(ROOT / "inventory").glob("*")])
ANSIBLE_INVENTORY = shutil.which("ansible-inventory")

pytestmark = pytest.mark.skipif(
    ANSIBLE_INVENTORY is None,
    reason="ansible-inventory is not installed: pip install -e '.[test]' (ansible-core is in the test extras)",
)


def ansible_env(home: Path) -> dict[str, str]:
    """An environment where ansible reads no config file, writes nothing outside home, and fails loudly."""
    config = home / "ansible.cfg"
    config.write_text("")
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_INVENTORY_ENABLED": "yaml,ini",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "ANSIBLE_INVENTORY_CACHE": "false",
        "ANSIBLE_NOCOLOR": "true",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
    }


@pytest.fixture(scope="module")
def ansible_listings(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict[str, Any]]:
    """`ansible-inventory -i FILE --list` of every inventory, run in parallel."""
    home = tmp_path_factory.mktemp("ansible-home")
    env = ansible_env(home)
    running = {
        path: subprocess.Popen([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], cwd=home, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for path in INVENTORIES
    }
    listings = {}
    for path, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"ansible-inventory refused {path}:\n{err}"
        listings[path] = json.loads(out)
    return listings


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.relative_to(ROOT).as_posix() for p in INVENTORIES])
def test_flex_lists_what_ansible_inventory_lists(path: Path, ansible_listings: dict[Path, dict[str, Any]]) -> None:
    theirs = ansible_listings[path]
    ours = json.loads(json.dumps(to_ansible_list(load_inventory(path))))
    if "profile" not in theirs["_meta"]:  # ansible-core before 2.19 prints no JSON profile name
        del ours["_meta"]["profile"]
    assert ours.keys() == theirs.keys(), "different groups"
    assert ours["_meta"]["hostvars"] == theirs["_meta"]["hostvars"], "different merged variables"
    assert ours == theirs


def test_every_inventory_is_compared() -> None:
    names = {p.name for p in INVENTORIES}
    assert {"local.yaml", "lab.yaml", "lab.ini", "fleet.yaml", "fleet.ini", "ranges.yaml", "ini_values.ini"} <= names
