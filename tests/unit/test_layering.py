"""The layering rules of DESIGN.md, enforced: the core never needs the UI, pure modules do no I/O,
and `flex --help` / `flex validate` start without loading textual or asyncssh."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYER = ROOT / "deployer"
PURE = ["models", "scheduler", "reconcile", "spec", "spec_rules", "schema_problems", "inventory", "inventory_checks",
        "document", "units", "cron", "errors",
        "hostrange", "inventory_ini"]
IO_LIBRARIES = {"asyncssh", "sqlite3", "textual", "subprocess", "socket"}


def imported_names(path: Path) -> set[str]:
    """Every module name a Python file imports (absolute form), wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def closure(module: str) -> set[str]:
    """The module plus every deployer module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        if path.exists():
            todo.extend(n for n in imported_names(path) if n.startswith("deployer"))
    return seen


def external_imports(module: str) -> set[str]:
    """Top-level packages imported by module and the deployer modules it pulls in."""
    out: set[str] = set()
    for name in closure(module):
        path = ROOT / (name.replace(".", "/") + ".py")
        if path.exists():
            out.update(n.split(".")[0] for n in imported_names(path) if not n.startswith("deployer"))
    return out


@pytest.mark.parametrize("name", [m for m in PURE if (DEPLOYER / f"{m}.py").exists()])
def test_pure_module_does_no_io(name: str) -> None:
    leaked = external_imports(f"deployer.{name}") & IO_LIBRARIES
    assert not leaked, f"deployer/{name}.py is pure but reaches {sorted(leaked)}"


@pytest.mark.parametrize("path", sorted(DEPLOYER.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_the_console_or_textual(path: Path) -> None:
    names = {n.split(".")[0] for n in imported_names(path)}
    assert not names & {"console", "textual"}, f"{path} imports the UI"


def loaded_modules(*args: str) -> set[str]:
    """Top-level modules loaded by `python -m deployer.cli ARGS` (from -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "deployer.cli", *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    lines = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    return {name.split(".")[0] for name in lines}


@pytest.mark.parametrize("args", [("--help",), ("validate", "inventory/local.yaml"), ("schema", "job")],
                         ids=["flex --help", "flex validate", "flex schema"])
def test_fast_commands_do_not_load_textual_or_asyncssh(args: tuple[str, ...]) -> None:
    loaded = loaded_modules(*args)
    assert "deployer" in loaded, "the probe did not see flex start"
    assert not loaded & {"textual", "asyncssh", "sqlite3"}


def test_importing_deployer_never_loads_textual() -> None:
    code = ("import sys, pkgutil, importlib, deployer\n"
            "for m in pkgutil.walk_packages(deployer.__path__, 'deployer.'):\n"
            "    if '.noderuntime' not in m.name: importlib.import_module(m.name)\n"
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
