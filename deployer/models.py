"""flex's vocabulary as pure, frozen dataclasses: the fleet, the jobs, and what was observed.

Nothing here does I/O or reads a clock. Desired state and observed state are always separate fields.
"""

from __future__ import annotations

import hashlib
import json
from collections import abc
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping

EMPTY: Mapping[str, Any] = MappingProxyType({})

# --- the fleet (inventory) -------------------------------------------------------------------------

CONNECTIONS = ("ssh", "local")


@dataclass(frozen=True)
class Host:
    """One machine of the inventory, with its connection settings and placement facts resolved."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    connection: str = "ssh"
    datacenter: str | None = None
    rack: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    flex_root: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # every merged variable

    @property
    def is_local(self) -> bool:
        """True when this host is reached with subprocesses instead of SSH."""
        return self.connection == "local"


@dataclass(frozen=True)
class Group:
    """An inventory group: its direct hosts, its child groups and its own variables."""

    name: str
    hosts: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class Inventory:
    """A resolved inventory: hosts in file order, groups by name, and where it came from."""

    source: str
    hosts: tuple[Host, ...] = ()
    groups: Mapping[str, Group] = field(default_factory=lambda: EMPTY)
    vars: Mapping[str, Any] = field(default_factory=lambda: EMPTY)  # the `all` group's vars

    def host(self, name: str) -> Host:
        """The host called name.

        Raises:
            KeyError: no such host.
        """
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def host_names(self) -> tuple[str, ...]:
        """Host names in inventory order."""
        return tuple(h.name for h in self.hosts)


def frozen_mapping(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of a mapping, for dataclass fields that must not change."""
    return MappingProxyType(dict(values or {}))


__all__ = ["CONNECTIONS", "EMPTY", "Group", "Host", "Inventory", "frozen_mapping"]


# --- jobs (the job spec; parsed by deployer/spec.py, schema in deployer/schemas/job.schema.json) ------
#
# Durations are float seconds, sizes int bytes. Every default here equals the `default` documented in
# job.schema.json (a unit test compares them). A key set to null in YAML means "not set".


KINDS = ("service", "batch", "system")
CONCURRENCY = ("forbid", "allow", "replace")
SPREAD = ("rack", "datacenter")
CONSTRAINT_ATTRIBUTES = ("rack", "datacenter", "host")
SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGABRT", "SIGALRM",
           "SIGWINCH")

# The environment flex gives every workload (the supervisor sets these; a spec may not set them).
ENV_JOB = "FLEX_JOB"  # the job name
ENV_ALLOC_ID = "FLEX_ALLOC_ID"  # the allocation id (unique, stable across restarts on the same node)
ENV_ALLOC_INDEX = "FLEX_ALLOC_INDEX"  # 0 .. count-1
ENV_ALLOC_DIR = "FLEX_ALLOC_DIR"  # the allocation directory: the working directory, where files land
ENV_NODE = "FLEX_NODE"  # the inventory name of the host it runs on
ENV_PORT_PREFIX = "FLEX_PORT_"  # FLEX_PORT_<NAME>: the port number assigned to port NAME (upper case)
ENV_CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"  # GPU indices chosen by the scheduler, "" when gpus = 0
ENV_NVIDIA_DEVICES = "NVIDIA_VISIBLE_DEVICES"  # the same, for containers
ENV_RANK = "RANK"  # gang only: this member's rank, 0 .. WORLD_SIZE-1 (torchrun --node-rank)
ENV_WORLD_SIZE = "WORLD_SIZE"  # gang only: number of members = count (torchrun --nnodes)
ENV_MASTER_ADDR = "MASTER_ADDR"  # gang only: address of rank 0's host
ENV_MASTER_PORT = "MASTER_PORT"  # gang only: port GANG_PORT of rank 0
GANG_PORT = "master"  # gang jobs always have a port of this name (dynamic unless the spec sets it)
RESERVED_ENV = (ENV_JOB, ENV_ALLOC_ID, ENV_ALLOC_INDEX, ENV_ALLOC_DIR, ENV_NODE, ENV_CUDA_DEVICES,
                ENV_NVIDIA_DEVICES)
GANG_ENV = (ENV_RANK, ENV_WORLD_SIZE, ENV_MASTER_ADDR, ENV_MASTER_PORT)


def port_env(port_name: str) -> str:
    """The variable carrying a port's number: "http" -> "FLEX_PORT_HTTP"."""
    return ENV_PORT_PREFIX + port_name.upper()


@dataclass(frozen=True)
class Resources:
    """What one allocation needs on its node. gpu_model is a glob on the NVML name ("*H100*")."""

    cpus: float = 0.1
    memory: int = 300 * 1024**2
    gpus: int = 0
    gpu_model: str | None = None
    gpu_memory: int | None = None  # minimum total memory per GPU, bytes


@dataclass(frozen=True)
class Constraint:
    """One placement rule: a host attribute (rack, datacenter, host, or a label) compared to values."""

    attribute: str  # "rack" | "datacenter" | "host" | "label"
    operator: str  # "in" | "not_in" | "exists" | "absent"
    values: tuple[str, ...] = ()
    label: str = ""  # the label name when attribute == "label"

    def allows(self, value: str | None) -> bool:
        """True when a host whose attribute has this value (None: missing) satisfies the rule."""
        if self.operator == "exists":
            return value is not None
        if self.operator == "absent":
            return value is None
        if self.operator == "in":
            return value in self.values
        return value not in self.values

    def describe(self) -> str:
        """The rule in words for placement reasons: "label zone in [a, b]"."""
        subject = f"label {self.label}" if self.attribute == "label" else self.attribute
        if self.operator in ("exists", "absent"):
            return f"{subject} {'is set' if self.operator == 'exists' else 'is not set'}"
        return f"{subject} {self.operator.replace('_', ' ')} [{', '.join(self.values)}]"


@dataclass(frozen=True)
class Placement:
    """Where allocations may go (datacenters, constraints) and how they spread."""

    datacenters: tuple[str, ...] = ()  # empty: any datacenter
    constraints: tuple[Constraint, ...] = ()
    spread: str | None = None  # "rack" | "datacenter"
    distinct_hosts: bool = False  # true for gang jobs unless the spec says otherwise


@dataclass(frozen=True)
class Port:
    """A named port: static when `port` is set, else chosen by the scheduler on the node."""

    name: str
    port: int | None = None

    @property
    def is_dynamic(self) -> bool:
        """True when the scheduler picks the number."""
        return self.port is None


@dataclass(frozen=True)
class HealthCheck:
    """How flex decides an allocation is healthy: an http GET, a tcp connect or a command's exit 0."""

    kind: str  # "http" | "tcp" | "command"
    path: str = ""  # http only, e.g. "/healthz"
    port: str = ""  # port name, http and tcp
    command: tuple[str, ...] = ()  # command only, argv
    interval: float = 10.0
    timeout: float = 2.0
    failures: int = 3  # consecutive failures before the allocation is restarted
    grace: float = 10.0  # after a start, failures are not counted for this long


@dataclass(frozen=True)
class RestartPolicy:
    """Restarts on the same node: at most `attempts` per `interval`, delay growing by `backoff`."""

    attempts: int = 2
    interval: float = 1800.0
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 30.0
    mode: str = "fail"  # "fail": give up (then reschedule); "delay": wait for the interval, try again


@dataclass(frozen=True)
class ReschedulePolicy:
    """What happens when a node is lost (policy, grace) or a service's restarts are spent (attempts)."""

    policy: str = "reschedule"  # "reschedule" | "wait"
    grace: float = 15.0  # an unreachable node's allocations are lost only after this
    attempts: int | None = None  # None: unlimited
    delay: float = 30.0  # doubles per attempt up to max_delay
    max_delay: float = 3600.0


@dataclass(frozen=True)
class UpdatePolicy:
    """Rolling update when the spec changes: batches of max_parallel, gated on health."""

    max_parallel: int = 1
    min_healthy_time: float = 10.0
    healthy_deadline: float = 300.0
    auto_revert: bool = False


@dataclass(frozen=True)
class StopPolicy:
    """How an allocation is stopped: signal the process group, SIGKILL after timeout."""

    signal: str = "SIGTERM"
    timeout: float = 10.0


@dataclass(frozen=True)
class Schedule:
    """A periodic batch job: fire on `cron` in `timezone`; overlap handled by `concurrency`."""

    cron: str
    concurrency: str = "forbid"  # "forbid" | "allow" | "replace"
    timezone: str = "UTC"


@dataclass(frozen=True)
class FileSpec:
    """A file pushed into the allocation directory (dest relative) or to an absolute dest."""

    src: str = field(default="", compare=False, metadata={"fingerprint": False})  # absolute, this machine
    dest: str = ""
    mode: int = 0o644
    sha256: str = ""  # of the content, read when the spec was loaded
    size: int = 0


@dataclass(frozen=True)
class SecretRef:
    """A secret the workload gets as env var `name`: from the controller's env var or from a file."""

    name: str
    env: str | None = None
    file: str | None = field(default=None, metadata={"fingerprint": False})  # absolute, this machine
    where: str = field(default="", compare=False, metadata={"fingerprint": False})  # spec file:line:col


@dataclass(frozen=True)
class JobSpec:
    """One job file, validated and normalized: everything the scheduler and reconciler need."""

    name: str
    command: tuple[str, ...]  # argv; a string command is ("/bin/sh", "-c", command)
    kind: str = "service"
    count: int = 1  # for system jobs: 1 per eligible node
    gang: bool = False
    schedule: Schedule | None = None
    files: tuple[FileSpec, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    secrets: tuple[SecretRef, ...] = ()
    resources: Resources = Resources()
    placement: Placement = Placement()
    ports: tuple[Port, ...] = ()
    health: HealthCheck | None = None
    restart: RestartPolicy = RestartPolicy()
    reschedule: ReschedulePolicy = ReschedulePolicy()
    update: UpdatePolicy = UpdatePolicy()
    stop: StopPolicy = StopPolicy()
    source: str = field(default="", compare=False, metadata={"fingerprint": False})  # the spec file

    @property
    def is_batch(self) -> bool:
        """True for batch jobs (run to completion; exit 0 is final)."""
        return self.kind == "batch"

    @property
    def is_system(self) -> bool:
        """True for system jobs (one allocation on every eligible node)."""
        return self.kind == "system"

    @property
    def is_periodic(self) -> bool:
        """True when a cron schedule launches this job."""
        return self.schedule is not None

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the normalized spec: changes exactly when a rolling update is due."""
        return job_fingerprint(self)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def normalized(value: Any, *, skip_defaults: bool = False) -> Any:
    """A JSON-ready form of a job value: dataclasses as dicts, minus fields marked fingerprint=False.

    With skip_defaults, fields equal to their default are left out too, so that a field added to a
    dataclass later (with a default) does not change the fingerprint of every existing job.
    Scalars return first, each dataclass's fields are looked up once (_kept_fields), and the exact
    types met most (dict, mappingproxy, tuple, list) are told by identity before the ABC isinstance
    (which alone doubled node_record's time): the controller normalizes every node's state (~300
    values each) when it saves it.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if hasattr(kind, "__dataclass_fields__") and not isinstance(value, type):
        return {f.name: normalized(getattr(value, f.name), skip_defaults=skip_defaults) for f in _kept_fields(kind)
                if not (skip_defaults and _is_default(f, getattr(value, f.name)))}
    if kind is dict or kind is MappingProxyType or isinstance(value, abc.Mapping):
        return {str(k): normalized(v, skip_defaults=skip_defaults) for k, v in sorted(value.items())}
    if kind is tuple or kind is list or isinstance(value, (tuple, list)):
        return [normalized(v, skip_defaults=skip_defaults) for v in value]
    return value


_KEPT: dict[type, tuple[Field[Any], ...]] = {}


def _kept_fields(kind: type) -> tuple[Field[Any], ...]:
    """A dataclass's fields that take part in normalized() (not marked fingerprint=False), per class."""
    kept = _KEPT.get(kind)
    if kept is None:
        kept = _KEPT[kind] = tuple(f for f in fields(kind) if f.metadata.get("fingerprint", True))
    return kept


def _is_default(spec: Any, value: Any) -> bool:
    if spec.default is not MISSING:
        return bool(spec.default == value)
    if spec.default_factory is not MISSING:
        return bool(spec.default_factory() == value)
    return False


def job_fingerprint(job: JobSpec) -> str:
    """sha256 hex of the job's normalized, canonical JSON (file contents by hash, secrets by reference)."""
    text = json.dumps(normalized(job, skip_defaults=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


__all__ += [
    "CONCURRENCY", "CONSTRAINT_ATTRIBUTES", "ENV_ALLOC_DIR", "ENV_ALLOC_ID", "ENV_ALLOC_INDEX",
    "ENV_CUDA_DEVICES", "ENV_JOB", "ENV_MASTER_ADDR", "ENV_MASTER_PORT", "ENV_NODE", "ENV_NVIDIA_DEVICES",
    "ENV_PORT_PREFIX", "ENV_RANK", "ENV_WORLD_SIZE", "GANG_ENV", "GANG_PORT", "KINDS", "RESERVED_ENV",
    "SIGNALS", "SPREAD", "Constraint", "FileSpec", "HealthCheck", "JobSpec", "Placement", "Port",
    "ReschedulePolicy", "Resources", "RestartPolicy", "Schedule", "SecretRef", "StopPolicy",
    "UpdatePolicy", "job_fingerprint", "normalized", "port_env",
]


# --- what was observed on the nodes ------------------------------------------------------------------


@dataclass(frozen=True)
class GpuProcess:
    """A compute process NVML sees on a GPU; `alloc_id` is set when an allocation owns it."""

    pid: int
    used_memory: int | None = None
    alloc_id: str | None = None


@dataclass(frozen=True)
class GpuState:
    """One GPU as NVML reported it. A metric NVML does not support is None, never 0."""

    index: int
    uuid: str | None = None
    name: str | None = None
    is_healthy: bool = True
    error: str | None = None
    utilization: float | None = None
    memory_utilization: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    temperature: float | None = None
    power_draw: float | None = None
    power_limit: float | None = None
    ecc_uncorrected: int | None = None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class HealthResult:
    """The last health check the node ran for an allocation."""

    ok: bool
    detail: str = ""
    checked_at: float | None = None
    failures: int = 0


@dataclass(frozen=True)
class AllocationObservation:
    """What a node says about one allocation directory (node-side times are the node's wall clock)."""

    alloc_id: str
    status: str  # starting | running | exited | stopped | fenced
    is_alive: bool = False
    pid: int | None = None
    start_time: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    launches: int = 0
    generation: int = 0  # the restart generation the current run was launched at (see Launch.generation)
    health: HealthResult | None = None
    log_tail: tuple[str, ...] = ()


NODE_READY, NODE_UNREACHABLE, NODE_UNTRUSTED, NODE_UNKNOWN = "ready", "unreachable", "untrusted", "unknown"


@dataclass(frozen=True)
class NodeState:
    """One node as last observed: facts, GPUs, allocations; unreachable is data, not an exception."""

    name: str
    status: str = NODE_UNKNOWN  # ready | unreachable | untrusted | unknown (never probed yet)
    error: str | None = None  # why it is unreachable or untrusted, with the fix
    observed_at: float | None = None  # controller monotonic time of the last document
    unreachable_since: float | None = None
    boot_id: str | None = None
    hostname: str | None = None
    cpus: int | None = None
    load: tuple[float, float, float] | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    disk_total: int | None = None
    disk_free: int | None = None
    uptime: float | None = None
    gpus_known: bool = False
    gpu_reason: str | None = None  # why GPUs are unknown ("NVIDIA driver not loaded")
    gpus: tuple[GpuState, ...] = ()
    allocations: Mapping[str, AllocationObservation] = field(default_factory=lambda: EMPTY)
    orphans: tuple[Mapping[str, Any], ...] = ()
    rtt: float | None = None
    node_time: float | None = None  # the node's wall clock when it wrote the document

    @property
    def is_ready(self) -> bool:
        """True when the node answered its last probe and its host key is trusted."""
        return self.status == NODE_READY



# --- the controller's records ----------------------------------------------------------------------

DESIRED_RUN, DESIRED_STOP = "run", "stop"
OBSERVED = ("pending", "starting", "running", "exited", "complete", "failed", "lost", "unknown", "stopped")


@dataclass(frozen=True)
class Allocation:
    """One placed copy of a job on one node, as the controller records it.

    `desired_status` is what the controller wants (run | stop); `observed_status` is what it last saw
    (see OBSERVED). The resources it holds on its node (cpus, memory, gpus, ports) are recorded with it,
    so the scheduler can count what is free without asking the node.
    """

    id: str
    job: str
    node: str
    index: int = 0
    job_version: str = ""  # the JobSpec fingerprint it was placed with
    cpus: float = 0.0
    memory: int = 0
    gpus: tuple[int, ...] = ()
    ports: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    rank: int | None = None  # gang member rank
    desired_status: str = DESIRED_RUN
    observed_status: str = "pending"
    generation: int = 0
    restarts: int = 0
    exit_code: int | None = None
    created_at: float = 0.0

    @property
    def holds_resources(self) -> bool:
        """True while the allocation counts against its node's capacity."""
        return self.desired_status == DESIRED_RUN and self.observed_status not in ("complete", "failed", "lost", "stopped")


__all__ += [
    "NODE_READY", "NODE_UNKNOWN", "NODE_UNREACHABLE", "NODE_UNTRUSTED", "AllocationObservation",
    "GpuProcess", "GpuState", "HealthResult", "NodeState",
    "DESIRED_RUN", "DESIRED_STOP", "OBSERVED", "Allocation",
]
