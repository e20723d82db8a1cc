"""Node probes: the node runtime's JSON document -> NodeState (pure), plus the thin async glue.

Like a pyinfra fact: a command (`flexnode.py probe`) and a pure parser. The parser is strict about
types (a wrong type is a ProbeError naming the field) and keeps "not supported" as None, never 0.
GPUs NVML could not see are "unknown" with the reason, never an empty list pretending zero GPUs.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from deployer.errors import ProbeError
from deployer.models import (
    NODE_READY,
    AllocationObservation,
    GpuProcess,
    GpuState,
    HealthResult,
    NodeState,
    frozen_mapping,
)


def parse_probe(node: str, text: str | Mapping[str, Any], *, observed_at: float, rtt: float | None = None) -> NodeState:
    """Parse one probe document from node into a ready NodeState.

    Raises:
        ProbeError: the document is not JSON or a field has the wrong type.
    """
    doc = _as_mapping(node, text)
    try:
        gpus_known, gpu_reason, gpus = parse_gpus(doc.get("gpus"))
        memory = doc.get("memory") or {}
        disk = doc.get("disk") or {}
        allocations = {str(k): parse_allocation(str(k), v) for k, v in (doc.get("allocations") or {}).items()}
        return NodeState(
            name=node, status=NODE_READY, observed_at=observed_at, rtt=rtt,
            boot_id=_opt(doc, "boot_id", str), hostname=_opt(doc, "hostname", str),
            cpus=_opt(doc, "cpus", int), load=_load(doc.get("load")),
            memory_total=_opt(memory, "total", int), memory_available=_opt(memory, "available", int),
            disk_total=_opt(disk, "total", int), disk_free=_opt(disk, "free", int),
            uptime=_opt(doc, "uptime", float), node_time=_opt(doc, "time", float),
            gpus_known=gpus_known, gpu_reason=gpu_reason, gpus=gpus,
            allocations=frozen_mapping(allocations),
            orphans=tuple(frozen_mapping(o) for o in doc.get("orphans") or ()),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProbeError(f"{node}: unreadable probe document: {exc}") from None


def parse_gpus(section: Any) -> tuple[bool, str | None, tuple[GpuState, ...]]:
    """(known, reason, gpus) from the probe's `gpus` section; absent or failed NVML means unknown."""
    if not isinstance(section, Mapping):
        return False, "the node runtime reported no GPU section", ()
    if section.get("status") != "ok":
        return False, str(section.get("reason") or "NVML failed for an unknown reason"), ()
    return True, None, tuple(parse_gpu(g) for g in section.get("gpus") or ())


def parse_gpu(raw: Mapping[str, Any]) -> GpuState:
    """One GPU entry of the probe document."""
    return GpuState(
        index=int(raw["index"]), uuid=_opt(raw, "uuid", str), name=_opt(raw, "name", str),
        is_healthy=bool(raw.get("healthy", True)), error=_opt(raw, "error", str),
        utilization=_opt(raw, "utilization_gpu", float), memory_utilization=_opt(raw, "utilization_memory", float),
        memory_used=_opt(raw, "memory_used", int), memory_total=_opt(raw, "memory_total", int),
        temperature=_opt(raw, "temperature", float), power_draw=_opt(raw, "power_draw", float),
        power_limit=_opt(raw, "power_limit", float), ecc_uncorrected=_opt(raw, "ecc_uncorrected", int),
        processes=tuple(GpuProcess(int(p["pid"]), _opt(p, "used_memory", int), _opt(p, "alloc_id", str))
                        for p in raw.get("processes") or ()),
    )


def parse_allocation(alloc_id: str, raw: Mapping[str, Any]) -> AllocationObservation:
    """One allocation's state as the node runtime reports it."""
    health = raw.get("health")
    return AllocationObservation(
        alloc_id=alloc_id, status=str(raw.get("status") or "unknown"), is_alive=bool(raw.get("alive")),
        pid=_opt(raw, "pid", int), start_time=_opt(raw, "start_time", str),
        exit_code=_opt(raw, "exit_code", int), signal=_opt(raw, "signal", int),
        started_at=_opt(raw, "started_at", float), finished_at=_opt(raw, "finished_at", float),
        launches=int(raw.get("restarts") or 0), generation=int(raw.get("generation") or 0),
        health=None if not isinstance(health, Mapping) else HealthResult(
            ok=bool(health.get("ok")), detail=str(health.get("detail") or ""),
            checked_at=_opt(health, "checked_at", float), failures=int(health.get("failures") or 0)),
        log_tail=tuple(str(line) for line in raw.get("log_tail") or ()),
    )


def _as_mapping(node: str, text: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(text, Mapping):
        return text
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProbeError(f"{node}: probe output is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ProbeError(f"{node}: probe output is not a JSON object: {text[:200]!r}")
    return doc


def _opt(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if kind in (int, float) and isinstance(value, bool):
        raise TypeError(f"{key}: expected a number, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise TypeError(f"{key}: expected a string, got {value!r}")
    return kind(value)


def _load(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    one, five, fifteen = (float(v) for v in value)
    return one, five, fifteen
