"""Issue 3 "Must show" on the real 10-host sshd fleet: push, launch, idempotence, stop, probe, partition,
shell metacharacters and secrets, through NodeClient over the SSH Pool."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from deployer.connection import SyncResult, TransportSettings
from deployer.inventory import load_inventory
from deployer.models import FileSpec, Host, JobSpec, NodeState, StopPolicy
from deployer.nodeclient import Launch, NodeClient, gather_probes
from deployer.transport import FileLike, Pool, Unreachable
from tests.integration.transportkit import fast_settings

SCRIPT = """#!/bin/sh
python3 -c 'import json, os; json.dump(dict(os.environ), open(os.environ["FLEX_ALLOC_DIR"] + "/env.json.tmp", "w"))'
mv "$FLEX_ALLOC_DIR/env.json.tmp" "$FLEX_ALLOC_DIR/env.json"
sleep 300 & sleep 300 & wait
"""


class RecordingPool(Pool):
    """A Pool that keeps every SyncResult, so a test sees what travelled."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.syncs: list[SyncResult] = []

    async def sync(self, host: str | Host, files: Sequence[FileLike], *, fresh: bool = False) -> SyncResult:
        result = await super().sync(host, files, fresh=fresh)
        self.syncs.append(result)
        return result


def settings(tmp_path: Path, **overrides: object) -> TransportSettings:
    values: dict[str, object] = {"keepalive_interval": 0.5, "keepalive_count": 2, "connect_timeout": 5.0,
                                 "login_timeout": 5.0}
    values.update(overrides)
    return fast_settings(tmp_path, **values)


def clients_for(fleet: object, pool: Pool) -> list[NodeClient]:
    inventory = load_inventory(fleet.inventory_path)  # type: ignore[attr-defined]
    for host in inventory.hosts:
        pool.add(host)
    return [NodeClient(pool, host) for host in inventory.hosts]


def job_files(tmp_path: Path) -> tuple[FileSpec, ...]:
    data = tmp_path / "data.bin"
    if not data.exists():
        data.write_bytes(os.urandom(1 << 20))
        (tmp_path / "run.sh").write_text(SCRIPT)
    return (FileSpec(src=str(data), dest="data.bin", mode=0o644, size=1 << 20),
            FileSpec(src=str(tmp_path / "run.sh"), dest="run.sh", mode=0o755))


def make_job(tmp_path: Path, name: str = "web", env: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(name=name, command=("/bin/sh", "-c", 'exec "$FLEX_ALLOC_DIR/run.sh"'),
                   files=job_files(tmp_path), env=env or {"MODE": "test"}, stop=StopPolicy(timeout=2.0))


def alloc_path(fleet: object, alloc_id: str, name: str) -> str:
    return f"{fleet.flex_root}/allocs/{alloc_id}/{name}"  # type: ignore[attr-defined]


async def wait_env(fleet_host: object, path: str, within: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        proc = fleet_host.exec(["cat", "--", path])  # type: ignore[attr-defined]
        if proc.returncode == 0 and proc.stdout:
            return json.loads(proc.stdout)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{fleet_host}: the workload never wrote {path}")


def stat_files(fleet_host: object, paths: Sequence[str]) -> str:
    return fleet_host.exec(["stat", "-c", "%n %i %Y %s", "--", *paths], check=True).stdout  # type: ignore[attr-defined]


def group_processes(fleet_host: object, pgid: int) -> list[str]:
    out = fleet_host.exec(["ps", "-eo", "pid=,pgid=,stat=,args="], check=True).stdout  # type: ignore[attr-defined]
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return [" ".join(r) for r in rows if int(r[1]) == pgid and not r[2].startswith("Z")]


async def test_push_launch_is_idempotent_and_stop_kills_the_whole_group(fleet: object, tmp_path: Path) -> None:
    async with RecordingPool(settings=settings(tmp_path)) as pool:
        clients = clients_for(fleet, pool)
        assert len(clients) == 10
        job = make_job(tmp_path)

        async def first(client: NodeClient) -> tuple[bool, dict]:
            installed = await client.install()
            return installed, await client.launch(Launch(alloc_id="push-1", job=job))

        firsts = await asyncio.gather(*(first(c) for c in clients))
        for client, (_installed, doc) in zip(clients, firsts):
            assert doc["ok"] and doc["pid"], (client.host.name, doc)
        views = {c.host.name: doc for c, (_, doc) in zip(clients, firsts)}
        paths = [alloc_path(fleet, "push-1", n) for n in ("data.bin", "run.sh", "spec.json")]
        for fh in fleet:  # type: ignore[attr-defined]
            await wait_env(fh, alloc_path(fleet, "push-1", "env.json"))
        before = {fh.name: stat_files(fh, paths) for fh in fleet}  # type: ignore[attr-defined]

        pool.syncs.clear()
        seconds = await asyncio.gather(*(first(c) for c in clients))
        for client, (installed, doc) in zip(clients, seconds):
            name = client.host.name
            assert installed is False, name
            assert doc["ok"] and doc["already_running"], (name, doc)
            assert (doc["pid"], doc["start_time"]) == (views[name]["pid"], views[name]["start_time"]), name
        assert len(pool.syncs) == 20
        assert all(s.changed == () and s.bytes_sent == 0 for s in pool.syncs), pool.syncs
        after = {fh.name: stat_files(fh, paths) for fh in fleet}  # type: ignore[attr-defined]
        assert after == before

        status = await clients[0].status("push-1")
        pgid = status["allocations"]["push-1"]["pgid"]
        h01 = fleet.host(clients[0].host.name)  # type: ignore[attr-defined]
        assert len(group_processes(h01, pgid)) >= 3  # sh + two sleeps at least

        stops = await asyncio.gather(*(c.stop("push-1", timeout=2) for c in clients))
        for client, doc in zip(clients, stops):
            assert doc["ok"] and doc["was_running"] and not doc.get("left"), (client.host.name, doc)
            fh = fleet.host(client.host.name)  # type: ignore[attr-defined]
            group = views[client.host.name]["pgid"]
            assert group_processes(fh, group) == [], client.host.name
            assert "sleep 300" not in fh.exec(["ps", "-eo", "args="], check=True).stdout


async def test_probe_round_and_a_partitioned_host(fleet: object, tmp_path: Path) -> None:
    s = settings(tmp_path)
    async with Pool(settings=s) as pool:
        clients = clients_for(fleet, pool)
        await asyncio.gather(*(c.install() for c in clients))
        started = time.monotonic()
        states = await gather_probes(clients, timeout=20)
        baseline = time.monotonic() - started
        assert sorted(states) == sorted(fleet.names)  # type: ignore[attr-defined]
        for name, state in states.items():
            assert isinstance(state, NodeState), (name, state)
            assert state.status == "ready" and state.name == name and state.boot_id and state.cpus

        victim = fleet.hosts[3]  # type: ignore[attr-defined]
        victim.partition()
        try:
            started = time.monotonic()
            answered: dict[str, float] = {}

            async def timed(client: NodeClient) -> tuple[str, NodeState | Exception]:
                result = (await gather_probes([client], timeout=20))[client.host.name]
                answered[client.host.name] = time.monotonic() - started
                return client.host.name, result

            states = dict(await asyncio.gather(*(timed(c) for c in clients)))
        finally:
            victim.heal()
        others = max(t for name, t in answered.items() if name != victim.name)
        assert others < 2 * baseline + 5.0, (answered, baseline)  # the dead host delays nobody
        # keepalive declares the connection dead after interval x (count + 1); the rest is slack for
        # a loaded 2-core machine.
        bound = s.keepalive_interval * (s.keepalive_count + 1) + 8.0
        error = states[victim.name]
        assert isinstance(error, Unreachable), error  # ConnectionLost: keepalive gave up
        assert answered[victim.name] < bound, (answered, bound, error)
        assert victim.name in str(error)
        for name, state in states.items():
            if name != victim.name:
                assert isinstance(state, NodeState) and state.status == "ready", (name, state)


async def test_metacharacters_reach_the_workload_verbatim_and_secrets_stay_hidden(fleet: object,
                                                                                  tmp_path: Path) -> None:
    marker = f"/tmp/pwned-{uuid.uuid4().hex[:8]}"
    nasty = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker};", f"'\"; touch {marker}; echo \"'",
             f"a\nb\ntouch {marker}\n", f"$((1+1)) && touch {marker} || true | cat > {marker}", "*", "~root"]
    name = f"job $(touch {marker}) `touch {marker}`; touch {marker} 'q' \"dq\"\nnext"
    env = {f"V{i}": value for i, value in enumerate(nasty)}
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    job = make_job(tmp_path, name=name, env=env)
    async with Pool(settings=settings(tmp_path)) as pool:
        clients = clients_for(fleet, pool)[:2]
        for client in clients:
            await client.install()
            doc = await client.launch(Launch(alloc_id="meta-1", job=job), secrets={"API_TOKEN": secret})
            assert doc["ok"], doc
        try:
            for client in clients:
                fh = fleet.host(client.host.name)  # type: ignore[attr-defined]
                seen = await wait_env(fh, alloc_path(fleet, "meta-1", "env.json"))
                assert seen["FLEX_JOB"] == name
                assert {k: seen.get(k) for k in env} == env
                assert seen["API_TOKEN"] == secret
                assert fh.exec(["test", "-e", marker]).returncode != 0, "a metacharacter executed on the node"
                argvs = fh.exec(["ps", "-eww", "-o", "args="], check=True).stdout
                assert secret not in argvs
                environs = fh.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"]).stdout
                assert secret not in environs
                spec = fh.read_file(alloc_path(fleet, "meta-1", "spec.json"))
                assert secret not in spec and json.loads(spec)["job"] == name
                mode = fh.exec(["stat", "-c", "%a", alloc_path(fleet, "meta-1", "env.secret")], check=True).stdout
                assert mode.strip() == "600"
            assert not Path(marker).exists()
        finally:
            await asyncio.gather(*(c.stop("meta-1", timeout=2) for c in clients))
