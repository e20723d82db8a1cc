"""pytest plugin: a fake libnvidia-ml.so.1 (fakenvml.c) that the real pynvml loads, and its config files.

The session fixture `fake_nvml` compiles fakenvml.c with gcc once (cached by the sha256 of the source
and flags, under $FLEX_TEST_CACHE or ~/.cache/flex-tests, so later runs are instant) and returns a
FakeNvml:

    cfg = fake_nvml.write_config(tmp_path / "nvml.conf", gpus=preset(2, H100))
    subprocess.run([...], env={**os.environ, **fake_nvml.env(cfg)})   # pynvml now sees two H100s
    fake_nvml.missing_env()                                           # no library at all

The library is loaded once per process, so run the code under test in a subprocess. The cache lies
outside /tmp on purpose: test-fleet hosts mount their own tmpfs on /tmp, and must see the library
(their config files must be written where each host can read them, see `render_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("fakenvml.c")
LIBRARY = "libnvidia-ml.so.1"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wl,-soname," + LIBRARY)

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"
NOT_SUPPORTED = "NOT_SUPPORTED"  # any metric may be an NVML error name instead of a number

# (memory total in bytes, enforced power limit in mW) as real NVML reports them for these models.
MODELS = {
    H100: (81559 * 2**20, 700_000),
    A100: (40960 * 2**20, 400_000),
    "NVIDIA A100-SXM4-80GB": (81920 * 2**20, 400_000),
    "NVIDIA L4": (23034 * 2**20, 72_000),
}

Metric = int | str  # a value, or an NVML error name such as NOT_SUPPORTED


@dataclasses.dataclass
class Gpu:
    """One fake GPU; field names are the config keys (see the header of fakenvml.c)."""

    name: str = H100
    uuid: str = ""
    util: Metric = 0
    mem_util: Metric = 0
    mem_total: Metric = MODELS[H100][0]
    mem_used: Metric = 0
    mem_reserved: Metric = 0
    temp: Metric = 33
    power: Metric = 70_000
    power_limit: Metric = MODELS[H100][1]
    ecc_uncorrected: Metric = 0
    ecc_corrected: Metric = 0
    processes: Sequence[tuple[int, int | str]] | str = ()  # (pid, bytes or "NA"), or an error
    lost: bool = False


def fake_uuid(host: str, index: int) -> str:
    """A stable, fleet-unique GPU UUID in NVIDIA's format."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"flex-fake-gpu/{host}/{index}"))


def preset(count: int, model: str = H100, host: str = "", **overrides: object) -> list[Gpu]:
    """count idle GPUs of a named model (see MODELS) with UUIDs unique to host; overrides apply to all."""
    mem_total, power_limit = MODELS[model]
    return [dataclasses.replace(Gpu(name=model, uuid=fake_uuid(host, i), mem_total=mem_total,
                                    power_limit=power_limit), **overrides)  # type: ignore[arg-type]
            for i in range(count)]


def render_config(gpus: int | Sequence[Gpu] = 2, mode: str = "ok", driver: str = "550.54.15",
                  nvml_version: str = "12.550.54.15", model: str = H100, host: str = "") -> str:
    """The config file text for these GPUs (or `count` idle GPUs of model) and mode."""
    if isinstance(gpus, int):
        gpus = preset(gpus, model, host)
    lines = ["# fake NVML config (tests/fakenvml/fakenvml.c)", "mode=" + mode, "driver=" + driver,
             "nvml_version=" + nvml_version, f"gpu.count={len(gpus)}"]
    for index, gpu in enumerate(gpus):
        lines.extend(_gpu_lines(index, gpu, host))
    return "\n".join(lines) + "\n"


def _gpu_lines(index: int, gpu: Gpu, host: str) -> Iterator[str]:
    """The `gpuN.key=value` lines of one GPU."""
    prefix = f"gpu{index}."
    for field in dataclasses.fields(Gpu):
        value = getattr(gpu, field.name)
        if field.name == "processes":
            entries = [value] if isinstance(value, str) else [f"{pid}:{used}" for pid, used in value]
            yield from (prefix + "proc=" + entry for entry in entries)
        elif field.name == "lost":
            yield f"{prefix}lost={int(value)}"
        elif field.name == "uuid":
            yield prefix + "uuid=" + (value or fake_uuid(host, index))
        else:
            yield f"{prefix}{field.name}={value}"


@dataclasses.dataclass(frozen=True)
class FakeNvml:
    """The built library (in libdir) and helpers to point a process at it."""

    libdir: Path
    missing_libdir: Path  # an existing directory without libnvidia-ml.so.1

    def write_config(self, path: str | Path, gpus: int | Sequence[Gpu] = 2, mode: str = "ok",
                     **kwargs: str) -> Path:
        """Write a config file atomically (a new inode, so a running fake library re-reads it)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render_config(gpus, mode, **kwargs))
        os.replace(tmp, path)
        return path

    def env(self, config_path: str | Path) -> dict[str, str]:
        """Environment for a process whose pynvml must load the fake library with this config."""
        return {"LD_LIBRARY_PATH": str(self.libdir), "FAKE_NVML_CONFIG": str(config_path)}

    def missing_env(self) -> dict[str, str]:
        """Environment for a process that finds no NVML library (where none is installed system-wide)."""
        return {"LD_LIBRARY_PATH": str(self.missing_libdir), "FAKE_NVML_CONFIG": ""}

    @functools.cached_property
    def real_library_installed(self) -> bool:
        """Whether the dynamic loader finds a real libnvidia-ml.so.1 without LD_LIBRARY_PATH help."""
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        probe = f"import ctypes; ctypes.CDLL({LIBRARY!r})"
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=False).returncode == 0


def cache_root() -> Path:
    """Where built libraries are kept between runs."""
    return Path(os.environ.get("FLEX_TEST_CACHE") or Path.home() / ".cache" / "flex-tests") / "fakenvml"


def build_library(root: Path) -> Path:
    """Compile fakenvml.c into root/<sha256>/libnvidia-ml.so.1 unless it is there; returns that dir."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:24]
    libdir = root / key
    if (libdir / LIBRARY).exists():
        return libdir
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        proc = subprocess.run(["gcc", *CFLAGS, "-o", str(staging / LIBRARY), str(SOURCE)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"gcc failed to build {SOURCE}:\n{proc.stderr}")
        try:
            staging.rename(libdir)  # atomic: concurrent sessions never see a half-written library
        except OSError:
            if not (libdir / LIBRARY).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libdir


@pytest.fixture(scope="session")
def fake_nvml() -> FakeNvml:
    """The fake NVML library, built once per source version."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc not found: it builds the fake NVML library (tests/fakenvml/fakenvml.c)")
    root = cache_root()
    missing = root / "empty"
    missing.mkdir(parents=True, exist_ok=True)
    return FakeNvml(libdir=build_library(root), missing_libdir=missing)
