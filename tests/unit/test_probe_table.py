"""`flex probe`'s table: unsupported metrics read n/a, unknown GPUs say why, failures say what to do."""

from __future__ import annotations

from deployer.commands.probe import render_probe_table
from deployer.errors import TransportError
from deployer.models import GpuState, NodeState

READY = NodeState(
    name="gpu01", status="ready", cpus=64, load=(3.5, 2.0, 1.0), memory_total=2**40, memory_available=2**39,
    disk_free=2**41, rtt=0.012, gpus_known=True,
    gpus=(GpuState(0, name="NVIDIA H100 80GB HBM3", utilization=97.0, memory_used=60 * 2**30,
                   memory_total=80 * 2**30, temperature=None, power_draw=350.0, power_limit=700.0),
          GpuState(1, name="NVIDIA H100 80GB HBM3", is_healthy=False, error="GPU is lost")),
)
NO_DRIVER = NodeState(name="cpu01", status="ready", gpus_known=False, gpu_reason="NVIDIA driver not loaded")


def test_a_ready_gpu_node_shows_each_gpu_with_na_for_unsupported_metrics() -> None:
    lines = render_probe_table({"gpu01": READY})
    assert "gpu01" in lines[1] and "2 (1 unhealthy)" in lines[1] and "12ms" in lines[1]
    assert "util  97%" in lines[2] and "n/a" in lines[2] and "350/700W" in lines[2] and "healthy" in lines[2]
    assert "UNHEALTHY: GPU is lost" in lines[3]


def test_unknown_gpus_say_why_instead_of_zero() -> None:
    line = render_probe_table({"cpu01": NO_DRIVER})[1]
    assert "unknown: NVIDIA driver not loaded" in line and " 0 (" not in line


def test_an_unreachable_host_shows_the_error_and_its_fix() -> None:
    lines = render_probe_table({"h03": TransportError("h03", "connection refused", "check sshd on h03")})
    assert "unreachable" in lines[1] and "connection refused" in lines[1]
    assert "fix: check sshd on h03" in lines[2]
