"""GPU collector of the flex node runtime: every GPU on this node through NVML, as a JSON-ready dict.

Runs ON THE NODE under its python3 (3.8 or newer): stdlib only, plus the `pynvml` module file that flex
pushes next to this one. `collect_gpus()` returns

    {"status": "ok" | "unknown", "reason": str | None, "driver": str | None, "nvml_version": str | None,
     "gpus": [gpu, ...] | None}

and each gpu is

    {"index", "uuid", "name", "healthy", "error", "utilization_gpu", "utilization_memory",
     "memory_used", "memory_total", "temperature", "power_draw", "power_limit", "ecc_uncorrected",
     "processes": [{"pid", "used_memory"}] | None}

Units: percent, bytes, degrees C, watts (float), a count of volatile uncorrected ECC errors.

Rules (DESIGN.md "On the node", FAULTS.md F21-F23):
- a metric NVML does not support (or may not read, or this driver lacks) is None, never 0;
- a GPU NVML fails on (GPU_IS_LOST or any other error) has healthy False, the error and its metrics
  None, and the other GPUs are still fully reported; `healthy` says only whether NVML can talk
  to the GPU: judging ECC counts is the controller's policy;
- pynvml missing, the library missing or the driver not loaded: status "unknown", the reason, and gpus
  None -- never an empty list that would read as "0 GPUs".

pynvml (15-40 ms of import) is imported on the first call that can use it: where the NVIDIA driver is
loaded (/proc/driver/nvidia/version) or the dynamic loader finds libnvidia-ml.so.1 (the fake library
of the tests comes through LD_LIBRARY_PATH). Without either the answer is the library-not-found reason
at once, checked again on every call so a driver installed under a running stream is picked up.
NVML is initialised once per process (the streaming probe calls collect_gpus repeatedly) and again on
the next call after NVML itself failed.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs 3-5 ms of import on the node; only the type checker needs it
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

pynvml = None  # type: Any  # the shipped module, once _load_pynvml imported it
_import_error = None  # type: str | None  # why `import pynvml` failed (it is not tried again)

LIBRARY = "libnvidia-ml.so.1"
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
LIBRARY_NOT_FOUND = "NVML library not found (libnvidia-ml.so.1): is the NVIDIA driver installed?"
DRIVER_NOT_LOADED = "NVIDIA driver not loaded"

# NVML return codes (nvml.h), spelled out so this module does not need pynvml to be importable.
UNINITIALIZED = 1
NOT_SUPPORTED = 3
NO_PERMISSION = 4
DRIVER_NOT_LOADED_CODE = 9
LIBRARY_NOT_FOUND_CODE = 12
FUNCTION_NOT_FOUND = 13
LIB_RM_VERSION_MISMATCH = 18
ARGUMENT_VERSION_MISMATCH = 25

NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0

# Errors that mean "this metric is not available here", not "this GPU is failing".
ABSENT = (NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND)
# Errors after which the next variant of a call (older struct version, older function) is tried.
TRY_NEXT = ABSENT + (ARGUMENT_VERSION_MISMATCH,)
# Errors of a call on one GPU that say NVML as a whole is gone: all GPUs become unknown.
NVML_WIDE = (UNINITIALIZED, DRIVER_NOT_LOADED_CODE, LIB_RM_VERSION_MISMATCH)

_initialised = False
_identity = {}  # type: dict[int, tuple[str | None, str | None]]  # index -> (uuid, name) last seen


class DeviceError(Exception):
    """An NVML call on one GPU failed in a way that makes the GPU unhealthy."""


def collect_gpus() -> dict[str, Any]:
    """Every GPU of this node, or status "unknown" and the reason why they cannot be known."""
    doc = {"status": "unknown", "reason": None, "driver": None, "nvml_version": None,
           "gpus": None}  # type: dict[str, Any]
    doc["reason"] = _load_pynvml()
    if doc["reason"] is not None:
        return doc
    try:
        _collect_into(doc)
    except pynvml.NVMLError as err:
        _forget_init()
        doc.update(status="unknown", reason=_reason(err), gpus=None)
    except Exception as err:  # a bug or an unexpected pynvml: never crash the probe, never guess
        doc.update(status="unknown", reason="GPU collector failed: %s: %s" % (type(err).__name__, err),
                   gpus=None)
    return doc


def _load_pynvml() -> str | None:
    """Import pynvml where NVML can be there: None once it is imported, else why the GPUs are unknown."""
    global pynvml, _import_error
    if pynvml is None and _import_error is None:
        if not _library_loadable():
            return LIBRARY_NOT_FOUND
        try:
            import pynvml as module
        except Exception as exc:  # ImportError, or a broken module file
            _import_error = "%s: %s" % (type(exc).__name__, exc)
        else:
            pynvml = module
    if pynvml is None:
        return "pynvml module not available (%s)" % _import_error
    return None


def _library_loadable() -> bool:
    """Whether the NVIDIA driver is loaded or the dynamic loader finds the NVML library (as pynvml
    loads it); without either, importing pynvml could only end in LIBRARY_NOT_FOUND."""
    if os.path.exists(DRIVER_VERSION_FILE):
        return True
    if not _loader_may_find(LIBRARY):
        return False  # most nodes without a GPU: no ctypes import and no loader search (~3 ms a probe)
    import ctypes  # 3 ms, against pynvml's 15-40 ms (it imports ctypes itself)
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        return False
    return True


# where the dynamic loader looks besides LD_LIBRARY_PATH and its cache (the trusted directories)
LOADER_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")


def _loader_may_find(name: str) -> bool:
    """False only when the dynamic loader surely cannot find name: not in a directory of
    LD_LIBRARY_PATH, not in its cache (/etc/ld.so.cache), not in a trusted directory. True when unsure
    (no readable cache), so that dlopen decides."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(LOADER_DIRS)
    if any(os.path.exists(os.path.join(d, name)) for d in dirs):
        return True
    try:
        with open("/etc/ld.so.cache", "rb") as handle:
            return name.encode() in handle.read()
    except OSError:
        return True


def _collect_into(doc: dict[str, Any]) -> None:
    """Fill doc from NVML; NVMLError escaping from here means NVML as a whole failed."""
    _ensure_init()
    count = pynvml.nvmlDeviceGetCount()
    doc["driver"] = _text(_system_value(pynvml.nvmlSystemGetDriverVersion))
    doc["nvml_version"] = _text(_system_value(pynvml.nvmlSystemGetNVMLVersion))
    doc["gpus"] = [_collect_gpu(index) for index in range(count)]
    doc["status"] = "ok"


def _ensure_init() -> None:
    """nvmlInit once per process; raises NVMLError when NVML cannot be initialised."""
    global _initialised
    if not _initialised:
        pynvml.nvmlInit()
        _initialised = True


def _forget_init() -> None:
    """After NVML failed as a whole: shut it down (best effort) so the next call initialises again."""
    global _initialised
    if _initialised:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    _initialised = False


def _reason(err: Exception) -> str:
    """Why the GPUs are unknown, for a person reading the console."""
    code = getattr(err, "value", None)
    if code == LIBRARY_NOT_FOUND_CODE:
        return LIBRARY_NOT_FOUND
    if code == DRIVER_NOT_LOADED_CODE:
        return DRIVER_NOT_LOADED
    if code == NO_PERMISSION:
        return "NVML: insufficient permissions (can this user open /dev/nvidia*?)"
    if code == LIB_RM_VERSION_MISMATCH:
        return "NVML library and loaded NVIDIA driver differ in version (reload the driver or reboot)"
    return "NVML failed: %s" % (err,)


def _system_value(call: Callable[[], Any]) -> Any:
    """A system-wide NVML value, or None where this NVML does not have it."""
    try:
        return call()
    except pynvml.NVMLError as err:
        if err.value in ABSENT:
            return None
        raise


def _collect_gpu(index: int) -> dict[str, Any]:
    """One GPU: all its metrics, or healthy False and the error of the first NVML call that failed."""
    gpu = _empty_gpu(index)
    try:
        handle = _device_call("nvmlDeviceGetHandleByIndex", index)
        _fill(gpu, handle)
    except DeviceError as err:
        known = _identity.get(index, (None, None))
        failed = _empty_gpu(index)
        failed.update(uuid=gpu["uuid"] or known[0], name=gpu["name"] or known[1], healthy=False,
                      error=str(err))
        return failed
    _identity[index] = (gpu["uuid"], gpu["name"])
    return gpu


def _empty_gpu(index: int) -> dict[str, Any]:
    """A GPU entry with every key present and nothing known yet."""
    return {
        "index": index, "uuid": None, "name": None, "healthy": True, "error": None,
        "utilization_gpu": None, "utilization_memory": None, "memory_used": None, "memory_total": None,
        "temperature": None, "power_draw": None, "power_limit": None, "ecc_uncorrected": None,
        "processes": None,
    }


def _fill(gpu: dict[str, Any], handle: Any) -> None:
    """Read every metric of one GPU into gpu; raises DeviceError when the GPU fails."""
    gpu["uuid"] = _text(_device_call("nvmlDeviceGetUUID", handle))
    gpu["name"] = _text(_device_call("nvmlDeviceGetName", handle))
    util = _device_call("nvmlDeviceGetUtilizationRates", handle)
    if util is not None:
        gpu["utilization_gpu"], gpu["utilization_memory"] = util.gpu, util.memory
    memory = _first_supported([
        # v2 first: `used` without the memory the driver reserves, as nvidia-smi shows it
        ("nvmlDeviceGetMemoryInfo", (handle, getattr(pynvml, "nvmlMemory_v2", None))),
        ("nvmlDeviceGetMemoryInfo", (handle,)),
    ])
    if memory is not None:
        gpu["memory_used"], gpu["memory_total"] = memory.used, memory.total
    gpu["temperature"] = _first_supported([
        ("nvmlDeviceGetTemperatureV", (handle, NVML_TEMPERATURE_GPU)),
        ("nvmlDeviceGetTemperature", (handle, NVML_TEMPERATURE_GPU)),
    ])
    gpu["power_draw"] = _watts(_device_call("nvmlDeviceGetPowerUsage", handle))
    gpu["power_limit"] = _watts(_first_supported([
        ("nvmlDeviceGetEnforcedPowerLimit", (handle,)),
        ("nvmlDeviceGetPowerManagementLimit", (handle,)),
    ]))
    gpu["ecc_uncorrected"] = _device_call("nvmlDeviceGetTotalEccErrors", handle,
                                          NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC)
    gpu["processes"] = _processes(handle)


def _processes(handle: Any) -> list[dict[str, Any]] | None:
    """Compute processes with pid and GPU memory in bytes (None where NVML cannot say)."""
    procs = _first_supported([
        ("nvmlDeviceGetComputeRunningProcesses_v3", (handle,)),
        ("nvmlDeviceGetComputeRunningProcesses_v2", (handle,)),
    ])
    if procs is None:
        return None
    return [{"pid": p.pid, "used_memory": p.usedGpuMemory} for p in procs]


def _first_supported(calls: Sequence[tuple[str, tuple[Any, ...]]]) -> Any:
    """The result of the first variant of a call that this driver and pynvml support, else None.

    A variant is skipped when pynvml lacks the function, when an argument is None (a struct version
    this pynvml does not know), or when NVML answers with one of TRY_NEXT. NVML_WIDE errors propagate
    as NVMLError (every GPU unknown); any other error is a DeviceError (this GPU unhealthy)."""
    for name, args in calls:
        call = getattr(pynvml, name, None)
        if call is None or None in args:
            continue
        try:
            return call(*args)
        except pynvml.NVMLError as err:
            if err.value in NVML_WIDE:
                raise
            if err.value not in TRY_NEXT:
                raise DeviceError("%s: %s" % (name, err))
    return None


def _device_call(name: str, *args: Any) -> Any:
    """One NVML call on a GPU: its result, None when unsupported, DeviceError when the GPU fails."""
    return _first_supported([(name, args)])


def _watts(milliwatts: int | None) -> float | None:
    """NVML milliwatts as watts."""
    return None if milliwatts is None else milliwatts / 1000.0


def _text(value: Any) -> str | None:
    """NVML strings: str from pynvml 11.5+, bytes from older ones."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def main() -> int:
    """`python3 nvml.py`: print this node's GPU document as one line of JSON."""
    import json  # only when run by hand: the probe imports this module, and json costs it re and enum

    sys.stdout.write(json.dumps(collect_gpus()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
