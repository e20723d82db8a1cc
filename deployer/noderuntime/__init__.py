"""The flex node runtime: the files flex pushes to every node's flex root, and their manifest.

The files in this directory (except this one) run ON THE NODE under its python3 (3.8+, stdlib only);
`flexnode.py` is the single entry point (nodecli.py, which it imports, documents the node layout and every verb).
The controller pushes them, plus the `pynvml` module file of the installed nvidia-ml-py, into
<root>/runtime/<runtime_id()>/ by checksum, and runs `python3 <that dir>/flexnode.py VERB ...`.
Beside them go their bytecode files (runtime_bytecode()), so a node's first verb imports instead of
compiling; they are derived from the sources, so they are not part of the runtime id.

This module runs on the controller only (Python 3.11).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import sys
from pathlib import Path
from typing import NamedTuple

from deployer.noderuntime.nodecommon import VERSION

HERE = Path(__file__).resolve().parent
ENTRY_POINT = "flexnode.py"
# Sources shipped without bytecode: the entry point runs as a script, which python compiles on every
# run and never reads from __pycache__; pynvml.py (~300 KiB) is imported on GPU nodes only, where the
# node's python writes its own bytecode on the first import.
NOT_COMPILED = frozenset({ENTRY_POINT, "pynvml.py"})

__all__ = ["ENTRY_POINT", "NOT_COMPILED", "VERSION", "RuntimeFile", "pynvml_path", "runtime_bytecode",
           "runtime_files", "runtime_id"]


class RuntimeFile(NamedTuple):
    """One file to push: its name in the runtime directory, local path, sha256 (hex), size and mode."""

    name: str
    path: Path
    sha256: str
    size: int
    mode: int


def pynvml_path() -> Path | None:
    """The installed `pynvml` module file (nvidia-ml-py), found without importing it; None if absent."""
    spec = importlib.util.find_spec("pynvml")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _describe(name: str, path: Path) -> RuntimeFile:
    data = path.read_bytes()
    mode = 0o755 if name == ENTRY_POINT else 0o644
    return RuntimeFile(name, path, hashlib.sha256(data).hexdigest(), len(data), mode)


def runtime_files(include_pynvml: bool = True) -> tuple[RuntimeFile, ...]:
    """Every file of the node runtime, sorted by name, with its sha256; pynvml.py when installed.

    Without nvidia-ml-py installed the runtime still works: the probe reports "GPUs unknown" with
    the reason, never "0 GPUs".
    """
    files = [_describe(p.name, p) for p in sorted(HERE.glob("*.py")) if p.name != "__init__.py"]
    nvml = pynvml_path() if include_pynvml else None
    if nvml is not None:
        files.append(_describe("pynvml.py", nvml))
    return tuple(sorted(files, key=lambda f: f.name))


def runtime_id(files: tuple[RuntimeFile, ...] | None = None) -> str:
    """Directory name for this exact runtime: "<VERSION>-<12 hex of the files' combined sha256>".

    A changed file lands in a new directory, so a running supervisor never sees its files replaced
    under it, and nodes with the same id provably run the same code.
    """
    digest = hashlib.sha256()
    for item in files if files is not None else runtime_files():
        digest.update((f"{item.name} {item.sha256}\n").encode())
    return f"{VERSION}-{digest.hexdigest()[:12]}"


@functools.cache
def runtime_bytecode(files: tuple[RuntimeFile, ...] | None = None) -> tuple[tuple[str, bytes], ...]:
    """("__pycache__/<module>.<cache tag>.pyc", content) for every runtime module but NOT_COMPILED,
    compiled by this interpreter once per process, on the first call (an install).

    The files are checked-hash pycs (PEP 552): 4 bytes magic number, 4 bytes flags (0b11: hash-based,
    check the source), the 8-byte importlib.util.source_hash() of the source, then the marshalled code
    object, as `py_compile.compile(invalidation_mode=CHECKED_HASH)` writes them. A node's python
    whose cache tag is this one's (same minor version) loads them after hashing the source (a
    changed source is compiled again, never run stale); any other python ignores them. Not part of
    the runtime id: they follow from the sources. Empty when this interpreter caches no bytecode.
    """
    tag = sys.implementation.cache_tag
    if tag is None:
        return ()
    out = []
    for item in files if files is not None else runtime_files():
        if item.name in NOT_COMPILED or not item.name.endswith(".py"):
            continue
        source = item.path.read_bytes()
        code = compile(source, item.name, "exec", dont_inherit=True, optimize=0)  # the node runs without -O
        header = importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little") + importlib.util.source_hash(source)
        out.append((f"__pycache__/{item.name[:-3]}.{tag}.pyc", header + marshal.dumps(code)))
    return tuple(out)
