"""`flex hosts trust` and `flex probe` as an operator runs them, against real sshd hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]


def flex(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "deployer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_unknown_host_keys_are_refused_until_trusted_then_probe_sees_every_host(
        make_fleet: Callable[..., Any], tmp_path: Path) -> None:
    fleet = make_fleet(3)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    inventory = fleet.write_inventory(tmp_path / "inv.yaml", all_vars={"flex_known_hosts": str(known_hosts)})

    refused = flex("probe", str(inventory), "--timeout", "20")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "SHA256:" in refused.stdout and "flex hosts trust" in refused.stdout
    assert "Traceback" not in refused.stderr

    trusted = flex("hosts", "trust", "-i", str(inventory), "--all", "--json")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    fingerprints = json.loads(trusted.stdout)
    assert sorted(fingerprints) == sorted(fleet.names)
    assert all(v["fingerprint"].startswith("SHA256:") for v in fingerprints.values())
    assert len(known_hosts.read_text().splitlines()) == 3

    again = flex("hosts", "trust", "-i", str(inventory), "--all")
    assert again.returncode == 0 and len(known_hosts.read_text().splitlines()) == 3

    probed = flex("probe", str(inventory), "--json")
    assert probed.returncode == 0, probed.stdout + probed.stderr
    states = json.loads(probed.stdout)
    assert {name: s["status"] for name, s in states.items()} == {name: "ready" for name in fleet.names}
    assert all(s["hostname"] == name for name, s in states.items())


def test_a_changed_host_key_is_never_trusted(make_fleet: Callable[..., Any]) -> None:
    fleet = make_fleet(2)
    host = fleet.hosts[0]
    before = Path(fleet.known_hosts).read_text()
    host.restart_sshd(new_host_key=True)

    out = flex("hosts", "trust", "-i", str(fleet.inventory_path), host.name)
    assert out.returncode == 3
    assert "FAILED" in out.stdout and "changed" in out.stdout.lower()
    assert Path(fleet.known_hosts).read_text() == before

    probed = flex("probe", str(fleet.inventory_path), "--json")
    assert probed.returncode == 3
    states = json.loads(probed.stdout)
    assert states[host.name]["status"] == "untrusted" and "changed" in states[host.name]["error"].lower()
    assert states[fleet.hosts[1].name]["status"] == "ready"
