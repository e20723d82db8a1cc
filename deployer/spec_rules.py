"""The job spec rules a JSON Schema cannot say: how keys relate to each other and to the world.

Each rule reads the raw YAML data of a Document and yields located problems. Rules run even when the
schema found problems, so every rule tolerates values of the wrong type (the schema reports those) and
stays silent about them. The only I/O is checking that pushed files exist next to the spec.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from deployer.cron import parse_cron, zone
from deployer.document import Document, did_you_mean
from deployer.errors import Problem
from deployer.models import GANG_ENV, GANG_PORT, RESERVED_ENV
from deployer.units import parse_duration

Rule = Callable[[Document, Mapping[str, Any]], Iterator[Problem]]


def rule_problems(doc: Document) -> list[Problem]:
    """Every cross-key problem of a job document whose top level is a mapping."""
    data = doc.data if isinstance(doc.data, Mapping) else {}
    return [problem for rule in RULES for problem in rule(doc, data)]


def section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """data[key] when it is a mapping, else an empty one (null and wrong types read as 'not set')."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def items(data: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    """(index, item) for the mapping items of the list data[key]; other values are skipped."""
    value = data.get(key)
    return [(i, v) for i, v in enumerate(value) if isinstance(v, Mapping)] if isinstance(value, list) else []


def seconds(value: Any) -> float | None:
    """A duration value in seconds, or None when it is absent or not a valid duration."""
    try:
        return parse_duration(value)
    except ValueError:
        return None


def declared_ports(data: Mapping[str, Any]) -> list[str]:
    """The port names a job has, counting the implicit gang port."""
    names = [str(item["name"]) for _, item in items(data, "ports") if isinstance(item.get("name"), str)]
    if data.get("gang") is True and GANG_PORT not in names:
        names.append(GANG_PORT)
    return names


def _kind(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    kind = data.get("kind", "service")
    if data.get("schedule") is not None and kind != "batch":
        yield doc.problem(("schedule",), f"a schedule is only for batch jobs, and this job's kind is '{kind}'",
                          "set kind: batch, or remove schedule", key=True)
    if kind == "system" and data.get("count") is not None:
        yield doc.problem(("count",), "a system job runs one allocation on every eligible node: count is not allowed",
                          "remove count (choose the nodes with placement)", key=True)
    if data.get("gang") is not True:
        return
    count = data.get("count", 1)
    if kind == "system":
        yield doc.problem(("gang",), "a system job cannot be a gang", "set kind: batch or service, or remove gang")
    elif isinstance(count, int) and not isinstance(count, bool) and count < 2:
        where = ("count",) if "count" in data else ("gang",)
        yield doc.problem(where, f"a gang needs count >= 2 (one member per node), got count {count}",
                          "set count to the number of nodes, e.g. count: 2")


def _ports(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    names: dict[Any, int] = {}
    numbers: dict[Any, int] = {}
    for i, port in items(data, "ports"):
        name, number = port.get("name"), port.get("port")
        if isinstance(name, str) and name in names:
            yield doc.problem(("ports", i, "name"), f"port name '{name}' is already used by ports[{names[name]}]",
                              "give each port its own name")
        if isinstance(number, int) and number in numbers:
            yield doc.problem(("ports", i, "port"), f"port {number} is already used by ports[{numbers[number]}]",
                              "give each static port its own number, or omit port for a dynamic one")
        names.setdefault(name, i)
        numbers.setdefault(number, i)


def _health(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    health = section(data, "health")
    if not health:
        return
    kinds = [k for k in ("http", "tcp", "command") if health.get(k) is not None]
    if not kinds:
        yield doc.problem(("health",), "a health check needs one of http, tcp or command",
                          "e.g. http: /healthz, tcp: http (a port name) or command: ./check.sh", key=True)
    for extra in kinds[1:]:
        yield doc.problem(("health", extra), f"a health check has one of http, tcp or command, not both "
                          f"{kinds[0]} and {extra}", f"keep {kinds[0]} or {extra}", key=True)
    if health.get("port") is not None and kinds and kinds[0] != "http":
        yield doc.problem(("health", "port"), "health.port is only for http checks (tcp names its port itself)",
                          "remove health.port", key=True)
    yield from _health_port(doc, data, health, kinds[:1])


def _health_port(doc: Document, data: Mapping[str, Any], health: Mapping[str, Any],
                 kind: list[str]) -> Iterator[Problem]:
    ports = declared_ports(data)
    key = "tcp" if kind == ["tcp"] else "port"
    name = health.get(key)
    if kind == ["http"] and name is None and len(ports) != 1:
        why = "the job declares no ports" if not ports else f"the job has {len(ports)} ports"
        fix = "add ports: [{name: http}]" if not ports else f"set health.port to one of {', '.join(ports)}"
        yield doc.problem(("health", "http"), f"an http check needs a port, and {why}", fix)
    elif isinstance(name, str) and name not in ports:
        fix = did_you_mean(name, ports).replace("valid keys", "declared ports") if ports else "add it to ports"
        yield doc.problem(("health", key), f"no port named '{name}' in ports", fix)


def _durations(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    for path in (("health", "interval"), ("health", "timeout"), ("restart", "interval"),
                 ("update", "healthy_deadline")):
        value = seconds(section(data, path[0]).get(path[1]))
        if value == 0:
            yield doc.problem(path, "expected a duration longer than 0", "e.g. \"10s\"")
    restart, update = section(data, "restart"), section(data, "update")
    delay, cap = seconds(restart.get("delay")), seconds(restart.get("max_delay"))
    if delay is not None and cap is not None and cap < delay:
        yield doc.problem(("restart", "max_delay"), f"max_delay ({restart['max_delay']}) is shorter than delay "
                          f"({restart['delay']})", "make max_delay at least delay")
    settle, deadline = seconds(update.get("min_healthy_time")), seconds(update.get("healthy_deadline"))
    if settle is not None and deadline is not None and deadline <= settle:
        yield doc.problem(("update", "healthy_deadline"), f"healthy_deadline ({update['healthy_deadline']}) must be "
                          f"longer than min_healthy_time ({update['min_healthy_time']})",
                          "raise healthy_deadline or lower min_healthy_time")


def _gpus(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    resources = section(data, "resources")
    gpus = resources.get("gpus", 0)
    if not isinstance(gpus, int) or gpus > 0:
        return
    for key in ("gpu_model", "gpu_memory"):
        if resources.get(key) is not None:
            yield doc.problem(("resources", key), f"{key} applies to GPUs, but resources.gpus is {gpus}",
                              "set resources.gpus: 1 (or more), or remove " + key, key=True)


def _constraints(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    for i, rule in items(section(data, "placement"), "constraints"):
        path = ("placement", "constraints", i)
        subjects = [k for k in ("label", "attribute") if rule.get(k) is not None]
        tests = [k for k in ("value", "in", "not_in", "exists") if rule.get(k) is not None]
        if len(subjects) != 1:
            yield doc.problem(path, f"a constraint names exactly one of label or attribute, got "
                              f"{' and '.join(subjects) or 'neither'}", "e.g. {label: zone, in: [a, b]} or "
                              "{attribute: rack, not_in: [r3]}")
        if len(tests) != 1:
            yield doc.problem(path, f"a constraint has exactly one of value, in, not_in or exists, got "
                              f"{' and '.join(tests) or 'none'}", "e.g. value: a100, in: [a, b] or exists: true")


def _env(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    env, secrets = section(data, "env"), section(data, "secrets")
    gang = data.get("gang") is True
    for where, names in (("env", env), ("secrets", secrets)):
        for name in names:
            if str(name) in RESERVED_ENV or str(name).startswith("FLEX_") or gang and str(name) in GANG_ENV:
                yield doc.problem((where, str(name)), f"{name} is set by flex itself",
                                  "rename the variable (flex sets FLEX_*, CUDA_VISIBLE_DEVICES, "
                                  "NVIDIA_VISIBLE_DEVICES, and RANK, WORLD_SIZE, MASTER_* for gangs)", key=True)
    for name in secrets:
        if name in env:
            yield doc.problem(("secrets", str(name)), f"{name} is both in env and in secrets",
                              "keep one of them", key=True)
    for name, ref in secrets.items():
        if isinstance(ref, Mapping) and len([k for k in ("env", "file") if ref.get(k) is not None]) != 1:
            yield doc.problem(("secrets", str(name)), "a secret comes from exactly one of env or file",
                              f"e.g. {name}: {{env: {name}}} or {name}: {{file: secrets/{str(name).lower()}}}")


def _files(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    base = Path(doc.source).parent
    dests: dict[str, int] = {}
    for i, item in items(data, "files"):
        src, dest = item.get("src"), item.get("dest")
        if isinstance(src, str) and src and not (base / src).is_file():
            what = "is a directory" if (base / src).is_dir() else "does not exist"
            yield doc.problem(("files", i, "src"), f"{base / src} {what}",
                              "give the path of a file, relative to the spec file's directory")
        target = file_dest(src, dest) if isinstance(src, str) and isinstance(dest, (str, type(None))) else None
        if target is not None and (target == ".." or target.startswith("../")):
            yield doc.problem(("files", i, "dest"), f"dest '{dest}' leaves the allocation directory",
                              "use a path inside it, or an absolute path")
        elif target is not None and target in dests:
            yield doc.problem(("files", i, "dest"), f"{target} is also the dest of files[{dests[target]}]",
                              "give each file its own dest")
        if target is not None:
            dests.setdefault(target, i)


def file_dest(src: str, dest: str | None) -> str:
    """Where a pushed file lands: dest normalized, src's name when dest is missing or ends with '/'."""
    name = posixpath.basename(src.replace("\\", "/"))
    if not dest:
        return name
    joined = dest + name if dest.endswith("/") else dest
    return posixpath.normpath(joined)


def _schedule(doc: Document, data: Mapping[str, Any]) -> Iterator[Problem]:
    schedule = section(data, "schedule")
    checks: list[tuple[str, Callable[[str], object]]] = [("cron", parse_cron), ("timezone", zone)]
    for key, check in checks:
        value = schedule.get(key)
        if isinstance(value, str) and value:
            try:
                check(value)
            except ValueError as exc:
                yield doc.problem(("schedule", key), str(exc), _SCHEDULE_FIXES[key])


_SCHEDULE_FIXES = {
    "cron": "e.g. \"0 3 * * *\" (03:00 every day), \"*/15 * * * *\", \"0 9 * * MON-FRI\" or \"@daily\"",
    "timezone": "use an IANA name such as UTC, Europe/Berlin or America/New_York",
}

RULES: tuple[Rule, ...] = (_kind, _ports, _health, _durations, _gpus, _constraints, _env, _files, _schedule)
