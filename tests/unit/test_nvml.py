"""The node's GPU collector (deployer/noderuntime/nvml.py) against the REAL pynvml and the fake NVML
library (tests/fakenvml): exact values, lost GPUs (F21), NVML unavailable (F22), unsupported metrics
(F23), the two-call process protocol, and changes seen by a long-running probe.

NVML is loaded once per process, so every collection runs in a subprocess with the fixture's env.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakenvml.plugin import (
    A100,
    H100,
    MODELS,
    NOT_SUPPORTED,
    FakeNvml,
    Gpu,
    preset,
)

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "deployer" / "noderuntime" / "nvml.py"
GiB = 2**30
MiB = 2**20
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"

Doc = dict[str, Any]
METRICS = ("utilization_gpu", "utilization_memory", "memory_used", "memory_total", "temperature",
           "power_draw", "power_limit", "ecc_uncorrected")


def collect(env: dict[str, str], python: str = sys.executable, script: Path = COLLECTOR,
            flags: tuple[str, ...] = ()) -> Doc:
    """Run `python nvml.py` (its main()) with env and return the JSON document it prints."""
    proc = subprocess.run([python, *flags, str(script)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    doc: Doc = json.loads(proc.stdout)
    return doc


# ---- one collection ------------------------------------------------------------------------------


def expect_two_busy_h100s(doc: Doc) -> None:
    assert doc["status"] == "ok" and doc["reason"] is None
    assert (doc["driver"], doc["nvml_version"]) == ("550.54.15", "12.550.54.15")
    assert doc["gpus"] == [
        {"index": 0, "uuid": UUID0, "name": H100, "healthy": True, "error": None,
         "utilization_gpu": 97, "utilization_memory": 41,
         "memory_used": 40 * GiB, "memory_total": 81559 * MiB,  # MemoryInfo_v2: reserved not in used
         "temperature": 64, "power_draw": 350.123, "power_limit": 700.0, "ecc_uncorrected": 0,
         "processes": [{"pid": 4242, "used_memory": 40 * GiB}]},
        {"index": 1, "uuid": UUID1, "name": H100, "healthy": True, "error": None,
         "utilization_gpu": 0, "utilization_memory": 0, "memory_used": 0, "memory_total": 81559 * MiB,
         "temperature": 31, "power_draw": 69.5, "power_limit": 700.0, "ecc_uncorrected": 2,
         "processes": []},
    ]


def expect_eight_a100s(doc: Doc) -> None:
    gpus = doc["gpus"]
    assert doc["status"] == "ok"
    assert [g["index"] for g in gpus] == list(range(8))
    assert {g["name"] for g in gpus} == {A100} and all(g["healthy"] for g in gpus)
    assert {g["memory_total"] for g in gpus} == {MODELS[A100][0]}
    assert {g["power_limit"] for g in gpus} == {400.0}
    assert len({g["uuid"] for g in gpus}) == 8


def expect_gpu1_lost(doc: Doc) -> None:
    ok, lost = doc["gpus"]
    assert doc["status"] == "ok"
    assert lost["healthy"] is False and lost["error"] == "nvmlDeviceGetHandleByIndex: GPU is lost"
    assert all(lost[k] is None for k in METRICS + ("processes",))
    assert ok["healthy"] is True and ok["error"] is None
    assert all(ok[k] is not None for k in METRICS + ("processes", "uuid", "name"))


def expect_gpu0_failing_unknown(doc: Doc) -> None:
    failing, ok = doc["gpus"]
    assert failing["healthy"] is False
    assert failing["error"] == "nvmlDeviceGetUtilizationRates: Unknown Error"
    assert failing["uuid"] == UUID0 and failing["name"] == H100  # read before the failure
    assert all(failing[k] is None for k in METRICS)
    assert ok["healthy"] is True and ok["utilization_gpu"] == 12


def expect_unsupported_null(*nulls: str) -> Callable[[Doc], None]:
    def check(doc: Doc) -> None:
        gpu, other = doc["gpus"]
        assert gpu["healthy"] is True and gpu["error"] is None  # unsupported is not a failure
        assert {k: gpu[k] for k in nulls} == dict.fromkeys(nulls)
        assert all(gpu[k] is not None for k in set(METRICS + ("processes",)) - set(nulls))
        assert all(other[k] is not None for k in METRICS)
    return check


def expect_processes(doc: Doc) -> None:
    busy, idle = doc["gpus"]
    assert busy["processes"] == [{"pid": 100, "used_memory": 10 * GiB},
                                 {"pid": 101, "used_memory": 20 * GiB},
                                 {"pid": 102, "used_memory": None}]  # NVML: value not available
    assert idle["processes"] == []  # none running: [] (known empty), unlike None (unknown)


def expect_unknown(reason: str) -> Callable[[Doc], None]:
    def check(doc: Doc) -> None:
        assert doc == {"status": "unknown", "reason": reason, "driver": None, "nvml_version": None,
                       "gpus": None}  # never [] that would read as "0 GPUs"
    return check


def expect_no_gpus(doc: Doc) -> None:
    assert doc["status"] == "ok" and doc["gpus"] == []


def h100(**fields: Any) -> Gpu:
    """One idle H100 (its UUID generated from its index unless given), changed by fields."""
    return dataclasses.replace(preset(1, H100)[0], **{"uuid": "", **fields})


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    gpus: int | list[Gpu]
    expect: Callable[[Doc], None]
    mode: str = "ok"
    model: str = H100


CASES = [
    Case("two busy H100s are reported with every value exact",
         [h100(uuid=UUID0, util=97, mem_util=41, mem_used=40 * GiB, mem_reserved=512 * MiB, temp=64,
               power=350_123, processes=[(4242, 40 * GiB)]),
          h100(uuid=UUID1, temp=31, power=69_500, ecc_uncorrected=2)],
         expect_two_busy_h100s),
    Case("eight A100s are all reported in index order with distinct UUIDs", 8, expect_eight_a100s,
         model=A100),
    Case("a lost GPU is unhealthy with the NVML error while the other is complete (F21)",
         [h100(util=50), h100(lost=True)], expect_gpu1_lost),
    Case("a GPU failing with any other NVML error is unhealthy too, the other complete",
         [h100(uuid=UUID0, util="UNKNOWN"), h100(util=12)], expect_gpu0_failing_unknown),
    Case("unsupported temperature, power and ECC are null while the rest is present (F23)",
         [h100(temp=NOT_SUPPORTED, power=NOT_SUPPORTED, power_limit=NOT_SUPPORTED,
               ecc_uncorrected=NOT_SUPPORTED), h100()],
         expect_unsupported_null("temperature", "power_draw", "power_limit", "ecc_uncorrected")),
    Case("unsupported utilization, memory and process list are null, not zero (F23)",
         [h100(util=NOT_SUPPORTED, mem_total=NOT_SUPPORTED, processes=NOT_SUPPORTED), h100()],
         expect_unsupported_null("utilization_gpu", "utilization_memory", "memory_used", "memory_total",
                                 "processes")),
    Case("metrics the user may not read are null, the GPU still healthy",
         [h100(temp="NO_PERMISSION"), h100()], expect_unsupported_null("temperature")),
    Case("processes come through the two-call protocol, memory null where NVML has none",
         [h100(processes=[(100, 10 * GiB), (101, 20 * GiB), (102, "NA")]), h100()], expect_processes),
    Case("a driver that is not loaded leaves the GPUs unknown, not zero (F22)", 2,
         expect_unknown("NVIDIA driver not loaded"), mode="driver_not_loaded"),
    Case("NVML without permission leaves the GPUs unknown and says so", 2,
         expect_unknown("NVML: insufficient permissions (can this user open /dev/nvidia*?)"),
         mode="no_permission"),
    Case("a working NVML that finds no GPU reports an empty list", 0, expect_no_gpus),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_collect_gpus(case: Case, fake_nvml: FakeNvml, tmp_path: Path) -> None:
    config = fake_nvml.write_config(tmp_path / "nvml.conf", gpus=case.gpus, mode=case.mode, model=case.model)
    case.expect(collect(fake_nvml.env(config)))


def test_a_missing_library_leaves_the_gpus_unknown_not_zero(fake_nvml: FakeNvml) -> None:
    """F22: no libnvidia-ml.so.1 anywhere the loader looks."""
    if fake_nvml.real_library_installed:
        pytest.skip("a real libnvidia-ml.so.1 is installed on this machine")
    expect_unknown("NVML library not found (libnvidia-ml.so.1): is the NVIDIA driver installed?")(
        collect(fake_nvml.missing_env()))


NO_LIBRARY = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import nvml
    reasons = [nvml.collect_gpus()["reason"] for _ in range(2)]
    print(json.dumps({"reasons": reasons, "pynvml imported": "pynvml" in sys.modules}))
""")


def test_without_a_driver_or_library_pynvml_is_not_even_imported(fake_nvml: FakeNvml) -> None:
    """Every probe of a node without NVIDIA would otherwise pay pynvml's 15-40 ms of import."""
    if fake_nvml.real_library_installed or Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver or library")
    proc = subprocess.run([sys.executable, "-c", NO_LIBRARY, str(COLLECTOR.parent)], capture_output=True, text=True,
                          env={**os.environ, **fake_nvml.missing_env()}, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "reasons": ["NVML library not found (libnvidia-ml.so.1): is the NVIDIA driver installed?"] * 2,
        "pynvml imported": False}


def test_a_missing_pynvml_leaves_the_gpus_unknown_not_zero(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    """`python -S`: no site-packages, so no pynvml; the collector itself needs only the stdlib."""
    doc = collect(fake_nvml.env(fake_nvml.write_config(tmp_path / "nvml.conf")), flags=("-S",))
    assert doc["status"] == "unknown" and doc["gpus"] is None
    assert doc["reason"].startswith("pynvml module not available (ModuleNotFoundError")


# ---- a long-running probe: several collections in one process -------------------------------------

STREAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import nvml
    for _ in sys.stdin:
        print(json.dumps(nvml.collect_gpus()), flush=True)
""")

Step = tuple[dict[str, Any], Callable[[Doc, list[Doc]], None]]  # write_config kwargs, check(doc, earlier)


def streamed(fake_nvml: FakeNvml, config: Path, steps: list[Step]) -> None:
    """One collector process; before each collection rewrite the config, after it check the doc."""
    fake_nvml.write_config(config, **steps[0][0])
    proc = subprocess.Popen([sys.executable, "-c", STREAM, str(COLLECTOR.parent)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, **fake_nvml.env(config)})
    assert proc.stdin and proc.stdout
    docs: list[Doc] = []
    try:
        for kwargs, check in steps:
            fake_nvml.write_config(config, **kwargs)
            proc.stdin.write("\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line, "the collector process died"
            docs.append(json.loads(line))
            check(docs[-1], docs[:-1])
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0


def healthy_count(n: int) -> Callable[[Doc, list[Doc]], None]:
    def check(doc: Doc, earlier: list[Doc]) -> None:
        assert doc["status"] == "ok" and [g["healthy"] for g in doc["gpus"]].count(True) == n
    return check


def utilization(*values: int) -> Callable[[Doc, list[Doc]], None]:
    def check(doc: Doc, earlier: list[Doc]) -> None:
        assert [g["utilization_gpu"] for g in doc["gpus"]] == list(values)
    return check


def gpu1_lost_keeps_identity(doc: Doc, earlier: list[Doc]) -> None:
    before, now = earlier[0]["gpus"][1], doc["gpus"][1]
    assert now["healthy"] is False and "GPU is lost" in now["error"]
    assert (now["uuid"], now["name"]) == (before["uuid"], before["name"])  # remembered from the last read
    assert doc["gpus"][0]["healthy"] is True


def unknown_because(reason: str) -> Callable[[Doc, list[Doc]], None]:
    def check(doc: Doc, earlier: list[Doc]) -> None:
        assert (doc["status"], doc["reason"], doc["gpus"]) == ("unknown", reason, None)
    return check


NOT_LOADED = {"gpus": 2, "mode": "driver_not_loaded"}
STREAMS = {
    "a changed utilization is seen by the next collection in the same process": [
        ({"gpus": [h100(util=5), h100(util=6)]}, utilization(5, 6)),
        ({"gpus": [h100(util=95), h100(util=6)]}, utilization(95, 6)),
    ],
    "a GPU lost while the probe runs is unhealthy at the next collection and keeps its UUID (F21)": [
        ({"gpus": 2}, healthy_count(2)),
        ({"gpus": [h100(), h100(lost=True)]}, gpu1_lost_keeps_identity),
    ],
    "a driver loaded after a failed start is picked up without restarting the probe (F22)": [
        (NOT_LOADED, unknown_because("NVIDIA driver not loaded")),
        ({"gpus": 2}, healthy_count(2)),
    ],
    "a driver that goes away mid-stream makes the GPUs unknown until it is back (F22)": [
        ({"gpus": 2}, healthy_count(2)),
        (NOT_LOADED, unknown_because("NVIDIA driver not loaded")),
        ({"gpus": 2}, healthy_count(2)),
    ],
}


@pytest.mark.parametrize("steps", list(STREAMS.values()), ids=list(STREAMS))
def test_streaming_collections(steps: list[Step], fake_nvml: FakeNvml, tmp_path: Path) -> None:
    streamed(fake_nvml, tmp_path / "nvml.conf", steps)


# ---- the node's python ---------------------------------------------------------------------------


def python38() -> str | None:
    """A working python3.8 on this machine, if any (pyenv's shims answer even when they cannot run it)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates.append(shutil.which("python3.8") or "python3.8")
    for python in candidates:
        try:
            if subprocess.run([python, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                              capture_output=True, timeout=10, check=False).returncode == 0:
                return python
        except OSError:
            continue
    return None


def test_the_collector_parses_as_python_3_8() -> None:
    ast.parse(COLLECTOR.read_text(), str(COLLECTOR), feature_version=(3, 8))


def test_the_collector_runs_on_python_3_8_with_pynvml_pushed_next_to_it(fake_nvml: FakeNvml,
                                                                        tmp_path: Path) -> None:
    """As on a node: nvml.py and pynvml.py side by side in the flex root, run by an old python3."""
    python = python38()
    if python is None:
        pytest.skip("no python3.8 on this machine")
    import pynvml

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    shutil.copy(COLLECTOR, runtime / "nvml.py")
    shutil.copy(pynvml.__file__, runtime / "pynvml.py")
    config = fake_nvml.write_config(tmp_path / "nvml.conf", gpus=[h100(uuid=UUID0, util=97), h100(lost=True)])
    # -E -s: no PYTHONPATH, no user site; pynvml comes from the script's directory (which -I would drop)
    doc = collect(fake_nvml.env(config), python=python, script=runtime / "nvml.py", flags=("-E", "-s"))
    assert doc["status"] == "ok", doc
    assert [(g["uuid"], g["utilization_gpu"], g["healthy"]) for g in doc["gpus"]] == [
        (UUID0, 97, True), (None, None, False)]


# ---- the fake library itself speaks NVML as pynvml expects ----------------------------------------

FIDELITY = textwrap.dedent("""
    import ctypes, pynvml as p
    try:
        p.nvmlDeviceGetCount()
    except p.NVMLError as e:
        assert e.value == p.NVML_ERROR_UNINITIALIZED, e
    p.nvmlInit()
    h = p.nvmlDeviceGetHandleByIndex(0)
    raw = p._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
    count = ctypes.c_uint(0)
    assert raw(h, ctypes.byref(count), None) == p.NVML_ERROR_INSUFFICIENT_SIZE and count.value == 2
    try:
        p.nvmlDeviceGetMemoryInfo(h, version=0x01000028)  # a version the fake (and NVML) do not know
        raise AssertionError("a wrong MemoryInfo version was accepted")
    except p.NVMLError_ArgumentVersionMismatch:
        pass
    temp = p.c_nvmlTemperature_v1_t()
    temp.version = 0x0100000D
    raw = p._nvmlGetFunctionPointer("nvmlDeviceGetTemperatureV")
    assert raw(h, ctypes.byref(temp)) == p.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    assert p.nvmlDeviceGetTemperatureV(h, 0) == 33
    assert p.nvmlDeviceGetMemoryInfo(h, version=p.nvmlMemory_v2).reserved == 1024
    assert p.nvmlDeviceGetMemoryInfo(h).used == 1024 + 4096  # v1 counts reserved as used
    assert p.nvmlDeviceGetIndex(p.nvmlDeviceGetHandleByIndex(1)) == 1
    try:
        p.nvmlDeviceGetPciInfo(h)
    except p.NVMLError_FunctionNotFound:
        pass
    p.nvmlShutdown()
    print("ok")
""")


def test_the_fake_library_checks_struct_versions_and_the_two_call_protocol(fake_nvml: FakeNvml,
                                                                          tmp_path: Path) -> None:
    config = fake_nvml.write_config(tmp_path / "nvml.conf", gpus=[
        h100(mem_reserved=1024, mem_used=4096, processes=[(1, 1), (2, 2)]), h100()])
    proc = subprocess.run([sys.executable, "-c", FIDELITY], env={**os.environ, **fake_nvml.env(config)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout == "ok\n", proc.stderr


def test_a_node_without_the_library_is_told_so_without_a_loader_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No driver, no libnvidia-ml.so.1 on LD_LIBRARY_PATH, in the loader's cache or its trusted
    directories: the probe says so without importing ctypes; a library on LD_LIBRARY_PATH is tried."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deployer" / "noderuntime"))
    try:
        import nvml
    finally:
        sys.path.pop(0)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    cache = Path("/etc/ld.so.cache")
    present = (cache.exists() and b"libnvidia-ml.so.1" in cache.read_bytes()) or any(
        Path(d, "libnvidia-ml.so.1").exists() for d in nvml.LOADER_DIRS)
    assert nvml._loader_may_find("libnvidia-ml.so.1") is (present or not cache.exists())
    assert nvml._loader_may_find("libflex-no-such-library.so.1") is not cache.exists()
    (tmp_path / "libflex-no-such-library.so.1").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{tmp_path}")
    assert nvml._loader_may_find("libflex-no-such-library.so.1")
