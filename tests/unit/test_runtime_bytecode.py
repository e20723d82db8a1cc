"""The runtime's bytecode: compiled by the controller once, installed beside the sources, and used by
the node's python on its first verb (no compile there), on the local connection with real files."""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import py_compile
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deployer.models import Host
from deployer.nodeclient import NodeClient
from deployer.noderuntime import (
    ENTRY_POINT,
    NOT_COMPILED,
    nodewrite,
    runtime_bytecode,
    runtime_files,
    runtime_id,
)
from deployer.transport import Pool
from tests.integration.transportkit import fast_settings
from tests.unit._noderuntime import node_python

TAG = sys.implementation.cache_tag


def test_every_module_but_the_entry_point_and_pynvml_is_compiled_to_a_checked_hash_pyc(tmp_path: Path) -> None:
    files = runtime_files()
    bytecode = dict(runtime_bytecode(files))
    modules = {f.name[:-3] for f in files if f.name not in NOT_COMPILED}
    assert {"nodecommon", "nodectl", "nodeprobe", "nodewrite"} <= modules and ENTRY_POINT in NOT_COMPILED
    assert set(bytecode) == {f"__pycache__/{name}.{TAG}.pyc" for name in modules}
    for item in files:
        if item.name in NOT_COMPILED:
            continue
        data = bytecode[f"__pycache__/{item.name[:-3]}.{TAG}.pyc"]
        reference = Path(py_compile.compile(str(item.path), cfile=str(tmp_path / "ref.pyc"), doraise=True,
                                            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH))
        expected = reference.read_bytes()
        assert data[:16] == expected[:16], item.name  # magic, flags 0b11, source hash: what py_compile writes
        assert data[4:8] == (0b11).to_bytes(4, "little")
        assert data[8:16] == importlib.util.source_hash(item.path.read_bytes())
        assert marshal.loads(data[16:]).co_code == marshal.loads(expected[16:]).co_code, item.name


def test_the_bytecode_is_compiled_once_and_leaves_the_runtime_id_alone() -> None:
    files = runtime_files()
    before = runtime_id(files)
    assert runtime_bytecode(files) is runtime_bytecode(files)  # once per process
    assert runtime_id(files) == before == runtime_id()
    assert not [f for f in files if not f.name.endswith(".py")]  # no pyc in the manifest the id hashes


async def test_a_node_client_compiles_nothing_until_it_installs(tmp_path: Path) -> None:
    host = Host(name="local", address="localhost", connection="local", flex_root=str(tmp_path / "root"))
    runtime_bytecode.cache_clear()
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.root()
        assert runtime_bytecode.cache_info().currsize == 0
        await client.install()
        assert runtime_bytecode.cache_info().currsize == 1
        await NodeClient(pool, host).install()
        assert runtime_bytecode.cache_info().misses == 1


async def test_install_sends_the_bytecode_before_the_entry_point(tmp_path: Path) -> None:
    """An entry point that exists means the whole runtime is there: it is renamed into place last."""
    host = Host(name="local", address="localhost", connection="local", flex_root=str(tmp_path / "root"))
    headers: list[list[list[Any]]] = []
    async with Pool([host], fast_settings(tmp_path)) as pool:
        conn = pool.connection(host)
        run = conn.run

        async def recorded(argv: list[str], **kwargs: Any) -> Any:
            if kwargs.get("input"):  # the write helper's stdin (payload())
                headers.append(nodewrite.read_header(io.BytesIO(kwargs["input"])))
            return await run(argv, **kwargs)

        conn.run = recorded  # type: ignore[method-assign]
        client = NodeClient(pool, host)
        assert await client.install(missing=True) is True
    runtime = Path(await client.runtime_dir())
    paths = [entry[0] for header in headers for entry in header]
    assert paths[-1] == str(runtime / ENTRY_POINT) and len(headers) == 1
    manifest = client._files  # what this process installs (hashed once: see nodeclient._runtime_manifest)
    shipped = {name for name, _ in runtime_bytecode(manifest)}
    assert {os.path.relpath(p, runtime) for p in paths} == {f.name for f in manifest} | shipped
    for name, data in runtime_bytecode(manifest):
        assert (runtime / name).read_bytes() == data and (runtime / name).stat().st_mode & 0o777 == 0o644


def same_tag_pythons() -> list[str]:
    """This interpreter and the system python3 when it has this cache tag (the controller's 3.11.7 and
    a node's 3.11.2 share one)."""
    found = [sys.executable]
    system = "/usr/bin/python3"
    same = f"import sys; sys.exit(sys.implementation.cache_tag != {TAG!r})"
    if os.path.exists(system) and subprocess.run([system, "-c", same], check=False).returncode == 0:
        found.append(system)
    return found


def verbose_probe(python: str, root: Path, runtime: Path) -> str:
    proc = subprocess.run([python, "-E", "-S", "-v", str(runtime / ENTRY_POINT), "--root", str(root), "probe"],
                          capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.parametrize("python", same_tag_pythons())
async def test_the_first_verb_after_an_install_loads_the_shipped_bytecode(python: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = Host(name="local", address="localhost", connection="local", flex_root=str(root))
    async with Pool([host], fast_settings(tmp_path)) as pool:
        client = NodeClient(pool, host)
        await client.install(missing=True)
    runtime = Path(await client.runtime_dir())
    shipped = {runtime / name: (runtime / name).read_bytes() for name, _ in runtime_bytecode(client._files)}
    log = verbose_probe(python, root, runtime)
    used = set(re.findall(r"^# (\S+) matches " + re.escape(str(runtime)) + r"/\w+\.py$", log, re.M))
    compiled = re.findall(r"^# code object from " + re.escape(str(runtime)) + r"/(\w+\.py)$", log, re.M)
    written = re.findall(r"^# (?:created|wrote) '?" + re.escape(str(runtime)) + r"\S*", log, re.M)
    assert {"nodecommon", "nodectl", "nodeprobe"} <= {Path(p).name.split(".")[0] for p in used}, log[-3000:]
    assert {Path(p) for p in used} <= set(shipped)
    assert compiled == [] and written == [], (compiled, written)
    assert {path: path.read_bytes() for path in shipped} == shipped  # nothing rewritten
    assert sorted(p.name for p in (runtime / "__pycache__").iterdir()) == sorted(p.name for p in shipped)


def test_a_python_of_another_version_ignores_the_bytecode(tmp_path: Path) -> None:
    python = node_python()
    tag = subprocess.run([python, "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if tag == TAG:
        pytest.skip("no python3 of another minor version here (set FLEX_TEST_NODE_PYTHON)")
    root = tmp_path / "root"
    runtime = root / "runtime" / "r"
    for item in runtime_files():
        (runtime / item.name).parent.mkdir(parents=True, exist_ok=True)
        (runtime / item.name).write_bytes(item.path.read_bytes())
    for name, data in runtime_bytecode(runtime_files()):
        (runtime / name).parent.mkdir(parents=True, exist_ok=True)
        (runtime / name).write_bytes(data)
    log = verbose_probe(python, root, runtime)
    assert f"{TAG}.pyc matches" not in log and f"code object from {runtime}/nodecommon.py" in log
