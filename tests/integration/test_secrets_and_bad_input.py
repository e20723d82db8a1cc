"""Secrets, host keys and bad input, end to end through the `flex` CLI on real sshd hosts.

- A secret's value reaches its workload and nothing else: not the push's or the controller's -vv
  output, not any table of the state database, not `flex status --json`, `flex events --json`,
  `flex logs`, the console's screen, nor any other process's arguments or environment on the node.
- A host whose key changed gets no byte of payload and shows as untrusted with the fix (F18).
- Each item of FAULTS.md's bad-input list gets its clear error (file:line:column or job/host, and the
  fix), exit code 2, and changes nothing: the state database dumps the same, every flex root holds the
  same files. Two items are valid input and say so: a job that cannot be placed (exit 1, why, per
  check) and an env value full of shell metacharacters (exit 0, the workload sees it literally).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from deployer.store import Store
from tests.integration.controllerkit import (
    alloc_state,
    db_dump,
    fleet_trees,
    flex,
    flex_env,
    spawn_flex,
    tree,
    wait_for,
    write_spec,
)

MakeFleet = Callable[..., Any]
SMALL = "resources: {cpus: 0.1, memory: 16MiB}\nstop: {timeout: 1s}\n"
VAULT = """\
kind: service
count: 2
command: [python3, -c, "import hashlib, os, sys, time; v = os.environ['API_TOKEN']; \
open('token.sha256', 'w').write(hashlib.sha256(v.encode()).hexdigest()); print('token of', len(v), 'chars'); \
sys.stdout.flush(); time.sleep(3600)"]
secrets: {API_TOKEN: {env: API_TOKEN}}
placement: {distinct_hosts: true}
""" + SMALL


@pytest.fixture(scope="module")
def fleet2(fleet_cache: Any) -> Any:
    """Two hosts shared by this module's secret and bad-input tests (none of them damages a host)."""
    return fleet_cache.get(2)


# --- secrets ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed_secret(fleet2: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A job with a secret pushed by `flex -vv push`, then restarted by a `flex -vv controller` (the
    secret travels twice: from the push's loop and from the daemon's); every output kept."""
    work = tmp_path_factory.mktemp("secret")
    value = f"tok-{secrets.token_hex(24)}"
    inventory, state = fleet2.write_inventory(work / "inventory.yaml"), work / "state.db"
    env = flex_env(state, API_TOKEN=value)
    push = flex("-vv", "push", str(inventory), str(write_spec(work, "vault", VAULT)), "--timeout", "90", env=env,
                timeout=180)
    assert push.returncode == 0, push.stdout + push.stderr
    log = work / "controller.log"
    controller = spawn_flex("-vv", "controller", str(inventory), "--probe-interval", "0.3", env=env, log=log)
    try:
        with Store.open(state) as store:
            wait_for(lambda: store.lease_holder(time.time()), 60, "the controller holds the lease")
            restart = flex("-vv", "restart", "vault", "-i", str(inventory), env=env)
            assert restart.returncode == 0, restart.stdout + restart.stderr
            wait_for(lambda: not store.pending_intents() and not store.due_restarts() and len(
                [a for a in store.allocations(job="vault") if a.observed_status == "running"]) == 2, 90,
                "the restart applied")
            allocs = [a for a in store.allocations(job="vault") if a.desired_status == "run"]
    finally:
        controller.send_signal(signal.SIGTERM)
        controller.wait(30)
    outputs = {"push": push.stdout + push.stderr, "restart": restart.stdout + restart.stderr,
               "controller": log.read_text()}
    return SimpleNamespace(fleet=fleet2, value=value, inventory=inventory, state=state, env=env, allocs=allocs,
                           outputs=outputs)


def test_a_secret_reaches_its_workload_and_nowhere_else(pushed_secret: Any) -> None:
    s = pushed_secret
    value, digest = s.value, hashlib.sha256(s.value.encode()).hexdigest()
    assert all(alloc_state(s.fleet, a.node, a.id)["restarts"] == 2 for a in s.allocs), "not relaunched"
    for alloc in s.allocs:  # the workload sees it (after the daemon's relaunch too)
        seen = s.fleet.host(alloc.node).flex_root_path / "allocs" / alloc.id / "token.sha256"
        assert seen.read_text() == digest, alloc
    shown = dict(s.outputs)
    assert "DEBUG" in shown["push"] and "pass" in shown["controller"], "-vv logged nothing: the check is empty"
    shown["status"] = flex("status", str(s.inventory), "--json", "--all", env=s.env).stdout
    shown["events"] = flex("events", str(s.inventory), "--json", "-n", "100000", env=s.env).stdout
    assert json.loads(shown["status"])["jobs"] and [json.loads(line) for line in shown["events"].splitlines()]
    first = s.allocs[0].id
    for target, stream in ((first, ()), (first, ("--stderr",)), (first, ("--previous",)), ("vault", ())):
        out = flex("logs", target, "-i", str(s.inventory), *stream, env=s.env)
        assert out.returncode == 0 and ("token of" in out.stdout or stream == ("--stderr",)), out
        shown[f"logs {target} {stream}"] = out.stdout + out.stderr
    shown["database"] = "\n".join(db_dump(s.state))
    assert "vault" in shown["database"]
    for path in s.state.parent.glob(f"{s.state.name}*"):  # the file itself, -wal and -shm: not even a free page
        shown[f"file {path.name}"] = path.read_bytes().decode("latin-1")
    for host in s.fleet.hosts:
        shown[f"ps on {host.name}"] = host.exec(["ps", "-eww", "-o", "args="], check=True).stdout
        shown[f"cmdlines on {host.name}"] = host.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).stdout
    leaks = [where for where, text in shown.items() if value in text]
    assert not leaks, f"the secret shows in: {leaks}"
    for alloc in s.allocs:  # in a process environment only where flex put it: the workload's own
        host = s.fleet.host(alloc.node)
        holders = host.exec(["python3", "-c", ENVIRON_HOLDERS, value], check=True).stdout.split()
        state = alloc_state(s.fleet, alloc.node, alloc.id)
        assert holders == [str(state["pid"])], (alloc.node, holders, state["pid"])


ENVIRON_HOLDERS = r"""
import os, sys
value = sys.argv[1].encode()
for pid in sorted(p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()):
    try:
        if value in open(f'/proc/{pid}/environ', 'rb').read():
            print(pid)
    except OSError:
        pass
"""


def _screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (the compositor's frame, without styles)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def test_a_secret_never_reaches_the_console_screen(pushed_secret: Any) -> None:
    try:
        from console.app import FlexConsole
        from console.source import Source
    except Exception as exc:  # noqa: BLE001 - the console is built in another issue
        pytest.skip(f"the console is not importable yet: {exc}")
    s = pushed_secret
    screens = []
    with Source.open(str(s.inventory), str(s.state), read_only=True) as source:
        app = FlexConsole(source, read_only=True, interval=0.2)
        async with app.run_test(size=(200, 50)) as pilot:
            deadline = time.monotonic() + 20
            while app.updates == 0 and time.monotonic() < deadline:
                await pilot.pause(0.1)
            for keys in (["1"], ["2"], ["3"], ["3", "enter"], ["4"], ["5"], ["5", "enter"]):
                await pilot.press(*keys)
                await pilot.pause(1.0)  # a poll, and a log fetch from the node
                screens.append(_screen_text(app))
    assert any("vault" in text for text in screens), "the console showed nothing of the job: the check is empty"
    assert not [i for i, text in enumerate(screens) if s.value in text]


# --- host keys (F18, end to end) -------------------------------------------------------------------------


def test_f18_changed_host_key_gets_no_byte_and_shows_untrusted_with_the_fix(make_fleet: MakeFleet,
                                                                            tmp_path: Path) -> None:
    fleet = make_fleet(3)
    changed = fleet.hosts[2]
    changed.restart_sshd(new_host_key=True)  # a man in the middle, or a reinstalled host
    inventory, state = fleet.write_inventory(tmp_path / "inventory.yaml"), tmp_path / "state.db"
    env = flex_env(state)
    before, known = tree(changed.flex_root_path), Path(fleet.known_hosts).read_text()
    spec = write_spec(tmp_path, "web", 'kind: service\ncount: 2\ncommand: [sleep, "3600"]\n'
                      "placement: {distinct_hosts: true}\n" + SMALL)
    push = flex("push", str(inventory), str(spec), "--timeout", "90", env=env, timeout=180)
    assert push.returncode == 0, push.stdout + push.stderr  # the other hosts take the work
    trust = flex("hosts", "trust", changed.name, "-i", str(inventory), env=env)
    status = flex("status", str(inventory), env=env)
    status_json = json.loads(flex("status", str(inventory), "--json", env=env).stdout)

    assert tree(changed.flex_root_path) == before, "payload reached the host whose key changed"
    assert Path(fleet.known_hosts).read_text() == known, "the changed key was accepted"
    assert trust.returncode == 3 and "HOST KEY CHANGED" in trust.stdout + trust.stderr, trust
    row = next(line for line in status.stdout.splitlines() if line.startswith(changed.name))
    assert "untrusted" in row, status.stdout
    below = status.stdout.split(row, 1)[1].splitlines()[1:3]
    assert "HOST KEY CHANGED" in below[0] and below[1].strip().startswith("fix:"), status.stdout
    assert "known_hosts" in below[1] and f"flex hosts trust {changed.name}" in below[1], below
    nodes = {n["name"]: n for n in status_json["nodes"]}
    assert nodes[changed.name]["status"] == "untrusted"
    assert {nodes[h.name]["status"] for h in fleet.hosts[:2]} == {"ready"}
    with Store.open(state) as store:
        placed = {a.node for a in store.allocations(job="web") if a.observed_status == "running"}
    assert placed == {fleet.hosts[0].name, fleet.hosts[1].name}, "the other hosts were affected"


# --- bad input ---------------------------------------------------------------------------------------------

MARKER = f"/tmp/flex-pwned-{uuid.uuid4().hex[:8]}"
UNSET = f"FLEX_TEST_UNSET_{uuid.uuid4().hex[:6].upper()}"
METACHARACTERS = {"V1": f"$(touch {MARKER})", "V2": f"`touch {MARKER}`; echo x > {MARKER} &",
                  "V3": f"'; touch {MARKER}; '", "V4": f"a\nb | tee {MARKER}", "V5": "* ~root $HOME \\"}
ENV_DUMP = ("import json, os, time; json.dump({k: v for k, v in os.environ.items() if k[:1] == 'V' and k[1:].isdigit()},"
            " open('env.json', 'w')); time.sleep(3600)")


@dataclass(frozen=True)
class Case:
    """One bad-input item: the spec file's text, the exit code, and what the message must say."""

    id: str
    text: str
    exit_code: int = 2
    says: tuple[str, ...] = ()  # regexes; {spec} is the spec file's path


CASES = [
    Case("malformed YAML", "name: bad\ncommand: [sleep, 1\n",
         says=(r"{spec}:3:1: malformed YAML", r"fix: ")),
    Case("schema violation", 'name: bad\ncommand: [sleep, "1"]\ncount: -1\n',
         says=(r"{spec}:3:8: count: expected an integer >= 0, got -1", r"fix: change it to an integer >= 0")),
    Case("unknown key", 'name: bad\ncommand: [sleep, "1"]\ncomand: [sleep, "1"]\n',
         says=(r"{spec}:3:1: comand: unknown key 'comand'", r"fix: did you mean 'command'\?")),
    Case("job name with shell metacharacters", f'name: "web; touch {MARKER} $(touch {MARKER})"\ncommand: [sleep, "1"]\n',
         says=(r"{spec}:1:7: name: expected a job name", r"fix: rename it")),
    Case("env value with shell metacharacters", yaml.safe_dump(
        {"name": "meta", "command": ["python3", "-c", ENV_DUMP], "env": METACHARACTERS,
         "resources": {"cpus": 0.1, "memory": "16MiB"}, "stop": {"timeout": "1s"}}), exit_code=0,
         says=(r"converged",)),
    Case("host pattern that matches nothing", 'name: bad\ncommand: [sleep, "1"]\n'
         "placement: {constraints: [{attribute: host, in: [h99]}]}\n",
         says=(r"{spec}:3:27: placement.constraints\[0\]: job 'bad': host h99 matches no host of the inventory",
               r"fix: name what the inventory has \(.*h0[12]")),
    Case("job that cannot be placed", 'name: big\ncommand: [sleep, "1"]\nresources: {cpus: 1000}\n', exit_code=1,
         says=(r"FAILED\s+big\s+0/2 nodes fit big: 2 are short of cpus \(need 1000\)",)),
    Case("missing artifact file", 'name: bad\ncommand: [sleep, "1"]\nfiles: [{src: no-such-artifact.bin}]\n',
         says=(r"{spec}:3:15: files\[0\].src: .*no-such-artifact.bin does not exist", r"fix: give the path")),
    Case("secret that is not set", f'name: bad\ncommand: [sleep, "1"]\nsecrets: {{TOKEN: {{env: {UNSET}}}}}\n',
         says=(rf"{{spec}}:3:11: secrets.TOKEN: job 'bad': secret TOKEN comes from the environment variable {UNSET}",
               rf"fix: export {UNSET}")),
]


@pytest.fixture(scope="module")
def baseline(fleet2: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A state database and hosts that already run a job, so that "nothing changed" means something."""
    work = tmp_path_factory.mktemp("bad-input")
    inventory, state = fleet2.write_inventory(work / "inventory.yaml"), work / "state.db"
    env = flex_env(state)
    push = flex("push", str(inventory), str(write_spec(work, "base", 'command: [sleep, "3600"]\n' + SMALL)),
                "--timeout", "90", env=env, timeout=180)
    assert push.returncode == 0, push.stdout + push.stderr
    return SimpleNamespace(fleet=fleet2, inventory=inventory, state=state, env=env, work=work)


def _no_marker(fleet: Any) -> None:
    assert not Path(MARKER).exists(), "a metacharacter ran here"
    for host in fleet.hosts:
        assert host.exec(["test", "-e", MARKER]).returncode != 0, f"a metacharacter ran on {host.name}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_clear_error_and_changes_nothing(case: Case, baseline: Any) -> None:
    b = baseline
    spec = b.work / f"{re.sub(r'[^a-z]+', '-', case.id)}.yaml"
    spec.write_text(case.text)
    database, hosts = db_dump(b.state), fleet_trees(b.fleet)
    plan = flex("plan", str(b.inventory), str(spec), env=b.env) if case.exit_code == 1 else None
    push = flex("push", str(b.inventory), str(spec), "--timeout", "60" if case.exit_code == 0 else "5", env=b.env,
                timeout=180)  # a valid job gets time to converge on a loaded machine; an unplaceable one fails fast
    said = push.stdout + push.stderr
    assert push.returncode == case.exit_code, said
    for pattern in case.says:
        assert re.search(pattern.replace("{spec}", re.escape(str(spec))), said), f"{pattern!r} not in:\n{said}"
    assert "Traceback" not in said
    _no_marker(b.fleet)
    if case.exit_code == 0:  # valid: pushed, and every value reached the workload as data, byte for byte
        with Store.open(b.state) as store:
            alloc = next(a for a in store.allocations(job="meta") if a.observed_status == "running")
        seen = b.fleet.host(alloc.node).flex_root_path / "allocs" / alloc.id / "env.json"
        assert json.loads(wait_for(lambda: seen.exists() and seen.read_text(), 20, "env.json written")) == METACHARACTERS
        return
    assert fleet_trees(b.fleet) == hosts, "a host changed"
    if case.exit_code == 2:
        assert db_dump(b.state) == database, "the state database changed"
        return
    # valid but unplaceable: submitted and pending with its reason, nothing placed anywhere
    assert plan is not None and plan.returncode == 1 and "0/2 nodes fit big: 2 are short of cpus" in plan.stdout
    status = flex("status", str(b.inventory), env=b.env)
    assert "pending: 0/2 nodes fit big: 2 are short of cpus (need 1000)" in status.stdout, status.stdout
    with Store.open(b.state) as store:
        assert store.allocations(job="big") == []
