"""The controller's side of the node runtime: install it, launch, stop, renew and probe allocations.

Everything goes through a Transport (SSH or local), so this module never opens a connection itself.
The runtime is pushed once per version by checksum into <root>/runtime/<id>/, when a verb finds it
missing (the directory is content-addressed and its entry point is renamed into place last, so an
entry point that exists is the whole right runtime: no hash check before every session); each allocation's
spec.json, secrets (0600, stdin only) and job files go to <root>/allocs/<alloc_id>/ by checksum, then
`flexnode.py start` launches it, idempotent by allocation id: a second identical launch sends no file
and starts nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

from deployer.bootstrap import FAILED, MISSING, failure, installer_input, stream_argv
from deployer.connection import FileSpec as PushFile
from deployer.connection import LineStream, Result, Secret
from deployer.errors import FlexError, ProbeError, TransportError
from deployer.filesync import failed_write, payload, prepare
from deployer.models import EMPTY, Host, JobSpec, NodeState, port_env
from deployer.noderuntime import ENTRY_POINT, RuntimeFile, runtime_bytecode, runtime_files, runtime_id
from deployer.probe import parse_probe
from deployer.transport import Transport

log = logging.getLogger(__name__)

ROOT_USER_FLEX_ROOT = "/var/lib/flex"
USER_FLEX_ROOT = ".local/share/flex"  # below the login user's home directory
VERB_TIMEOUT = 30.0
PYTHON = "python3"  # the node's interpreter of the runtime
# the most bytes a request over the probe stream carries: the stream holds a request's input in memory
# before it serves it, so bigger job files (models, datasets) go by the command, streamed to disk
STREAM_INPUT_MAX = 8 << 20
_INSTALLERS: dict[str, bytes] = {}  # runtime directory -> what a probe stream's BOOT gets (one per process)


@dataclass(frozen=True)
class Launch:
    """One allocation to start on one node: the job, its place, and what the scheduler assigned."""

    alloc_id: str
    job: JobSpec
    index: int = 0
    gpus: tuple[int, ...] | None = None  # None: the job asked for no GPU handling
    ports: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    extra_env: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # gang: RANK, WORLD_SIZE, ...
    lease_ttl: float = 0.0
    # the restart generation this launch applies: the node keeps it with the run, so a controller that
    # restarts after a SIGKILL sees a restart already done (never applies one twice)
    generation: int = 0
    # a new allocation id: its directory cannot exist yet, so its files travel on the `start` verb's
    # stdin, without a checksum command first (always correct: at worst identical bytes are written again)
    fresh: bool = False
    # a run that ended (or was stopped for the restart) starts again: its files may be written again
    # as they are, so the open probe stream can carry them with the start (up to STREAM_INPUT_MAX)
    restart: bool = False


def allocation_spec(launch: Launch, node: str) -> dict[str, Any]:
    """The spec.json the node runtime reads for this launch (no secrets in it, ever)."""
    job = launch.job
    env = dict(job.env)
    env.update({port_env(name): str(port) for name, port in launch.ports.items()})
    env.update(launch.extra_env)
    env.update({"FLEX_NODE": node, "FLEX_ALLOC_INDEX": str(launch.index)})
    spec: dict[str, Any] = {
        "argv": list(job.command), "env": env, "job": job.name,
        "stop_signal": job.stop.signal, "stop_timeout": job.stop.timeout, "lease_ttl": launch.lease_ttl,
        "generation": launch.generation,
    }
    if launch.gpus is not None or job.resources.gpus:
        spec["gpus"] = list(launch.gpus or ())
    if job.health is not None:
        spec["health"] = _health_spec(job, launch.ports)
    return spec


def _health_spec(job: JobSpec, ports: Mapping[str, int]) -> dict[str, Any]:
    check = job.health
    assert check is not None
    spec: dict[str, Any] = {"type": check.kind, "timeout": check.timeout, "interval": check.interval}
    if check.kind in ("http", "tcp"):
        spec["port"] = ports.get(check.port)
        if check.kind == "http":
            spec["path"] = check.path or "/"
    else:
        spec["argv"] = list(check.command)
    return spec


@functools.cache
def _runtime_manifest() -> tuple[tuple[RuntimeFile, ...], str]:
    # The runtime's files are hashed once per process, not once per node: a fleet shares one manifest.
    files = runtime_files()
    return files, runtime_id(files)


class NodeClient:
    """Runs node runtime verbs on one host through a transport; results are parsed JSON documents."""

    def __init__(self, transport: Transport, host: Host) -> None:
        self.transport = transport
        self.host = host
        self._root: str | None = host.flex_root
        self._files, self._runtime_id = _runtime_manifest()
        self.installs = 0  # how many times this client pushed the runtime (it does when a verb misses it)
        self._stream: LineStream | None = None  # the open probe stream, which also serves requests
        self._calls: dict[int, Any] = {}  # call number -> the future its reply resolves
        self._next_call = 0
        self.stream_calls = 0  # requests answered over the probe stream (no command of their own)

    async def root(self) -> str:
        """The node's flex root: flex_root, /var/lib/flex for root, else ~/.local/share/flex.

        Raises:
            TransportError: the node could not be asked for its home directory.
        """
        if self._root is None:
            if self.host.user == "root":
                self._root = ROOT_USER_FLEX_ROOT
            else:
                result = await self.transport.run(self.host, ["sh", "-c", 'echo "$HOME"; id -u'], timeout=10)
                home, uid = (result.stdout.split() + ["", ""])[:2]
                if not result.ok or not home.startswith("/"):
                    raise TransportError(self.host.name, f"cannot find the home directory: {result.stderr}",
                                         "set flex_root for this host in the inventory")
                self._root = ROOT_USER_FLEX_ROOT if uid == "0" else posixpath.join(home, USER_FLEX_ROOT)
        return self._root

    async def runtime_dir(self) -> str:
        """Where this controller's runtime version lives on the node."""
        return posixpath.join(await self.root(), "runtime", self._runtime_id)

    async def install(self, *, missing: bool = False) -> bool:
        """Push the node runtime (and pynvml.py) by checksum; True when any file travelled. missing: the
        node said it lacks this runtime, so every file travels without a checksum command first.

        The modules' bytecode goes with them (runtime_bytecode: compiled here once per process), so
        the node's first verb does not compile them. The entry point goes last in the batch, so it
        exists only once every other file does (the verbs rely on that: see runtime_missing)."""
        result = await self.transport.sync(self.host, self._runtime_push(await self.runtime_dir()), fresh=missing)
        self.installs += 1
        return bool(result.changed)

    def _runtime_push(self, target: str) -> list[PushFile]:
        """The runtime's files and bytecode for the directory target, the entry point last."""
        entry = [f for f in self._files if f.name == ENTRY_POINT]
        files = [PushFile.from_path(f.path, posixpath.join(target, f.name), f.mode)
                 for f in self._files if f.name != ENTRY_POINT]
        files += [PushFile.from_bytes(data, posixpath.join(target, name), 0o644)
                  for name, data in runtime_bytecode(self._files)]
        return files + [PushFile.from_path(f.path, posixpath.join(target, f.name), f.mode) for f in entry]

    async def _install_by_stream(self, lines: LineStream) -> None:
        """Answer BOOT's MISSING line (bootstrap.py): the installer and the runtime, compressed."""
        target = await self.runtime_dir()
        data = _INSTALLERS.get(target)
        if data is None:
            data = _INSTALLERS[target] = installer_input(self._runtime_push(target))
        await lines.send(data)
        self.installs += 1

    async def _argv(self, *args: str) -> list[str]:
        # -E -S: no PYTHON* variables and no site scan; the runtime needs only the stdlib and the
        # pynvml.py beside it (-I would drop the script's directory from sys.path, and pynvml with it)
        return [PYTHON, "-E", "-S", *await self._entry_argv(*args)]

    async def _entry_argv(self, *args: str) -> list[str]:
        return [posixpath.join(await self.runtime_dir(), ENTRY_POINT), "--root", await self.root(), *args]

    async def verb(self, *args: str, timeout: float = VERB_TIMEOUT, input: bytes | None = None) -> dict[str, Any]:
        """Run `flexnode.py VERB ARGS` and return its JSON document (ok false is returned, not raised).

        Raises:
            ProbeError: the runtime printed something that is not one JSON object.
        """
        argv = await self._argv(*args)
        result = await self.transport.run(self.host, argv, timeout=timeout, input=input)
        if runtime_missing(result.exit_status, result.stderr):
            await self.install(missing=True)
            result = await self.transport.run(self.host, argv, timeout=timeout, input=input)
        return _document(self.host.name, result)

    async def launch(self, launch: Launch, secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Push the allocation's files by checksum, then start it (a no-op when it already runs). A fresh
        allocation's files go on the `start` verb's stdin instead: one command, one interpreter."""
        alloc_dir = posixpath.join(await self.root(), "allocs", launch.alloc_id)
        files = self._allocation_files(launch, alloc_dir, secrets)
        if launch.fresh or (launch.restart and self._stream is not None and _size(files) <= STREAM_INPUT_MAX):
            data = payload(prepare(files))
            timeout = VERB_TIMEOUT + len(data) / (1 << 20)
            doc = await self._call_on_stream(["start", launch.alloc_id, "--files"], data, timeout)
            if doc is not None:
                return doc
            if launch.fresh:
                return await self.verb("start", launch.alloc_id, "--files", input=data, timeout=timeout)
        await self.transport.sync(self.host, files)
        return await self.verb("start", launch.alloc_id)

    def _allocation_files(self, launch: Launch, alloc_dir: str, secrets: Mapping[str, str] | None) -> list[PushFile]:
        spec = json.dumps(allocation_spec(launch, self.host.name), sort_keys=True).encode()
        files = [PushFile.from_bytes(spec, posixpath.join(alloc_dir, "spec.json"), 0o644)]
        if secrets:
            data = json.dumps(dict(secrets), sort_keys=True).encode()
            files.append(PushFile.from_secret(Secret(data), posixpath.join(alloc_dir, "env.secret")))
        for item in launch.job.files:
            dest = item.dest if posixpath.isabs(item.dest) else posixpath.join(alloc_dir, item.dest)
            files.append(PushFile.from_path(item.src, dest, item.mode))
        return files

    async def stop(self, alloc_id: str, *, timeout: float | None = None, signal: str | None = None) -> dict[str, Any]:
        """Stop the allocation's whole process group (SIGKILL after timeout); idempotent."""
        args = ["stop", alloc_id]
        if timeout is not None:
            args += ["--timeout", f"{timeout:g}"]
        if signal:
            args += ["--signal", signal]
        return await self.verb(*args, timeout=VERB_TIMEOUT + (timeout or 10.0))

    async def status(self, *alloc_ids: str) -> dict[str, Any]:
        """The node's view of the given allocations (all of them when none is given)."""
        return await self.verb("status", *alloc_ids)

    async def renew(self, *alloc_ids: str) -> dict[str, Any]:
        """Renew the leases of the given allocations in one command."""
        return await self.verb("renew", *alloc_ids)

    async def logs(self, alloc_id: str, *, stream: str = "stdout", previous: bool = False, tail: int = 200) -> list[str]:
        """The last lines of an allocation's stdout or stderr (or of its previous run)."""
        args = ["logs", alloc_id, "--stream", stream, "--tail", str(tail)] + (["--previous"] if previous else [])
        doc = await self.verb(*args)
        return [str(line) for line in doc.get("lines") or ()]

    async def probe(self) -> NodeState:
        """One probe document, parsed; the round trip time is measured here.

        Raises:
            TransportError: the node could not be reached (callers turn this into NodeState data).
            ProbeError: the node answered with something unreadable.
        """
        started = time.monotonic()
        doc = await self.verb("probe")
        now = time.monotonic()
        return parse_probe(self.host.name, doc, observed_at=now, rtt=now - started)

    async def probe_stream(self, interval: float = 2.0) -> AsyncIterator[NodeState]:
        """NodeStates from one long-lived probe channel: one per interval and at once on any exit.

        The runtime is installed first when the node lacks it. The stream reads the channel as its
        stdin and ends when it closes (the controller went away), so no watchdog process runs beside it.
        """
        argv = stream_argv(PYTHON, await self._entry_argv("probe", "--stream", "--interval", f"{interval:g}"))
        for attempt in (1, 2):
            async with self.transport.stream(self.host, argv, watches_stdin=True) as lines:
                self._stream = lines
                try:
                    async for line in lines:
                        if not line.strip():
                            continue
                        if line == MISSING:
                            await self._install_by_stream(lines)
                            continue
                        if line.startswith(FAILED):
                            raise failed_write(self.host.name, failure(line), "installing the node runtime failed: "
                                               f"{line[len(FAILED):]}", await self.runtime_dir())
                        try:
                            doc = json.loads(line)
                        except ValueError:
                            doc = line  # parse_probe says what is wrong with it
                        if isinstance(doc, dict) and "reply" in doc:
                            self._answer(doc)
                            continue
                        yield parse_probe(self.host.name, doc, observed_at=time.monotonic())
                finally:
                    self._stream = None
                    self._fail_calls()
                missing = runtime_missing(lines.exit_status, "\n".join(lines.stderr_tail))
            if not missing or attempt == 2:
                return
            await self.install(missing=True)

    async def _call_on_stream(self, argv: list[str], data: bytes, timeout: float) -> dict[str, Any] | None:
        """Run a verb by the open probe stream (nodecli.serve_request): the verb's document, or None
        when no stream is open, the input is over STREAM_INPUT_MAX, or the stream ended or went quiet
        before answering (the caller then runs the verb as a command; the verbs served so are idempotent)."""
        import asyncio

        lines = self._stream
        if lines is None or len(data) > STREAM_INPUT_MAX:
            return None
        self._next_call += 1
        call = self._next_call
        answer = asyncio.get_running_loop().create_future()
        self._calls[call] = answer
        head = json.dumps({"call": call, "argv": argv, "input": len(data)}, separators=(",", ":"))
        try:
            await lines.send(head.encode() + b"\n" + data)
            doc: dict[str, Any] = await asyncio.wait_for(answer, timeout)
        except (FlexError, TimeoutError, ConnectionError) as exc:
            log.info("%s: %s over the probe stream got no answer (%s); running it as a command",
                     self.host.name, argv[0], exc)
            return None
        finally:
            self._calls.pop(call, None)
        self.stream_calls += 1
        return doc

    def _answer(self, reply: Mapping[str, Any]) -> None:
        answer = self._calls.get(reply.get("reply"))  # type: ignore[arg-type]
        doc = reply.get("doc")
        if answer is not None and not answer.done():
            if isinstance(doc, dict):
                answer.set_result(doc)
            else:
                answer.set_exception(ProbeError(f"{self.host.name}: a stream reply without a document: {reply!r}"))

    def _fail_calls(self) -> None:
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the probe stream ended"))


def _size(files: Sequence[PushFile]) -> int:
    """The bytes files hold (a file that cannot be read counts as too big: the sync reports it)."""
    total = 0
    for item in files:
        if item.content is not None:
            total += len(item.content)
            continue
        try:
            total += Path(item.source or "").stat().st_size
        except OSError:
            return STREAM_INPUT_MAX + 1
    return total


def runtime_missing(exit_status: int | None, stderr: str) -> bool:
    """Whether a verb failed because the node lacks this runtime (never installed, another version,
    or a file of it removed): python3 could not open the entry point, or it could not import a module."""
    return exit_status in (1, 2) and (f"{ENTRY_POINT}': [Errno 2]" in stderr or "ModuleNotFoundError" in stderr)


def _document(node: str, result: Result) -> dict[str, Any]:
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise ProbeError(f"{node}: node runtime exited {result.exit_status} without a JSON answer: {detail}") from None
    if not isinstance(doc, dict):
        raise ProbeError(f"{node}: node runtime answered {result.stdout[:200]!r}, not a JSON object")
    return doc


async def gather_probes(clients: Sequence[NodeClient], *, timeout: float) -> dict[str, NodeState | Exception]:
    """One probe round over many nodes at once: each node's state, or the error that stopped it.

    A node that lacks the runtime gets it first (see NodeClient.verb). A slow or dead node costs at
    most `timeout` and never delays the others' answers.
    """
    import asyncio

    async def one(client: NodeClient) -> NodeState | Exception:
        try:
            return await asyncio.wait_for(client.probe(), timeout)
        except TimeoutError:
            return TimeoutError(f"no answer within {timeout:g}s")
        except FlexError as exc:
            return exc

    results = await asyncio.gather(*(one(c) for c in clients))
    return {c.host.name: r for c, r in zip(clients, results)}
