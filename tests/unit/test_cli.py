"""The `flex` command line as a user meets it: help, version, exit codes, located errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import __version__
from deployer.cli import VERBS, main

ROOT = Path(__file__).resolve().parents[2]


def flex(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, the way a user does."""
    return subprocess.run([sys.executable, "-m", "deployer.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_verb_with_one_line() -> None:
    out = flex("--help")
    assert out.returncode == 0
    for verb, (_, summary) in VERBS.items():
        assert f"{verb}" in out.stdout and summary[:40] in out.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"flex {__version__}"


@pytest.mark.parametrize("args", [["frobnicate"], ["validate", "--nope"], ["schema", "pizza"]],
                         ids=["an unknown verb", "an unknown option", "an unknown schema"])
def test_usage_errors_exit_2_with_a_fix(args: list[str]) -> None:
    out = flex(*args)
    assert out.returncode == 2
    assert "error:" in out.stderr and "Traceback" not in out.stderr


def test_the_process_ends_quickly_but_with_all_its_output_and_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """`flex` ends with os._exit after main() (cli.entry): what it printed must all be there first."""
    assert main(["schema", "job"]) == 0
    in_process = capsys.readouterr().out
    out = flex("schema", "job")
    assert out.returncode == 0 and out.stdout == in_process and len(out.stdout) > 8192  # more than one buffer
    missing = flex("validate", "/nonexistent/inventory.yaml")
    assert missing.returncode not in (0, None) and "error:" in missing.stderr and "Traceback" not in missing.stderr


def test_no_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "validate" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["job", "inventory"])
def test_schema_prints_valid_json_schema(which: str, capsys: pytest.CaptureFixture[str]) -> None:
    from jsonschema import Draft202012Validator

    assert main(["schema", which]) == 0
    Draft202012Validator.check_schema(json.loads(capsys.readouterr().out))


def test_validate_accepts_the_embedded_default_and_its_playbooks() -> None:
    out = flex("validate", "inventory/local.yaml")
    assert out.returncode == 0, out.stderr
    assert "inventory/local.yaml" in out.stdout and "webapp" in out.stdout


def test_validate_accepts_every_example() -> None:
    specs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yaml"))
    out = flex("validate", "inventory/lab.yaml", *specs, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["valid"] and len(result["jobs"]) == len(specs)


def test_validate_reports_problems_of_every_file_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ncommand: [true]\ncount: three\n")
    (tmp_path / "b.yaml").write_text("name: b\ncommand: [true]\nrestart:\n  attemps: 2\n")
    out = flex("validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert out.returncode == 2
    assert f"{tmp_path / 'a.yaml'}:3:8" in out.stderr
    assert f"{tmp_path / 'b.yaml'}:4:3" in out.stderr and "did you mean 'attempts'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_names_a_missing_file() -> None:
    out = flex("validate", "-i", "inventory/local.yaml", "playbooks/does-not-exist.yaml")
    assert out.returncode == 2
    assert "playbooks/does-not-exist.yaml" in out.stderr and "not found" in out.stderr


def test_a_job_spec_with_a_misspelled_command_is_still_read_as_a_job(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("name: x\ncomand: [true]\n")
    out = flex("validate", str(tmp_path / "typo.yaml"))
    assert out.returncode == 2
    assert "did you mean 'command'?" in out.stderr and "group" not in out.stderr
