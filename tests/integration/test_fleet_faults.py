"""FAULTS.md F13-F16 and F18-F23 on the real sshd fleet: one test per row, asserting its "must hold"."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from deployer import sshconnection
from deployer.connection import FileSpec as PushFile
from deployer.connection import TransportSettings
from deployer.inventory import load_inventory
from deployer.models import JobSpec, NodeState
from deployer.nodeclient import Launch, NodeClient
from deployer.transport import (
    AuthFailed,
    CommandTimeout,
    ConnectionLost,
    HostKeyChanged,
    Pool,
    SyncError,
)
from tests.fakenvml.plugin import NOT_SUPPORTED, FakeNvml, preset
from tests.integration.transportkit import fast_settings

MakeFleet = Callable[..., Any]
NVML_CONF = "nvml.conf"


def settings(tmp_path: Path, **overrides: object) -> TransportSettings:
    values: dict[str, object] = {"keepalive_interval": 0.5, "keepalive_count": 2, "connect_timeout": 5.0,
                                 "login_timeout": 5.0}
    values.update(overrides)
    return fast_settings(tmp_path, **values)


def pool_for(fleet: Any, tmp_path: Path, inventory: Path | None = None, **overrides: object) -> Pool:
    return Pool.from_inventory(load_inventory(inventory or fleet.inventory_path), settings(tmp_path, **overrides))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- F13: hung node ----------------------------------------------------------------------------

async def test_f13_hung_node_is_dropped_by_keepalive_and_blocks_no_one(make_fleet: MakeFleet,
                                                                       tmp_path: Path) -> None:
    fleet = make_fleet(2)
    victim, other = fleet.hosts
    async with pool_for(fleet, tmp_path) as pool:
        s = pool.settings
        assert (await pool.run(victim.name, ["true"], timeout=10)).ok
        assert (await pool.run(other.name, ["true"], timeout=10)).ok
        victim.stop()
        try:
            started = time.monotonic()

            async def hung() -> tuple[Exception | None, float]:
                try:
                    await pool.run(victim.name, ["true"], timeout=60)
                except Exception as exc:  # noqa: BLE001 - the type is asserted below
                    return exc, time.monotonic() - started
                return None, time.monotonic() - started

            async def healthy() -> float:
                assert (await pool.run(other.name, ["echo", "ok"], timeout=10)).stdout == "ok\n"
                return time.monotonic() - started

            (error, detected), others = await asyncio.gather(hung(), healthy())
        finally:
            victim.cont()
    assert isinstance(error, ConnectionLost), error
    assert victim.name in str(error)
    # interval x (count + 1) without an answer, plus slack for a loaded 2-core machine
    assert detected < s.keepalive_interval * (s.keepalive_count + 1) + 8.0, detected  # not the 60 s timeout
    assert others < 10.0, others  # a run on the other host was not held up by the hung one


# --- F14: remote command hangs -----------------------------------------------------------------

async def test_f14_hanging_command_is_bounded_and_killed_on_the_node(fleet: Any, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    # a generous local grace: under load the node's own `timeout` must be what ends the command
    async with pool_for(fleet, tmp_path, timeout_grace=10.0) as pool:
        started = time.monotonic()
        with pytest.raises(CommandTimeout) as caught:
            await pool.run(host.name, ["sh", "-c", "echo $$ > /tmp/f14.pid; exec sleep 37"], timeout=2)
        elapsed = time.monotonic() - started
        assert caught.value.on_node and host.name in str(caught.value)
        s = pool.settings
        assert elapsed < 2 + s.kill_after + s.timeout_grace, elapsed
        pid = host.read_file("/tmp/f14.pid").strip()
        assert host.exec(["kill", "-0", pid]).returncode != 0, "the remote command outlived its timeout"
        assert "sleep 37" not in host.exec(["ps", "-eo", "args="], check=True).stdout
        assert (await pool.run(host.name, ["echo", "next"], timeout=20)).stdout == "next\n"  # the loop goes on


# --- F15: MaxStartups -------------------------------------------------------------------------

async def test_f15_many_fresh_connections_to_a_stock_sshd_all_succeed(stock_fleet: Any, tmp_path: Path) -> None:
    host = stock_fleet.hosts[0]
    inventory = load_inventory(stock_fleet.inventory_path)
    s = settings(tmp_path, handshake_attempts=12, retry_initial=0.05, retry_max=1.0, connect_timeout=10.0)
    pools = [Pool(inventory.hosts, s) for _ in range(40)]  # 40 independent controllers: 40 handshakes at once
    try:
        results = await asyncio.gather(*(p.run(host.name, ["echo", "up"], timeout=20) for p in pools),
                                       return_exceptions=True)
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures[:3]
    assert all(r.stdout == "up\n" for r in results)  # type: ignore[union-attr]


# --- F16: MaxSessions -------------------------------------------------------------------------

async def test_f16_more_runs_than_max_sessions_share_one_connection(stock_fleet: Any, tmp_path: Path) -> None:
    host = stock_fleet.hosts[1]
    async with pool_for(stock_fleet, tmp_path) as pool:
        results = await asyncio.gather(*(pool.run(host.name, ["sh", "-c", f"sleep 0.3; echo {i}"], timeout=20)
                                         for i in range(24)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(24)]
        assert pool.handshakes(host.name) == 1


# --- F18: host key changed --------------------------------------------------------------------

async def test_f18_changed_host_key_is_refused_before_anything_is_sent(make_fleet: MakeFleet,
                                                                       tmp_path: Path) -> None:
    fleet = make_fleet(1)
    host = fleet.hosts[0]
    host.restart_sshd(new_host_key=True)
    known = Path(fleet.known_hosts).read_text()
    before = tree(host.flex_root_path)
    async with pool_for(fleet, tmp_path) as pool:
        client = NodeClient(pool, pool.host(host.name))
        with pytest.raises(HostKeyChanged) as caught:
            await client.install()
        job = JobSpec(name="x", command=("true",))
        with pytest.raises(HostKeyChanged):
            await client.launch(Launch(alloc_id="f18", job=job), secrets={"TOKEN": "t"})
        with pytest.raises(HostKeyChanged):
            await pool.sync(host.name, [PushFile.from_bytes(b"payload", f"{fleet.flex_root}/f18.txt")])
    assert caught.value.fingerprint and host.name in str(caught.value)
    assert tree(host.flex_root_path) == before  # no byte of payload reached the host
    assert Path(fleet.known_hosts).read_text() == known  # never auto-accepted


# --- F19: authentication fails ----------------------------------------------------------------

async def test_f19_wrong_key_fails_clearly_after_one_attempt(fleet: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "wrong_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    wrong.chmod(0o600)
    host = fleet.hosts[1]
    inventory = fleet.write_inventory(tmp_path / "inv.yaml", hosts=[host],
                                      host_vars=lambda h: {"ansible_ssh_private_key_file": str(wrong)})
    attempts: list[str] = []
    real_connect = sshconnection.asyncssh.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        attempts.append(str(args[0]) if args else "")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sshconnection.asyncssh, "connect", counting_connect)
    async with pool_for(fleet, tmp_path, inventory) as pool:
        with pytest.raises(AuthFailed) as caught:
            await pool.run(host.name, ["true"], timeout=5)
    assert host.name in str(caught.value)
    assert attempts == [host.ip]  # one connection, no retry storm


# --- F20: full disk ---------------------------------------------------------------------------

async def test_f20_full_disk_keeps_the_old_file_and_retry_is_idempotent(make_fleet: MakeFleet,
                                                                        tmp_path: Path) -> None:
    fleet = make_fleet(1, flex_root_size="1m")
    host = fleet.hosts[0]
    target = f"{fleet.flex_root}/data/blob.bin"
    local = host.flex_root_path / "data" / "blob.bin"
    async with pool_for(fleet, tmp_path) as pool:
        first = await pool.sync(host.name, [PushFile.from_bytes(b"old content\n", target)])
        assert first.changed == (target,)
        with pytest.raises(SyncError) as caught:
            await pool.sync(host.name, [PushFile.from_bytes(os.urandom(2 << 20), target)])
        message = str(caught.value)
        assert host.name in message and target in message, message
        assert local.read_bytes() == b"old content\n"
        assert tree(host.flex_root_path) == ["data", "data/blob.bin"]  # no temp file left behind

        filler = host.flex_root_path / "filler"
        filler.write_bytes(b"\0" * (700 << 10))
        new = os.urandom(500 << 10)
        with pytest.raises(SyncError):
            await pool.sync(host.name, [PushFile.from_bytes(new, target)])
        assert local.read_bytes() == b"old content\n"
        filler.unlink()
        retried = await pool.sync(host.name, [PushFile.from_bytes(new, target)])
        assert retried.changed == (target,) and local.read_bytes() == new
        again = await pool.sync(host.name, [PushFile.from_bytes(new, target)])
        assert again.changed == () and again.unchanged == (target,) and again.bytes_sent == 0


# --- F21-F23: GPUs through the fake NVML ------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_fleet(fleet_available: None, fake_nvml: FakeNvml) -> Iterator[Any]:
    """3 hosts: h01 loads the fake NVML (config in its flex root), h02 too with the driver not loaded,
    h03 finds no NVML library at all."""
    from tests.fleet.netns import DEFAULT_FLEX_ROOT
    from tests.fleet.plugin import _up

    config = f"{DEFAULT_FLEX_ROOT}/{NVML_CONF}"
    envs = {"h01": fake_nvml.env(config), "h02": fake_nvml.env(config), "h03": fake_nvml.missing_env()}
    if fake_nvml.real_library_installed:
        pytest.skip("a real libnvidia-ml.so.1 is installed: 'library missing' cannot be simulated")
    fleet = _up(3, host_env=lambda name: envs[name])
    try:
        fake_nvml.write_config(fleet.hosts[1].flex_root_path / NVML_CONF, 2, mode="driver_not_loaded")
        yield fleet
    finally:
        fleet.down()


async def probe(fleet: Any, tmp_path: Path, name: str) -> NodeState:
    async with pool_for(fleet, tmp_path) as pool:
        client = NodeClient(pool, pool.host(name))
        await client.install()
        return await client.probe()


async def test_f21_lost_gpu_is_unhealthy_and_the_others_complete(gpu_fleet: Any, fake_nvml: FakeNvml,
                                                                 tmp_path: Path) -> None:
    host = gpu_fleet.hosts[0]
    gpus = preset(4, host=host.name, util=55, temp=61)
    gpus[2].lost = True
    fake_nvml.write_config(host.flex_root_path / NVML_CONF, gpus)
    state = await probe(gpu_fleet, tmp_path, host.name)
    assert state.gpus_known and len(state.gpus) == 4
    by_index = {g.index: g for g in state.gpus}
    assert not by_index[2].is_healthy and by_index[2].error
    for index in (0, 1, 3):
        gpu = by_index[index]
        assert gpu.is_healthy and gpu.uuid == gpus[index].uuid and gpu.name == gpus[index].name
        assert gpu.utilization == 55 and gpu.temperature == 61 and gpu.memory_total == gpus[index].mem_total


async def test_f22_nvml_unavailable_means_gpus_unknown_with_the_reason(gpu_fleet: Any, tmp_path: Path) -> None:
    nvml = importlib.import_module("deployer.noderuntime.nvml")  # the node runtime's own reasons
    DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND = nvml.DRIVER_NOT_LOADED, nvml.LIBRARY_NOT_FOUND
    not_loaded = await probe(gpu_fleet, tmp_path, gpu_fleet.hosts[1].name)
    assert not_loaded.gpus_known is False and not_loaded.gpus == ()
    assert not_loaded.gpu_reason == DRIVER_NOT_LOADED, not_loaded.gpu_reason
    missing = await probe(gpu_fleet, tmp_path, gpu_fleet.hosts[2].name)
    assert missing.gpus_known is False and missing.gpus == ()
    assert missing.gpu_reason == LIBRARY_NOT_FOUND, missing.gpu_reason
    assert missing.cpus and missing.memory_total  # the rest of the node is still known


async def test_f23_unsupported_metric_is_none_and_the_others_stay(gpu_fleet: Any, fake_nvml: FakeNvml,
                                                                  tmp_path: Path) -> None:
    host = gpu_fleet.hosts[0]
    gpus = preset(2, host=host.name, util=30, temp=NOT_SUPPORTED, power=NOT_SUPPORTED, mem_used=2 << 30)
    fake_nvml.write_config(host.flex_root_path / NVML_CONF, gpus)
    state = await probe(gpu_fleet, tmp_path, host.name)
    assert state.gpus_known and len(state.gpus) == 2
    for gpu in state.gpus:
        assert gpu.is_healthy
        assert gpu.temperature is None and gpu.power_draw is None  # n/a, never 0
        assert gpu.utilization == 30 and gpu.memory_used == 2 << 30 and gpu.memory_total and gpu.power_limit
