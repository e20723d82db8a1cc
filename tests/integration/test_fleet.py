"""The real sshd test fleet itself: hosts come up, are private, answer ssh, and take faults."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.fleet import (
    BASE_DIR,
    Fleet,
    FleetError,
    Host,
    cleanup_stale,
    netns,
    preflight,
)
from tests.fleet.plugin import FleetCache
from tests.fleet.proc import ProcId
from tests.fleet.sshd import render_sshd_config

# Tests that use the fleet fixtures are marked `fleet` by the plugin; the others are marked here.
MakeFleet = Callable[..., Fleet]


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_names() -> set[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def _fleet_traces(fleet_id: str) -> dict[str, object]:
    """What of fleet ``fleet_id`` still exists: namespaces, links, directory, mounts."""
    prefix = f"fx{fleet_id}"
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = [line for line in mountinfo if f"{BASE_DIR}/{fleet_id}" in line]
    traces: dict[str, object] = {
        "netns": sorted(n for n in _netns_names() if n.startswith(prefix)),
        "links": sorted(n for n in _link_names() if n.startswith(prefix)),
        "dir": (BASE_DIR / fleet_id).exists(),
        "mounts": mounts,
    }
    return {kind: found for kind, found in traces.items() if found}


def _start_marker(fleet: Fleet, host: str, seconds: int) -> int:
    """Start ``sleep SECONDS`` in the background on ``host`` over ssh; its controller-side pid."""
    result = fleet.ssh_command(
        host, "sh", "-c", f"setsid sleep {seconds} >/dev/null 2>&1 < /dev/null &"
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    # ssh returns before the background job has exec'd sleep: wait for it.
    while not (found := _marker_pids(fleet, host, seconds)):
        assert time.monotonic() < deadline, f"sleep {seconds} never showed up on {host}"
        time.sleep(0.01)
    [pid] = found
    return pid


def _marker_pids(fleet: Fleet, host: str, seconds: int) -> list[int]:
    """Controller-side pids of ``sleep SECONDS`` inside ``host``."""
    found = []
    for pid in fleet[host].pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if cmdline[:2] == [b"sleep", str(seconds).encode()]:
            found.append(pid)
    return found


# --- the shared 10-host fleet --------------------------------------------------------------------


def test_ten_hosts_answer_over_real_ssh(fleet: Fleet) -> None:
    assert len(fleet) == 10
    assert fleet.timings["up"] < 10.0, fleet.timings
    results = fleet.ssh_all("hostname")
    assert {name: r.stdout.strip() for name, r in results.items()} == {n: n for n in fleet.names}
    assert all(r.returncode == 0 for r in results.values()), {
        n: r.stderr for n, r in results.items()
    }
    assert len({h.ip for h in fleet}) == 10 and all(ip_address(h.ip) in fleet.subnet for h in fleet)


def test_inventory_and_client_files(fleet: Fleet) -> None:
    document = yaml.safe_load(fleet.inventory_path.read_text())
    hosts = document["all"]["hosts"]
    assert list(hosts) == fleet.names
    assert document["all"]["vars"]["flex_known_hosts"] == str(fleet.known_hosts)
    for host in fleet:
        entry = hosts[host.name]
        assert entry["ansible_host"] == host.ip and entry["ansible_user"] == "root"
        assert entry["ansible_ssh_private_key_file"] == str(fleet.client_key)
        assert entry["flex_root"] == "/var/lib/flex"
    assert {e["flex_datacenter"] for e in hosts.values()} == {"dc1", "dc2"}
    assert len({e["flex_rack"] for e in hosts.values()}) == 4
    assert set(document["all"]["children"]) == {"dc1", "dc2"}
    assert fleet.client_key.stat().st_mode & 0o077 == 0
    known = fleet.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in known] == [h.ip for h in fleet]
    assert all(line.split()[1] == "ssh-ed25519" for line in known)


def test_each_host_has_its_own_flex_root_and_tmp(fleet: Fleet) -> None:
    h01, h02 = fleet["h01"], fleet["h02"]
    write = "echo only-h01 > /var/lib/flex/marker && echo t > /tmp/marker"
    assert h01.ssh("sh", "-c", write).returncode == 0
    try:
        assert h01.ssh("cat", "/var/lib/flex/marker").stdout == "only-h01\n"
        assert (h01.flex_root_path / "marker").read_text() == "only-h01\n"
        assert h01.read_file("/tmp/marker") == "t\n"
        assert h02.ssh("test", "-e", "/var/lib/flex/marker").returncode == 1
        assert h02.exec(["test", "-e", "/tmp/marker"]).returncode == 1
        # ...nor on the controller's own filesystem
        assert not Path("/var/lib/flex/marker").exists()
    finally:
        h01.exec(["rm", "-f", "/var/lib/flex/marker", "/tmp/marker"])


def test_ps_on_a_host_shows_only_that_host(fleet: Fleet) -> None:
    _start_marker(fleet, "h02", 987)
    try:
        on_h01 = fleet.ssh_command("h01", "ps", "-e", "-o", "pid=,args=").stdout
        on_h02 = fleet.ssh_command("h02", "ps", "-e", "-o", "pid=,args=").stdout
        assert "sleep 987" not in on_h01 and "sleep 987" in on_h02
        first_pid, first_args = on_h01.splitlines()[0].split(None, 1)
        assert first_pid == "1" and "sshd" in first_args, on_h01  # sshd is the host's PID 1
        assert len(on_h01.splitlines()) < 10, on_h01
        assert _marker_pids(fleet, "h02", 987) and not _marker_pids(fleet, "h01", 987)
        assert fleet["h01"].exec(["hostname"]).stdout == "h01\n"
    finally:
        for pid in _marker_pids(fleet, "h02", 987):
            os.kill(pid, signal.SIGKILL)


def test_stock_fleet_keeps_openssh_limits(stock_fleet: Fleet, fleet: Fleet) -> None:
    def listener_title(host: Host) -> str:
        return host.exec(["ps", "-o", "args=", "-p", "1"]).stdout

    assert "of 10-100 startups" in listener_title(stock_fleet["h01"])
    assert "of 100-200 startups" in listener_title(fleet["h01"])
    assert "MaxSessions" not in stock_fleet["h01"].sshd_config.read_text()


def test_a_damaged_shared_fleet_is_rebuilt(fleet_cache: FleetCache) -> None:
    first = fleet_cache.get(2)
    assert fleet_cache.get(2) is first
    first["h02"].partition()
    second = fleet_cache.get(2)
    assert (
        second is not first and second.damage() == {} and first.damage() == {"fleet": ["torn down"]}
    )
    assert second.ssh_command("h02", "hostname").stdout == "h02\n"


# --- private fleets: options and faults ---------------------------------------------------------


def test_host_env_reaches_ssh_sessions(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2, host_env=lambda name: {"FLEX_TEST_HOST": name, "ODD": 'a b "c" $HOME\\x'})
    for host in fleet:
        out = host.ssh("sh", "-c", 'printf "%s|%s" "$FLEX_TEST_HOST" "$ODD"').stdout
        assert out == f'{host.name}|a b "c" $HOME\\x'


def test_partition_and_heal(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    h02 = fleet["h02"]
    h02.partition()
    started = time.monotonic()
    cut = h02.ssh("true", connect_timeout=1, timeout=10)
    assert cut.returncode == 255 and time.monotonic() - started < 5, cut.stderr
    assert fleet.ssh_command("h01", "true").returncode == 0
    assert fleet.ssh_command("h03", "true").returncode == 0
    h02.heal()
    assert h02.ssh("hostname").stdout == "h02\n"


def test_kill_ends_everything_and_start_boots_again(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    h01 = fleet["h01"]
    _start_marker(fleet, "h01", 654)
    (h01.flex_root_path / "state").write_text("kept")
    h01.exec(["sh", "-c", "echo gone > /tmp/scratch"], check=True)
    inside = [ProcId.of(pid) for pid in h01.pids()]
    boot_id = h01.boot_id
    assert len(inside) >= 2 and all(inside)

    h01.kill()
    assert not h01.alive and h01.pids() == []
    assert not any(p.alive() for p in inside if p is not None)
    refused = h01.ssh("true", connect_timeout=1)
    assert refused.returncode == 255
    assert fleet.ssh_command("h02", "true").returncode == 0

    h01.start()
    # The flex root is a disk and survives; /tmp, the processes and the boot id do not.
    assert h01.ssh("cat", "/var/lib/flex/state").stdout == "kept"
    assert h01.exec(["test", "-e", "/tmp/scratch"]).returncode == 1
    new_boot_id = h01.ssh("cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    assert new_boot_id == h01.boot_id != boot_id
    assert h01.ssh("hostname").stdout == "h01\n"


def _readable_within(stream: IO[bytes], seconds: float) -> bool:
    return bool(select.select([stream], [], [], seconds)[0])


def test_stop_hangs_the_host_and_cont_resumes(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    h01 = fleet["h01"]
    ticker = subprocess.Popen(
        fleet.ssh_argv(h01, "sh", "-c", "while :; do echo tick; sleep 0.1; done"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert ticker.stdout is not None and ticker.stdout.readline() == b"tick\n"
        h01.stop()
        assert h01.stopped
        for _ in range(10):  # drain what was already on its way, then silence
            if not _readable_within(ticker.stdout, 0.5):
                break  # the established connection hangs
            assert os.read(ticker.stdout.fileno(), 65536)
        else:
            pytest.fail("the established connection kept talking after stop()")
        # A new connection still opens at the TCP level, but no byte comes back.
        with socket.create_connection((h01.ip, 22), timeout=2) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(64)
        assert h01.ssh("true", connect_timeout=1, timeout=10).returncode == 255
        assert fleet.ssh_command("h02", "true").returncode == 0
        h01.cont()
        assert _readable_within(ticker.stdout, 5)  # the connection resumes
        assert h01.ssh("hostname").stdout == "h01\n"
    finally:
        ticker.kill()
        ticker.wait()


def test_restart_sshd_with_a_new_host_key(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    h01 = fleet["h01"]
    marker = _start_marker(fleet, "h01", 543)

    h01.restart_sshd()  # same key: nothing changes for clients
    assert h01.ssh("true").returncode == 0

    h01.restart_sshd(new_host_key=True)
    refused = h01.ssh("true")
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr, refused.stderr
    # The host's processes survive an sshd restart.
    assert _marker_pids(fleet, "h01", 543) == [marker]
    assert fleet.ssh_command("h02", "true").returncode == 0
    fresh = fleet.write_known_hosts(tmp_path / "known_hosts")
    assert h01.ssh("hostname", known_hosts=fresh).stdout == "h01\n"
    assert h01.damage() == ["host key changed"]


def test_full_flex_root(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(1, flex_root_size="1m")
    result = fleet.ssh_command(
        "h01", "dd", "if=/dev/zero", "of=/var/lib/flex/big", "bs=64k", "count=64"
    )
    assert result.returncode != 0 and "No space left on device" in result.stderr


def test_two_fleets_at_once_do_not_collide(make_fleet: MakeFleet) -> None:
    first, second = make_fleet(1), make_fleet(1)
    assert first.id != second.id and not first.subnet.overlaps(second.subnet)
    assert first.ssh_command("h01", "true").returncode == 0
    assert second.ssh_command("h01", "true").returncode == 0


# --- teardown --------------------------------------------------------------------------------------


@pytest.mark.fleet
def test_teardown_leaves_nothing_behind() -> None:
    if (reason := preflight()) is not None:
        pytest.skip(reason)
    fleet = Fleet.up(3)
    _start_marker(fleet, "h03", 432)
    processes = [p for host in fleet for pid in host.pids() if (p := ProcId.of(pid))]
    assert _fleet_traces(fleet.id)
    fleet["h01"].kill()  # teardown copes with hosts a test already took down...
    fleet["h02"].partition()  # ...or damaged
    fleet.down()
    fleet.down()  # idempotent
    assert _fleet_traces(fleet.id) == {}
    assert not [p.pid for p in processes if p.alive()]


@pytest.mark.fleet
def test_a_failed_start_up_names_the_host_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (reason := preflight()) is not None:
        pytest.skip(reason)

    def broken_for_h02(**kwargs: Any) -> str:
        config = render_sshd_config(**kwargs)
        broken = "/h02/" in str(kwargs["host_key"])
        return config + "NoSuchSshdOption yes\n" if broken else config

    monkeypatch.setattr(netns, "render_sshd_config", broken_for_h02)
    with pytest.raises(FleetError) as failure:
        Fleet.up(3, ready_timeout=10)
    message = str(failure.value)
    assert "1 of 3 hosts did not come up" in message and "h02" in message, message
    assert "NoSuchSshdOption" in message, message  # the host's sshd log is quoted
    fleet_id = re.match(r"fleet (\w+):", message).group(1)  # type: ignore[union-attr]
    assert _fleet_traces(fleet_id) == {}


@pytest.mark.fleet
def test_cleanup_stale_removes_a_killed_runs_fleet() -> None:
    if (reason := preflight()) is not None:
        pytest.skip(reason)
    script = textwrap.dedent(
        """
        import os, signal, sys
        from tests.fleet import Fleet
        fleet = Fleet.up(2)
        print(fleet.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no teardown: a killed test run
        """
    )
    root = Path(__file__).resolve().parents[2]
    crashed = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=root, timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    fleet_id = crashed.stdout.strip()
    assert _fleet_traces(fleet_id)  # leaked, as a killed run would
    assert fleet_id in cleanup_stale()
    assert _fleet_traces(fleet_id) == {}


def test_without_root_the_fleet_explains_how_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = preflight.__wrapped__()
    assert reason is not None and "needs root" in reason and "pytest -m fleet" in reason
