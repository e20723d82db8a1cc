"""The transport against a real in-process SSH server (tests/sshserver) and the local connection.

Each test that makes sense for both runs twice, `ssh` and `local`, through the same Pool API.
Fault tests follow FAULTS.md: F13 (hung host), F14 (hanging command), F15 (MaxStartups),
F16 (MaxSessions), F19 (wrong key). Host key tests (F18) are in test_transport_hostkeys.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deployer.models import Host
from deployer.transport import (
    AuthFailed,
    ChannelLimit,
    CommandFailed,
    CommandTimeout,
    Connection,
    ConnectionLost,
    HandshakeDropped,
    Pool,
    TransportError,
    Unreachable,
)
from tests.integration.transportkit import (
    fast_settings,
    local_host,
    read_pid,
    wait_gone,
)
from tests.sshserver.plugin import ServerFactory, SshKeys
from tests.sshserver.server import SshTestServer


@pytest.fixture(params=["ssh", "local"])
async def target(request: pytest.FixtureRequest, tmp_path: Path,
                 ssh_server_factory: ServerFactory) -> AsyncIterator[tuple[Pool, Host]]:
    """A pool and one host in it, reached over SSH (in-process server) or locally."""
    if request.param == "ssh":
        host = (await ssh_server_factory()).as_host("node")
    else:
        host = local_host("node")
    async with Pool([host], fast_settings(tmp_path)) as pool:
        yield pool, host


# --- run: results, quoting, timeouts ----------------------------------------------------------

RESULT_CASES = [
    pytest.param(["sh", "-c", "echo out; echo err >&2; exit 3"], 3, "out\n", "err\n", None, id="non-zero exit is a result"),
    pytest.param(["true"], 0, "", "", None, id="exit 0 is ok"),
    pytest.param(["sh", "-c", "kill -TERM $$"], 143, "", "", "TERM", id="death by signal is 128+N with its name"),
    pytest.param(["no-such-command-flex"], 127, "", None, None, id="missing command exits 127"),
]


@pytest.mark.parametrize(("argv", "status", "stdout", "stderr", "signal"), RESULT_CASES)
async def test_run_returns_a_result(target: tuple[Pool, Host], argv: list[str], status: int, stdout: str,
                                    stderr: str | None, signal: str | None) -> None:
    pool, host = target
    result = await pool.run(host.name, argv, timeout=10)
    assert (result.exit_status, result.stdout, result.signal) == (status, stdout, signal)
    if stderr is not None:
        assert result.stderr == stderr
    assert result.ok is (status == 0)
    assert result.host == host.name and result.argv == tuple(argv) and result.duration >= 0


def test_connections_implement_the_protocol(target: tuple[Pool, Host]) -> None:
    pool, host = target
    assert isinstance(pool.connection(host), Connection)


async def test_check_raises_command_failed_on_non_zero(target: tuple[Pool, Host]) -> None:
    pool, host = target
    result = await pool.run(host, ["sh", "-c", "echo boom >&2; exit 4"], timeout=10)
    with pytest.raises(CommandFailed, match="exit 4.*boom"):
        result.check()


METACHARACTERS = ["$(touch {x})", "; touch {x}", "`touch {x}`", "' \" \\", "a\nb\n", "$HOME", "*", "&& touch {x} #", "| tee {x}"]


async def test_shell_metacharacters_are_passed_verbatim(target: tuple[Pool, Host], tmp_path: Path) -> None:
    pool, host = target
    canary = tmp_path / "canary"
    words = [w.format(x=canary) for w in METACHARACTERS]
    result = await pool.run(host, ["printf", "%s\\0", *words], timeout=10)
    assert result.stdout.split("\0")[:-1] == words
    assert not canary.exists()


async def test_env_and_input_reach_the_command_verbatim(target: tuple[Pool, Host], tmp_path: Path) -> None:
    pool, host = target
    value = f"a b;$(touch {tmp_path / 'x'})`id`'\""
    result = await pool.run(host, ["sh", "-c", 'printf %s "$FLEX_VALUE"; wc -c'], timeout=10,
                            env={"FLEX_VALUE": value}, input=b"x" * 200_000)
    assert result.stdout == value + "200000\n"
    assert not (tmp_path / "x").exists()


async def test_invalid_argv_and_env_are_refused_before_anything_runs(target: tuple[Pool, Host]) -> None:
    pool, host = target
    for bad in ("echo hi", [], ["a\0b"]):
        with pytest.raises(ValueError):
            await pool.run(host, bad, timeout=5)
    with pytest.raises(ValueError):
        await pool.run(host, ["true"], timeout=5, env={"BAD NAME": "x"})


HANGING = [
    pytest.param("sleep 30", id="sleeping command"),
    pytest.param("trap '' TERM; while :; do sleep 0.05; done", id="command that ignores SIGTERM"),
]


@pytest.mark.parametrize("script", HANGING)
async def test_remote_timeout_kills_a_hanging_command(target: tuple[Pool, Host], tmp_path: Path, script: str) -> None:
    """F14: the command is killed on the node, not merely abandoned by closing the channel."""
    pool, host = target
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        await pool.run(host, ["sh", "-c", f"echo $$ > {pidfile}; {script}"], timeout=0.5)
    assert caught.value.on_node and time.monotonic() - started < 4
    assert await wait_gone(await read_pid(pidfile))


async def test_a_background_process_holding_stdout_cannot_block_a_run(target: tuple[Pool, Host], tmp_path: Path) -> None:
    """A daemon that keeps the output pipe open (no redirection) is bounded like any hang."""
    pool, host = target
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout):
            await pool.run(host, ["sh", "-c", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & echo started"],
                           timeout=0.5)
        assert time.monotonic() - started < 4
    finally:
        os.kill(await read_pid(pidfile), signal.SIGKILL)


async def test_a_command_exiting_124_on_its_own_is_a_result(target: tuple[Pool, Host]) -> None:
    pool, host = target
    result = await pool.run(host, ["sh", "-c", "exit 124"], timeout=30)
    assert result.exit_status == 124


# --- streams ----------------------------------------------------------------------------------

async def test_stream_yields_lines_then_the_exit_status(target: tuple[Pool, Host]) -> None:
    pool, host = target
    async with pool.stream(host, ["sh", "-c", "for i in 1 2 3; do echo line$i; done; echo oops >&2; exit 5"]) as lines:
        seen = [line async for line in lines]
    assert seen == ["line1", "line2", "line3"]
    assert lines.exit_status == 5


async def test_closing_a_stream_stops_the_command_on_the_node(target: tuple[Pool, Host], tmp_path: Path) -> None:
    pool, host = target
    pidfile = tmp_path / "pid"
    lines = pool.stream(host, ["sh", "-c", f"echo $$ > {pidfile}; while :; do echo tick; sleep 0.02; done"])
    got = [await lines.__anext__() for _ in range(3)]
    await lines.close()
    assert got == ["tick"] * 3
    assert await wait_gone(await read_pid(pidfile))
    assert (await pool.run(host, ["true"], timeout=5)).ok  # the slot was given back


# --- one connection, bounded channels, retried drops (F15, F16) -------------------------------

async def test_one_connection_serves_many_runs(ssh_server: SshTestServer, tmp_path: Path) -> None:
    host = ssh_server.as_host("n1")
    async with Pool([host], fast_settings(tmp_path)) as pool:
        for _ in range(50):
            assert (await pool.run("n1", ["true"], timeout=5)).ok
        assert pool.handshakes("n1") == 1
    assert ssh_server.stats.connections == 1 and len(ssh_server.stats.exec_requests) == 50


async def test_concurrent_runs_stay_under_max_sessions(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F16: 50 concurrent operations, sshd MaxSessions 10: queued, never more than 8 channels."""
    server = await ssh_server_factory(max_sessions=10)
    async with Pool([server.as_host("n1")], fast_settings(tmp_path)) as pool:
        results = await asyncio.gather(*(pool.run("n1", ["sleep", "0.1"], timeout=10) for _ in range(50)))
    assert all(r.ok for r in results)
    assert server.stats.max_concurrent_sessions <= 8
    assert server.stats.refused_sessions == 0 and server.stats.connections == 1


async def test_refused_channels_are_retried(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F16: a client configured above MaxSessions gets refusals; they are retried, not failures."""
    server = await ssh_server_factory(max_sessions=3)
    settings = fast_settings(tmp_path, channels_per_connection=8, channel_attempts=50)
    async with Pool([server.as_host("n1")], settings) as pool:
        results = await asyncio.gather(*(pool.run("n1", ["sleep", "0.05"], timeout=10) for _ in range(20)))
    assert all(r.ok for r in results)
    assert server.stats.refused_sessions > 0 and server.stats.max_concurrent_sessions <= 3


async def test_channel_refusals_past_the_retry_budget_are_channel_limit(ssh_server_factory: ServerFactory,
                                                                         tmp_path: Path) -> None:
    server = await ssh_server_factory(max_sessions=0)
    async with Pool([server.as_host("n1")], fast_settings(tmp_path, channel_attempts=3)) as pool:
        with pytest.raises(ChannelLimit) as caught:
            await pool.run("n1", ["true"], timeout=5)
    assert not isinstance(caught.value, Unreachable)
    assert server.stats.refused_sessions == 3


async def test_dropped_handshakes_are_retried(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F15: sshd closes the first connections during the handshake; the run still succeeds."""
    server = await ssh_server_factory(drop_first=3)
    async with Pool([server.as_host("n1")], fast_settings(tmp_path)) as pool:
        assert (await pool.run("n1", ["true"], timeout=5)).ok
        assert pool.handshakes("n1") == 1
    assert server.stats.connections == 4 and server.stats.dropped == 3


async def test_many_hosts_behind_max_startups_all_connect(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F15: 30 connections at once to one sshd with MaxStartups 3:30:8; none is marked down."""
    server = await ssh_server_factory(max_startups=(3, 30, 8), seed=7)
    hosts = [server.as_host(f"n{i}") for i in range(30)]
    settings = fast_settings(tmp_path, handshake_attempts=30, retry_max=0.3)
    async with Pool(hosts, settings) as pool:
        results = await asyncio.gather(*(pool.run(h, ["true"], timeout=10) for h in hosts))
    assert all(r.ok for r in results)
    assert server.stats.dropped > 0


async def test_endless_handshake_drops_are_not_a_dead_node(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await ssh_server_factory(drop_first=1000)
    async with Pool([server.as_host("n1")], fast_settings(tmp_path, handshake_attempts=3)) as pool:
        with pytest.raises(HandshakeDropped, match="MaxStartups") as caught:
            await pool.run("n1", ["true"], timeout=5)
    assert not isinstance(caught.value, Unreachable)
    assert server.stats.connections == 3


async def test_handshakes_in_flight_are_capped(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await ssh_server_factory(handshake_delay=0.2)
    hosts = [server.as_host(f"n{i}") for i in range(6)]
    async with Pool(hosts, fast_settings(tmp_path, max_handshakes=2)) as pool:
        started = time.monotonic()
        await asyncio.gather(*(pool.run(h, ["true"], timeout=10) for h in hosts))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.6  # 6 handshakes, 2 at a time, 0.2 s each


# --- hung and dead hosts (F13) ----------------------------------------------------------------

async def test_hung_host_is_detected_by_keepalive_and_others_keep_working(
        ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F13: SIGSTOP-like hang (TCP open, no bytes): lost within interval x (count + 1), B unaffected."""
    a, b = await ssh_server_factory(), await ssh_server_factory()
    async with Pool([a.as_host("a"), b.as_host("b")], fast_settings(tmp_path)) as pool:
        await pool.run("a", ["true"], timeout=5)
        a.freeze()
        started = time.monotonic()
        hung = asyncio.ensure_future(pool.run("a", ["sleep", "3"], timeout=10))
        for _ in range(5):
            assert (await pool.run("b", ["true"], timeout=5)).ok
        with pytest.raises(ConnectionLost):
            await hung
        assert time.monotonic() - started < 0.2 * 3 + 2.0
        a.thaw()
        assert (await pool.run("a", ["true"], timeout=5)).ok  # dropped, then reopened on next use
        assert pool.handshakes("a") == 2


async def test_hung_stream_raises_connection_lost(ssh_server: SshTestServer, tmp_path: Path) -> None:
    async with (Pool([ssh_server.as_host("a")], fast_settings(tmp_path)) as pool,
                pool.stream("a", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]) as lines):
        assert await lines.__anext__() == "tick"
        ssh_server.freeze()
        with pytest.raises(ConnectionLost):
            async for _ in lines:
                pass


async def test_host_that_accepts_tcp_but_never_answers_is_unreachable(
        ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    hung, good = await ssh_server_factory(hang=True), await ssh_server_factory()
    async with Pool([hung.as_host("hung"), good.as_host("good")], fast_settings(tmp_path, connect_timeout=0.5)) as pool:
        attempt = asyncio.ensure_future(pool.run("hung", ["true"], timeout=5))
        assert (await pool.run("good", ["true"], timeout=5)).ok
        with pytest.raises(Unreachable, match="no SSH answer"):
            await attempt


async def test_closed_port_is_unreachable(tmp_path: Path) -> None:
    host = Host(name="gone", address="127.0.0.1", port=1)
    async with Pool([host], fast_settings(tmp_path)) as pool:
        with pytest.raises(Unreachable, match="refused"):
            await pool.run("gone", ["true"], timeout=5)


# --- authentication (F19) ---------------------------------------------------------------------

async def test_wrong_key_fails_once_without_retries(ssh_server: SshTestServer, ssh_keys: SshKeys, tmp_path: Path) -> None:
    host = ssh_server.as_host("n1", key_file=ssh_keys.stranger_key_file)
    async with Pool([host], fast_settings(tmp_path)) as pool:
        with pytest.raises(AuthFailed, match="refused every key") as caught:
            await pool.run("n1", ["true"], timeout=5)
    assert "ansible_ssh_private_key_file" in (caught.value.fix or "")
    assert ssh_server.stats.connections == 1 and ssh_server.stats.auth_starts == 1
    assert ssh_server.stats.exec_requests == []


async def test_missing_key_file_is_auth_failed(ssh_server: SshTestServer, tmp_path: Path) -> None:
    host = ssh_server.as_host("n1", key_file=tmp_path / "nope")
    async with Pool([host], fast_settings(tmp_path)) as pool:
        with pytest.raises(AuthFailed, match="does not exist"):
            await pool.run("n1", ["true"], timeout=5)
    assert ssh_server.stats.connections == 0


# --- the user's OpenSSH setup -----------------------------------------------------------------

async def test_ssh_config_supplies_key_and_port_and_inventory_overrides_them(
        ssh_server: SshTestServer, ssh_keys: SshKeys, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port 1\n  IdentityFile {ssh_keys.client_key_file}\n")
    plain = ssh_server.as_host("n1")
    host = Host(name="n1", address="127.0.0.1", port=ssh_server.port, user=plain.user,
                vars={**plain.vars, "ansible_port": ssh_server.port})  # no key_file: the config's is used
    async with Pool([host], fast_settings(tmp_path, ssh_config=config)) as pool:
        assert (await pool.run("n1", ["true"], timeout=5)).ok


@pytest.fixture
def ssh_agent(ssh_keys: SshKeys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """An ssh-agent holding the authorized client key, as SSH_AUTH_SOCK."""
    if shutil.which("ssh-agent") is None:
        pytest.skip("no ssh-agent")
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if Path(sock).exists():
                break
            time.sleep(0.01)
        subprocess.run(["ssh-add", str(ssh_keys.client_key_file)], env={"SSH_AUTH_SOCK": sock},
                       check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock
    finally:
        agent.terminate()
        agent.wait()


async def test_ssh_agent_keys_are_used(ssh_server: SshTestServer, ssh_agent: str, tmp_path: Path) -> None:
    plain = ssh_server.as_host("n1")
    host = Host(name="n1", address="127.0.0.1", port=ssh_server.port, user=plain.user, vars=plain.vars)
    async with Pool([host], fast_settings(tmp_path)) as pool:
        assert (await pool.run("n1", ["true"], timeout=5)).ok


# --- ProxyJump --------------------------------------------------------------------------------

async def test_hosts_behind_a_jump_host_share_one_bastion_connection(
        ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    bastion, target = await ssh_server_factory(), await ssh_server_factory()
    hosts = [bastion.as_host("bastion"), *(target.as_host(f"t{i}", flex_proxy_jump="bastion") for i in range(3))]
    async with Pool(hosts, fast_settings(tmp_path)) as pool:
        results = await asyncio.gather(*(pool.run(f"t{i}", ["echo", "hi"], timeout=5) for i in range(3)))
        assert [r.stdout for r in results] == ["hi\n"] * 3
    assert bastion.stats.connections == 1 and bastion.stats.direct_tcpip == 3
    assert bastion.stats.exec_requests == [] and target.stats.connections == 3


@pytest.mark.parametrize(("jump", "message"), [
    ("nowhere", "not in the inventory"),
    ("t", "loops"),
    ("local", "local host"),
], ids=["unknown jump host", "jump loop", "local jump host"])
async def test_bad_proxy_jump_is_a_clear_error(tmp_path: Path, jump: str, message: str) -> None:
    hosts = [Host(name="t", address="127.0.0.1", vars={"flex_proxy_jump": jump}), local_host("local")]
    async with Pool(hosts, fast_settings(tmp_path)) as pool:
        with pytest.raises(TransportError, match=message):
            await pool.run("t", ["true"], timeout=5)


async def test_unknown_host_name_is_a_transport_error(tmp_path: Path) -> None:
    async with Pool([], fast_settings(tmp_path)) as pool:
        with pytest.raises(TransportError, match="not in the inventory"):
            await pool.run("ghost", ["true"], timeout=5)
