"""Host keys against the in-process server: unknown vs changed (F18), trust, the insecure opt-in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deployer.connection import TransportSettings
from deployer.hostkeys import fingerprint
from deployer.transport import HostKeyChanged, HostKeyUnknown, Pool, UntrustedHost
from tests.integration.transportkit import fast_settings
from tests.sshserver.plugin import ServerFactory, SshKeys
from tests.sshserver.server import SshTestServer


async def test_unknown_host_key_names_fingerprint_and_fix(ssh_server: SshTestServer, ssh_keys: SshKeys,
                                                          tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    host = ssh_server.as_host("n1", flex_known_hosts=str(empty))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        with pytest.raises(HostKeyUnknown) as caught:
            await pool.run("n1", ["true"], timeout=5)
    expected = fingerprint(ssh_keys.host_key)
    assert caught.value.fingerprint == expected
    assert expected in str(caught.value) and "flex hosts trust n1" in str(caught.value)
    assert ssh_server.stats.auth_starts == 0 and ssh_server.stats.exec_requests == []


async def test_changed_host_key_is_refused_before_anything_is_sent(ssh_server_factory: ServerFactory,
                                                                   ssh_keys: SshKeys, tmp_path: Path) -> None:
    """F18: the server presents another key than known_hosts records: refused, nothing executed."""
    server = await ssh_server_factory(presented_key="other")
    async with Pool([server.as_host("n1")], fast_settings(tmp_path)) as pool:
        with pytest.raises(HostKeyChanged) as caught:
            await pool.run("n1", ["touch", str(tmp_path / "pwned")], timeout=5)
    error = caught.value
    assert error.fingerprint == fingerprint(ssh_keys.other_host_key)
    assert error.lines == (1,) and f"{server.known_hosts}:1" in str(error)
    assert fingerprint(ssh_keys.host_key) in str(error) and "ssh-keygen" in (error.fix or "")
    assert server.stats.auth_starts == 0 and server.stats.exec_requests == []
    assert not (tmp_path / "pwned").exists()


async def test_trust_records_an_unknown_key_once(ssh_server: SshTestServer, ssh_keys: SshKeys, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    host = ssh_server.as_host("n1", flex_known_hosts=str(known))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        assert await pool.trust("n1") == fingerprint(ssh_keys.host_key)
        assert await pool.trust("n1") == fingerprint(ssh_keys.host_key)  # idempotent
        assert (await pool.run("n1", ["true"], timeout=5)).ok
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 ")


async def test_trust_refuses_a_changed_key_and_changes_nothing(ssh_server_factory: ServerFactory,
                                                               tmp_path: Path) -> None:
    server = await ssh_server_factory(presented_key="other")
    assert server.known_hosts is not None
    before = server.known_hosts.read_text()
    async with Pool([server.as_host("n1")], fast_settings(tmp_path)) as pool:
        with pytest.raises(HostKeyChanged):
            await pool.trust("n1")
    assert server.known_hosts.read_text() == before


async def test_insecure_opt_in_records_unknown_keys_loudly(ssh_server: SshTestServer, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    known = tmp_path / "tofu_known_hosts"
    host = ssh_server.as_host("n1", flex_known_hosts=str(known))
    with caplog.at_level(logging.WARNING):
        async with Pool([host], fast_settings(tmp_path, insecure_accept_new=True)) as pool:
            assert (await pool.run("n1", ["true"], timeout=5)).ok
    assert caplog.text.count("INSECURE") >= 2  # once per pool, once per accepted key
    assert len(known.read_text().splitlines()) == 1


async def test_insecure_opt_in_still_refuses_changed_keys(ssh_server_factory: ServerFactory, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEX_INSECURE_HOST_KEYS", "1")
    server = await ssh_server_factory(presented_key="other")
    settings = fast_settings(tmp_path)
    settings = TransportSettings.from_env(**{k: getattr(settings, k) for k in ("known_hosts", "ssh_config")})
    assert settings.insecure_accept_new
    async with Pool([server.as_host("n1")], settings) as pool:
        with pytest.raises(HostKeyChanged):
            await pool.run("n1", ["true"], timeout=5)
    assert server.stats.exec_requests == []


async def test_jump_host_key_is_checked_too(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    bastion = await ssh_server_factory(presented_key="other")
    target = await ssh_server_factory()
    hosts = [bastion.as_host("bastion"), target.as_host("t1", flex_proxy_jump="bastion")]
    async with Pool(hosts, fast_settings(tmp_path)) as pool:
        with pytest.raises(UntrustedHost) as caught:
            await pool.run("t1", ["true"], timeout=5)
    assert caught.value.host == "bastion" and target.stats.connections == 0


async def test_trust_reaches_a_host_behind_a_jump_host(ssh_server_factory: ServerFactory, ssh_keys: SshKeys,
                                                       tmp_path: Path) -> None:
    bastion, target = await ssh_server_factory(), await ssh_server_factory()
    known = tmp_path / "target_known_hosts"
    hosts = [bastion.as_host("bastion"), target.as_host("t1", flex_proxy_jump="bastion", flex_known_hosts=str(known))]
    async with Pool(hosts, fast_settings(tmp_path)) as pool:
        with pytest.raises(HostKeyUnknown):
            await pool.run("t1", ["true"], timeout=5)
        assert await pool.trust("t1") == fingerprint(ssh_keys.host_key)
        assert (await pool.run("t1", ["true"], timeout=5)).ok
    assert bastion.stats.connections == 1
