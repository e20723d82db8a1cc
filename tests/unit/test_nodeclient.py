"""NodeClient: the pure allocation_spec() (table-driven) and one round trip on the local connection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from deployer import nodeclient
from deployer.models import FileSpec as JobFile
from deployer.models import HealthCheck, Host, JobSpec, Port, Resources, StopPolicy
from deployer.nodeclient import Launch, NodeClient, allocation_spec
from deployer.transport import Pool
from deployer.transporterrors import SyncError
from tests.integration.transportkit import fast_settings

SECRET = "hunter2-very-secret"


def job(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {"name": "web", "command": ("python3", "-m", "http.server"), "env": {"MODE": "prod"}}
    values.update(overrides)
    return JobSpec(**values)


CASES: list[tuple[str, Launch, dict[str, Any], tuple[str, ...]]] = [
    ("plain", Launch("a1", job()),
     {"argv": ["python3", "-m", "http.server"], "job": "web", "stop_signal": "SIGTERM", "stop_timeout": 10.0,
      "lease_ttl": 0.0, "env": {"MODE": "prod", "FLEX_NODE": "n1", "FLEX_ALLOC_INDEX": "0"}},
     ("gpus", "health")),
    ("ports become FLEX_PORT_*", Launch("a2", job(ports=(Port("http"), Port("admin", 9000))), index=3,
                                        ports={"http": 31000, "admin": 9000}),
     {"env": {"MODE": "prod", "FLEX_PORT_HTTP": "31000", "FLEX_PORT_ADMIN": "9000", "FLEX_NODE": "n1",
              "FLEX_ALLOC_INDEX": "3"}},
     ("gpus",)),
    ("gang extra env", Launch("a3", job(gang=True), extra_env={"RANK": "1", "WORLD_SIZE": "4",
                                                               "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}),
     {"env": {"MODE": "prod", "RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
              "FLEX_NODE": "n1", "FLEX_ALLOC_INDEX": "0"}},
     ("gpus",)),
    ("gpu job with GPUs assigned", Launch("a4", job(resources=Resources(gpus=2)), gpus=(1, 3)),
     {"gpus": [1, 3]}, ()),
    ("gpu job with none assigned is []", Launch("a5", job(resources=Resources(gpus=1))), {"gpus": []}, ()),
    ("gpus=() on a cpu job hides every GPU", Launch("a6", job(), gpus=()), {"gpus": []}, ()),
    ("gpus None on a cpu job leaves GPUs alone", Launch("a7", job()), {}, ("gpus",)),
    ("http health port name -> number",
     Launch("a8", job(ports=(Port("http"),), health=HealthCheck("http", path="/healthz", port="http",
                                                                interval=5, timeout=1)),
            ports={"http": 31001}),
     {"health": {"type": "http", "port": 31001, "path": "/healthz", "interval": 5, "timeout": 1}}, ()),
    ("tcp health", Launch("a9", job(ports=(Port("db"),), health=HealthCheck("tcp", port="db")), ports={"db": 5432}),
     {"health": {"type": "tcp", "port": 5432, "interval": 10.0, "timeout": 2.0}}, ()),
    ("command health", Launch("a10", job(health=HealthCheck("command", command=("test", "-e", "ready")))),
     {"health": {"type": "command", "argv": ["test", "-e", "ready"], "interval": 10.0, "timeout": 2.0}}, ()),
    ("stop policy and lease", Launch("a11", job(stop=StopPolicy("SIGINT", 30.0)), lease_ttl=45.0),
     {"stop_signal": "SIGINT", "stop_timeout": 30.0, "lease_ttl": 45.0}, ()),
]


@pytest.mark.parametrize(("launch", "expected", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_allocation_spec(launch: Launch, expected: dict[str, Any], absent: tuple[str, ...]) -> None:
    spec = allocation_spec(launch, "n1")
    for key, value in expected.items():
        assert spec[key] == value, key
    for key in absent:
        assert key not in spec
    assert json.loads(json.dumps(spec)) == spec  # plain JSON


def test_allocation_spec_never_carries_secrets() -> None:
    from deployer.models import SecretRef

    launch = Launch("s1", job(secrets=(SecretRef("token", env="API_TOKEN", file="/etc/token"),)))
    text = json.dumps(allocation_spec(launch, "n1"))
    assert "API_TOKEN" not in text and "/etc/token" not in text and "secret" not in text.lower()


async def test_local_install_launch_probe_stop(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    out = tmp_path / "env.json"
    script = (f"import json, os; json.dump(dict(os.environ), open({str(out)!r} + '.tmp', 'w')); "
              f"os.replace({str(out)!r} + '.tmp', {str(out)!r}); import time; time.sleep(60)")
    launch = Launch("loc-1", job(command=("python3", "-c", script), stop=StopPolicy(timeout=2.0)), gpus=())
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        assert await client.install() is True
        assert await client.install() is False
        doc = await client.launch(launch, secrets={"API_TOKEN": SECRET})
        assert doc["ok"] and doc["pid"], doc
        again = await client.launch(launch, secrets={"API_TOKEN": SECRET})
        assert again["already_running"] and again["pid"] == doc["pid"]
        for _ in range(100):
            if out.exists():
                break
            await asyncio.sleep(0.05)
        env = json.loads(out.read_text())
        assert env["API_TOKEN"] == SECRET and env["MODE"] == "prod" and env["CUDA_VISIBLE_DEVICES"] == ""
        spec_text = (root / "allocs" / "loc-1" / "spec.json").read_text()
        assert SECRET not in spec_text
        assert (root / "allocs" / "loc-1" / "env.secret").stat().st_mode & 0o777 == 0o600

        state = await client.probe()
        assert state.status == "ready" and state.cpus
        alloc = state.allocations["loc-1"]
        assert alloc.status == "running" and alloc.is_alive and alloc.pid == doc["pid"]

        stopped = await client.stop("loc-1", timeout=2)
        assert stopped["ok"] and stopped["was_running"] and not stopped.get("left"), stopped
        after = (await client.status("loc-1"))["allocations"]["loc-1"]
        assert not after["alive"] and after["status"] == "stopped", after


async def test_a_verb_or_a_stream_installs_the_runtime_only_where_it_is_missing(tmp_path: Path) -> None:
    """No hash check before every session: the verbs run at once, and install when the node lacks the
    runtime (fresh node, another version, a removed file)."""
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        assert (await client.probe()).status == "ready" and client.installs == 1  # fresh node
        assert (await client.probe()).status == "ready" and client.installs == 1  # nothing checked again
        runtime = Path(await client.runtime_dir())
        (runtime / "nodeprobe.py").unlink()  # a broken runtime is repaired, not reported as the node's state
        assert (await client.probe()).status == "ready" and client.installs == 2
        import shutil

        shutil.rmtree(root / "runtime")
        fresh = NodeClient(pool, host)
        stream = fresh.probe_stream(interval=30)
        first = await asyncio.wait_for(stream.__anext__(), 20)
        assert first.status == "ready" and fresh.installs == 1
        await stream.aclose()


def stream_processes(root: Path) -> list[list[str]]:
    """The argv of every process on this machine whose command line names root and `probe`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if str(root) in argv and "probe" in argv:
            found.append(argv)
    return found


async def test_a_fresh_node_s_probe_stream_installs_the_runtime_itself(tmp_path: Path) -> None:
    """bootstrap.py: the stream's command finds no runtime, says so, reads the installer and the
    compressed runtime on its stdin, writes them and goes on as the stream: no other command, no sync,
    one process. Where the runtime exists the stream is the plain `python3 -E -S flexnode.py` command."""
    from deployer.bootstrap import BOOT

    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        commands = count_commands(pool, host)
        syncs: list[Any] = []
        conn = pool.connection(host)
        sync = conn.sync

        async def counted_sync(files: Any, **kwargs: Any) -> Any:
            syncs.append(files)
            return await sync(files, **kwargs)

        conn.sync = counted_sync  # type: ignore[method-assign]
        stream = client.probe_stream(interval=30)
        first = await asyncio.wait_for(stream.__anext__(), 20)
        assert first.is_ready and client.installs == 1 and commands == [] and syncs == []
        runtime = Path(await client.runtime_dir())
        assert (runtime / "flexnode.py").stat().st_mode & 0o777 == 0o755
        assert (runtime / "__pycache__").is_dir() and not list(runtime.glob(".*.flextmp"))
        assert [argv[3:5] for argv in stream_processes(root)] == [["-c", BOOT]]  # one process: it serves on
        reader = asyncio.ensure_future(asyncio.wait_for(stream.__anext__(), 20))  # the reply comes among the lines
        doc = await client.launch(Launch("boot-1", job(command=("sleep", "60"), stop=StopPolicy(timeout=2.0)),
                                         fresh=True))
        assert doc["ok"] and client.stream_calls == 1, doc  # the installing stream serves launches too
        await reader
        await stream.aclose()
        again = NodeClient(pool, host).probe_stream(interval=30)
        assert (await asyncio.wait_for(again.__anext__(), 20)).is_ready
        assert [argv[1:4] for argv in stream_processes(root)] == [["-E", "-S", str(runtime / "flexnode.py")]]
        await again.aclose()
        assert commands == [] and syncs == []
        await client.stop("boot-1", timeout=2)


async def test_a_runtime_the_stream_cannot_write_is_an_error_naming_the_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "runtime").write_text("a file where the runtime directory goes\n")
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        with pytest.raises(SyncError) as failed:
            await asyncio.wait_for(client.probe_stream(interval=30).__anext__(), 20)
        message = str(failed.value)
        assert "could not write" in message and str(root / "runtime") in message and "ENOTDIR" in message, message
        assert (root / "runtime").read_text().startswith("a file")


async def test_the_probe_stream_answers_a_poke_and_needs_no_watchdog(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.install()
        argv = await client._argv("probe", "--stream", "--interval", "30")
        async with pool.stream(host, argv, watches_stdin=True) as lines:
            first = json.loads(await asyncio.wait_for(lines.__anext__(), 20))
            await lines.send(b"\n")
            second = json.loads(await asyncio.wait_for(lines.__anext__(), 5))  # long before the interval
            assert (first["trigger"], second["trigger"]) == ("start", "request")


def count_commands(pool: Pool, host: Host) -> list[list[str]]:
    """The argv of every command the pool runs on host from now on."""
    commands: list[list[str]] = []
    conn = pool.connection(host)
    run = conn.run

    async def counted(argv: list[str], **kwargs: Any) -> Any:
        commands.append(list(argv))
        return await run(argv, **kwargs)

    conn.run = counted  # type: ignore[method-assign]
    return commands


async def test_a_fresh_launch_places_its_files_and_starts_in_one_command(tmp_path: Path) -> None:
    """A new allocation: its files (secrets 0600) go on the `start` verb's stdin, one command and one
    interpreter on the node instead of a checksum, a write and a start."""
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    script = tmp_path / "serve.py"
    script.write_text("import time\ntime.sleep(60)\n")
    launch = Launch("fresh-1", job(command=("python3", "serve.py"), files=(JobFile(str(script), "serve.py"),),
                                   stop=StopPolicy(timeout=2.0)), fresh=True)
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.install()
        commands = count_commands(pool, host)
        doc = await client.launch(launch, secrets={"API_TOKEN": SECRET})
        assert doc["ok"] and doc["pid"] and not doc.get("already_running"), doc
        assert len(commands) == 1 and commands[0][-3:] == ["start", "fresh-1", "--files"], commands
        alloc = root / "allocs" / "fresh-1"
        assert (alloc / "serve.py").read_text() == script.read_text()
        assert (alloc / "env.secret").stat().st_mode & 0o777 == 0o600 and SECRET not in (alloc / "spec.json").read_text()
        assert not list(alloc.glob("*.flextmp"))
        await client.stop("fresh-1", timeout=2)


async def test_with_its_probe_stream_open_a_fresh_launch_runs_no_command_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open probe stream serves the launch (its stdin carries the request and the files): no SSH
    channel, no interpreter; the supervisor is forked from the stream. Without a stream: the command."""
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    script = tmp_path / "serve.py"
    script.write_text("import time\ntime.sleep(60)\n")
    spec = job(command=("python3", "serve.py"), files=(JobFile(str(script), "serve.py"),), stop=StopPolicy(timeout=2.0))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.install()
        commands = count_commands(pool, host)
        states = client.probe_stream(interval=30)
        first = await asyncio.wait_for(states.__anext__(), 20)
        assert first.is_ready and not first.allocations
        seen: list[Any] = []

        async def keep_reading() -> None:  # as the controller does: the replies arrive among the documents
            async for state in states:
                seen.append(state)

        reader = asyncio.ensure_future(keep_reading())
        doc = await client.launch(Launch("streamed-1", spec, fresh=True), secrets={"API_TOKEN": SECRET})
        assert doc["ok"] and doc["pid"] and not doc.get("already_running"), doc
        assert commands == [] and client.stream_calls == 1, commands
        for _ in range(100):  # the change document follows the reply
            if any("streamed-1" in s.allocations and s.allocations["streamed-1"].is_alive for s in seen):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no document shows streamed-1 alive: {seen}")
        alloc = root / "allocs" / "streamed-1"
        assert (alloc / "env.secret").stat().st_mode & 0o777 == 0o600 and SECRET not in (alloc / "spec.json").read_text()
        os.kill(doc["pid"], signal.SIGKILL)  # a crash: the restart goes by the stream as well
        for _ in range(100):
            if (await client.status("streamed-1"))["allocations"]["streamed-1"]["status"] == "exited":
                break
            await asyncio.sleep(0.05)
        again = await client.launch(Launch("streamed-1", spec, restart=True))
        assert again["ok"] and again["pid"] != doc["pid"] and again["restarts"] == 2, again
        assert client.stream_calls == 2 and not [c for c in commands if "start" in c], commands
        commands.clear()
        monkeypatch.setattr(nodeclient, "STREAM_INPUT_MAX", 64)  # files too big to hold in the stream: the command
        doc = await client.launch(Launch("streamed-3", spec, fresh=True))
        assert doc["ok"] and len(commands) == 1 and commands[0][-3:] == ["start", "streamed-3", "--files"], commands
        monkeypatch.undo()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await states.aclose()
        doc = await client.launch(Launch("streamed-2", spec, fresh=True))  # the stream is gone: the command
        assert doc["ok"] and len(commands) == 2 and commands[1][-3:] == ["start", "streamed-2", "--files"], commands
        for alloc_id in ("streamed-1", "streamed-2", "streamed-3"):
            await client.stop(alloc_id, timeout=2)


async def test_a_fresh_launch_whose_files_cannot_be_placed_starts_nothing_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the job wants a directory\n")
    script = tmp_path / "serve.py"
    script.write_text("pass\n")
    launch = Launch("fresh-2", job(command=("python3", "serve.py"),
                                   files=(JobFile(str(script), str(blocker / "serve.py")),)), fresh=True)
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        doc = await client.launch(launch)
        assert doc["ok"] is False and doc["code"] == "write" and doc["path"] == str(blocker / "serve.py"), doc
        assert "its files were not placed" in doc["error"]
        assert (await client.status("fresh-2"))["allocations"]["fresh-2"]["status"] in ("absent", "pending")


async def test_a_stream_that_ends_at_once_has_its_last_stderr_lines_when_it_ends(tmp_path: Path) -> None:
    """Its exit and its stderr arrive separately: the tail must be complete when the iteration ends, or a
    node lacking the runtime reads as a stream that merely ended (the node was taken for unreachable
    and a service placed without it)."""
    host = Host(name="local", address="localhost", connection="local", flex_root=str(tmp_path / "root"))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        for _ in range(20):
            async with pool.stream(host, ["sh", "-c", "echo missing >&2; exit 2"], watches_stdin=True) as lines:
                assert [line async for line in lines] == []
                assert lines.exit_status == 2 and lines.stderr_tail == ("missing",)
