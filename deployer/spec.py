"""Job spec files -> JobSpec: validated against job.schema.json and the spec rules, every problem at once.

    YAML file --load_document--> Document (positions) --schema + rules--> problems, all located
                                                     \\--(no problems)--> JobSpec (normalized, frozen)

Nothing here prints or talks to a host. It reads the spec files, the files they push (to hash them) and,
in `resolve_secrets` only, secret files; secret values never appear in a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from deployer import schemacache
from deployer.document import Document, did_you_mean, load_document
from deployer.errors import ConfigError, Location, Problem
from deployer.models import (
    GANG_PORT,
    Constraint,
    FileSpec,
    HealthCheck,
    JobSpec,
    Placement,
    Port,
    ReschedulePolicy,
    Resources,
    RestartPolicy,
    Schedule,
    SecretRef,
    StopPolicy,
    UpdatePolicy,
    frozen_mapping,
)
from deployer.schema_problems import schema_problems, shown
from deployer.spec_rules import declared_ports, file_dest, items, rule_problems, section
from deployer.units import parse_duration, parse_size

log = logging.getLogger(__name__)

SHELL = ("/bin/sh", "-c")
T = TypeVar("T")


@lru_cache(maxsize=1)
def job_schema_text() -> str:
    """The job JSON Schema shipped in deployer/schemas, as text."""
    return resources.files("deployer.schemas").joinpath("job.schema.json").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def job_schema() -> dict[str, Any]:
    """The job JSON Schema shipped in deployer/schemas (what `flex schema job` prints)."""
    schema: dict[str, Any] = json.loads(job_schema_text())
    return schema


def load_job(path: str | Path) -> JobSpec:
    """Read, validate and normalize one job spec file.

    Raises:
        ConfigError: the file is unreadable, malformed or invalid; every problem, located.
    """
    return parse_job(load_document(path))


def load_jobs(paths: Iterable[str | Path]) -> tuple[JobSpec, ...]:
    """Load several job spec files, in order, reporting the problems of all of them at once.

    Raises:
        ConfigError: any file has problems, or two files define the same job name.
    """
    loaded: list[tuple[JobSpec, Document]] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            doc = load_document(path)
            loaded.append((parse_job(doc), doc))
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_duplicate_names(loaded))
    if problems:
        raise ConfigError(problems)
    return tuple(job for job, _ in loaded)


def inventory_problems(jobs: Iterable[JobSpec], inventory: Any) -> list[Problem]:
    """Placement rules that name hosts or datacenters the inventory does not have, so that they match no
    host at all (a typo, or the wrong inventory): bad input, located, never a job left pending forever."""
    hosts = {h.name for h in inventory.hosts}
    datacenters = {h.datacenter for h in inventory.hosts if h.datacenter}
    problems: list[Problem] = []
    for job in jobs:
        where: list[tuple[tuple[str | int, ...], str, str]] = []
        for i, rule in enumerate(job.placement.constraints):
            if rule.attribute == "host" and rule.operator == "in" and not hosts & set(rule.values):
                where.append((("placement", "constraints", i), f"host {', '.join(rule.values)}",
                              did_you_mean(rule.values[0], hosts).replace("valid keys", "its hosts")))
        if job.placement.datacenters and not datacenters & set(job.placement.datacenters):
            where.append((("placement", "datacenters"), f"datacenter {', '.join(job.placement.datacenters)}",
                          did_you_mean(job.placement.datacenters[0], datacenters).replace("valid keys",
                                                                                       "its datacenters")
                          if datacenters else "set flex_datacenter on the inventory's hosts"))
        if not where:
            continue
        doc = load_document(job.source)
        for path, what, hint in where:
            problems.append(doc.problem(path, f"job '{job.name}': {what} matches no host of the inventory "
                                        f"{inventory.source}", f"name what the inventory has ({hint})"))
    return problems


def _duplicate_names(loaded: list[tuple[JobSpec, Document]]) -> list[Problem]:
    first: dict[str, str] = {}
    problems = []
    for job, doc in loaded:
        if job.name in first:
            problems.append(doc.problem(("name",), f"job '{job.name}' is also defined in {first[job.name]}",
                                        "give every job its own name"))
        first.setdefault(job.name, doc.source)
    return problems


def looks_like_job(data: Any) -> bool:
    """True when parsed YAML reads as a job spec rather than an inventory, even with misspelled keys."""
    if not isinstance(data, Mapping) or "all" in data:
        return False
    keys = {str(key) for key in data}
    return bool(keys & {"name", "command"}) or 2 * len(keys & set(job_schema()["properties"])) > len(keys)


def validate_job(doc: Document) -> list[Problem]:
    """Every problem of a job document (schema and rules), located; empty when it is valid."""
    if not isinstance(doc.data, Mapping):
        return [doc.problem((), f"expected a job spec (a mapping with at least name and command), got "
                            f"{shown(doc.data)}", "start from an example in playbooks/")]
    return _schema_problems(doc) + rule_problems(doc)


def _schema_problems(doc: Document) -> list[Problem]:
    """The schema's problems with doc; a document that passed before is not checked again (schemacache)."""
    digest = schemacache.key(job_schema_text(), doc.data)
    if digest is not None and schemacache.seen_valid(digest):
        return []
    problems = schema_problems(doc, job_schema())
    if digest is not None and not problems:
        schemacache.remember_valid(digest)
    return problems


def parse_job(document: Document) -> JobSpec:
    """A valid, normalized JobSpec from a parsed job document.

    Raises:
        ConfigError: every problem of the document, located.
    """
    problems = validate_job(document)
    if problems:
        raise ConfigError(problems)
    job = _build(document)
    log.debug("job %s (%s) loaded from %s", job.name, job.kind, document.source)
    return job


def _build(doc: Document) -> JobSpec:
    data: Mapping[str, Any] = doc.data
    kind = data.get("kind") or "service"
    gang = data.get("gang") is True
    return JobSpec(
        name=data["name"], command=_argv(data["command"]), kind=kind,
        count=1 if kind == "system" or data.get("count") is None else int(data["count"]), gang=gang,
        schedule=_policy(Schedule, data, "schedule") if data.get("schedule") is not None else None,
        files=_files(doc), env=frozen_mapping({str(k): str(v) for k, v in section(data, "env").items()}),
        secrets=_secrets(doc), resources=_policy(Resources, data, "resources"),
        placement=_placement(section(data, "placement"), gang), ports=_ports(data), health=_health(data),
        restart=_policy(RestartPolicy, data, "restart"), reschedule=_policy(ReschedulePolicy, data, "reschedule"),
        update=_policy(UpdatePolicy, data, "update"), stop=_policy(StopPolicy, data, "stop"), source=doc.source,
    )


def _argv(command: str | list[Any]) -> tuple[str, ...]:
    return (*SHELL, command) if isinstance(command, str) else tuple(str(arg) for arg in command)


def _policy(cls: type[T], data: Mapping[str, Any], key: str) -> T:
    """A section's dataclass, its durations and sizes converted as the schema's $refs say."""
    props = job_schema()["properties"][key]["properties"]
    values = {name: _converted(props[name], value) for name, value in section(data, key).items()
              if value is not None}
    return cls(**values)


def _converted(prop: Mapping[str, Any], value: Any) -> Any:
    ref = prop.get("$ref")
    if ref == "#/$defs/duration":
        return parse_duration(value)
    if ref == "#/$defs/size":
        return parse_size(value)
    types = prop.get("type")
    if types == "number":
        return float(value)
    if "integer" in (types or ()) and isinstance(value, float):
        return int(value)  # JSON Schema counts 3.0 as an integer; the model wants 3
    return value


def _files(doc: Document) -> tuple[FileSpec, ...]:
    base = Path(doc.source).parent
    out, problems = [], []
    for i, item in items(doc.data, "files"):
        path = (base / item["src"]).resolve()
        try:
            digest, size = _sha256(path)
        except OSError as exc:
            problems.append(doc.problem(("files", i, "src"), f"cannot read {path}: {exc.strerror}",
                                        "make the file readable"))
            continue
        mode = int(item.get("mode") or "0644", 8)
        out.append(FileSpec(str(path), file_dest(item["src"], item.get("dest")), mode, digest, size))
    if problems:
        raise ConfigError(problems)
    return tuple(out)


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _secrets(doc: Document) -> tuple[SecretRef, ...]:
    base = Path(doc.source).parent
    out = []
    for name, ref in section(doc.data, "secrets").items():
        file = ref.get("file")
        out.append(SecretRef(str(name), env=ref.get("env"), file=None if file is None else str((base / file).resolve()),
                             where=str(doc.at(("secrets", name), key=True))))
    return tuple(out)


def _placement(raw: Mapping[str, Any], gang: bool) -> Placement:
    distinct = raw.get("distinct_hosts")
    return Placement(
        datacenters=tuple(raw.get("datacenters") or ()),
        constraints=tuple(_constraint(rule) for _, rule in items(raw, "constraints")),
        spread=raw.get("spread"),
        distinct_hosts=gang if distinct is None else distinct,
    )


def _constraint(rule: Mapping[str, Any]) -> Constraint:
    label = rule.get("label")
    attribute = "label" if label is not None else rule["attribute"]
    values: tuple[str, ...] = ()
    if rule.get("exists") is not None:
        operator = "exists" if rule["exists"] else "absent"
    elif rule.get("value") is not None:
        operator, values = "in", (str(rule["value"]),)
    else:
        operator = "in" if rule.get("in") is not None else "not_in"
        values = tuple(str(v) for v in rule[operator])
    return Constraint(attribute, operator, values, label=label or "")


def _ports(data: Mapping[str, Any]) -> tuple[Port, ...]:
    ports = [Port(item["name"], None if item.get("port") is None else int(item["port"]))
             for _, item in items(data, "ports")]
    if data.get("gang") is True and GANG_PORT not in {p.name for p in ports}:
        ports.append(Port(GANG_PORT))
    return tuple(ports)


def _health(data: Mapping[str, Any]) -> HealthCheck | None:
    raw = section(data, "health")
    if not raw:
        return None
    timing: dict[str, Any] = {key: parse_duration(raw[key]) for key in ("interval", "timeout", "grace")
                              if raw.get(key) is not None}
    if raw.get("failures") is not None:
        timing["failures"] = int(raw["failures"])
    if raw.get("http") is not None:
        port = raw.get("port") or declared_ports(data)[0]
        return HealthCheck("http", path=raw["http"], port=port, **timing)
    if raw.get("tcp") is not None:
        return HealthCheck("tcp", port=raw["tcp"], **timing)
    return HealthCheck("command", command=_argv(raw["command"]), **timing)


def resolve_secrets(job: JobSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The job's secret values by variable name, read from environ or from files.

    Raises:
        ConfigError: a secret whose variable is unset or whose file is unreadable, naming the job, the
            secret and the fix (never a value); every such secret at once.
    """
    values: dict[str, str] = {}
    problems: list[Problem] = []
    for ref in job.secrets:
        try:
            values[ref.name] = _secret_value(ref, environ)
        except _SecretMissing as exc:
            problems.append(Problem(_location(ref.where, job.source), f"job '{job.name}': secret {ref.name} "
                                    f"{exc.reason}", exc.fix, f"secrets.{ref.name}"))
    if problems:
        raise ConfigError(problems)
    return values


class _SecretMissing(Exception):
    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def _secret_value(ref: SecretRef, environ: Mapping[str, str]) -> str:
    if ref.env is not None:
        if ref.env not in environ:
            raise _SecretMissing(f"comes from the environment variable {ref.env}, which is not set",
                                 f"export {ref.env} where flex push or flex controller runs")
        return environ[ref.env]
    path = Path(ref.file or "")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _SecretMissing(f"comes from {path}, which cannot be read ({exc.strerror})",
                             "create the file, readable by the user running flex (mode 0600)") from None
    except UnicodeDecodeError:
        raise _SecretMissing(f"comes from {path}, which is not UTF-8 text",
                             "store the secret as text (base64-encode binary secrets)") from None
    return text.removesuffix("\n").removesuffix("\r")


def _location(where: str, source: str) -> Location:
    file, _, rest = where.rpartition(":")
    file, _, line = file.rpartition(":")
    if line.isdigit() and rest.isdigit():
        return Location(file, int(line), int(rest))
    return Location(where or source)
