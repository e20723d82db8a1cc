"""The job spec: every example validates, every broken spec is refused with all its problems located.

Parsing cases live in tests/fixtures/specs: bad/NAME.yaml with NAME.expected.json listing
[line, column, path, text] per problem (text is looked for in the rendered problem, fix included), and
good/NAME.yaml with NAME.expected.json holding a subset of the normalized JobSpec. A parsing bug gets
a new fixture file, not a new test function.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.document import parse_document
from deployer.errors import ConfigError
from deployer.models import JobSpec, job_fingerprint, normalized
from deployer.spec import load_job, load_jobs, looks_like_job, parse_job, resolve_secrets

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "specs"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))
GOOD = sorted((FIXTURES / "good").glob("*.yaml"))
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yaml"))
JSONSCHEMA_PHRASES = ("is not of type", "does not match", "is not one of", "Additional properties",
                      "is a required property", "is less than", "Failed validating", "Traceback")


def sentence(path: Path) -> str:
    """A fixture's file name as the sentence it is."""
    return path.name.removesuffix(".yaml").replace("-", " ")


def expected_of(path: Path) -> Any:
    return json.loads(path.with_name(path.name.removesuffix(".yaml") + ".expected.json").read_text())


def problems_of(path: Path) -> list[Any]:
    with pytest.raises(ConfigError) as err:
        load_job(path)
    assert err.value.exit_code == 2
    return err.value.problems


def test_there_are_fixtures_both_ways() -> None:
    assert len(BAD) >= 50 and len(GOOD) >= 10


@pytest.mark.parametrize("path", BAD, ids=sentence)
def test_a_broken_spec_is_refused_with_every_problem_located(path: Path) -> None:
    problems = problems_of(path)
    found = [(p.location.line, p.location.column, p.path, p.render()) for p in problems]
    expected = expected_of(path)
    assert len(found) == len(expected), "\n".join(p.render() for p in problems)
    for line, column, where, text in expected:
        assert any((l, c, w) == (line, column, where) and text in r for l, c, w, r in found), (
            f"no problem at {line}:{column} {where!r} containing {text!r} in:\n"
            + "\n".join(f"{l}:{c} {r}" for l, c, _, r in found))
    assert all(p.location.source == str(path) for p in problems)


@pytest.mark.parametrize("path", BAD, ids=sentence)
def test_a_problem_never_shows_raw_jsonschema_text(path: Path) -> None:
    for problem in problems_of(path):
        assert not any(phrase in problem.render() for phrase in JSONSCHEMA_PHRASES), problem.render()


def subset(expected: Any, actual: Any, where: str = "") -> None:
    """Assert that every key of expected is in actual with the same value (lists item by item)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing"
            subset(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            subset(e, a, f"{where}[{i}]")
    else:
        assert actual == expected and type(actual) is type(expected), f"{where}: expected {expected!r}, got {actual!r}"


@pytest.mark.parametrize("path", GOOD, ids=sentence)
def test_a_valid_spec_is_normalized(path: Path) -> None:
    subset(expected_of(path), normalized(load_job(path)))


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: f"playbooks/{p.name} validates")
def test_every_example_playbook_validates(path: Path) -> None:
    job = load_job(path)
    assert job.name and job.command and job.source == str(path)
    assert all(Path(f.src).is_file() and f.sha256 for f in job.files)


def test_the_examples_cover_every_kind_of_workload() -> None:
    jobs = {job.name: job for job in load_jobs(PLAYBOOKS)}
    assert len(PLAYBOOKS) >= 6
    assert any(j.kind == "service" and j.resources.gpus == 0 and j.health for j in jobs.values())
    assert any(j.kind == "service" and j.resources.gpus == 1 for j in jobs.values())
    assert any(j.is_batch and j.resources.gpus == 2 for j in jobs.values())
    assert any(j.gang and j.count == 2 for j in jobs.values())
    assert any(j.is_periodic and j.schedule and j.schedule.cron == "0 2 * * *" for j in jobs.values())


def test_load_jobs_reports_the_problems_of_every_file_at_once() -> None:
    broken = [FIXTURES / "bad" / "a-gang-needs-two-members.yaml", FIXTURES / "bad" / "zero-cpus-are-refused.yaml"]
    with pytest.raises(ConfigError) as err:
        load_jobs([PLAYBOOKS[0], *broken, FIXTURES / "missing.yaml"])
    sources = {p.location.source for p in err.value.problems}
    assert sources == {str(p) for p in broken} | {str(FIXTURES / "missing.yaml")}
    assert "3 problems found" in str(err.value)


def test_two_files_with_one_job_name_are_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("name: web\ncommand: ./run\n")
    with pytest.raises(ConfigError) as err:
        load_jobs([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    (problem,) = err.value.problems
    assert (problem.location.source, problem.location.line) == (str(tmp_path / "b.yaml"), 1)
    assert f"also defined in {tmp_path / 'a.yaml'}" in problem.message


def test_load_jobs_keeps_the_order_of_the_files() -> None:
    assert [j.source for j in load_jobs(PLAYBOOKS)] == [str(p) for p in PLAYBOOKS]


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff") | st.sampled_from(
    list(";|&$`'\"\\*?[]{}()<>!#~\t\n ")), max_size=40)


@settings(max_examples=100, deadline=None)
@given(value=SAFE_TEXT)
def test_any_env_value_is_kept_verbatim(value: str) -> None:
    text = yaml.safe_dump({"name": "web", "command": ["./run"], "env": {"VALUE": value}}, allow_unicode=True)
    job = parse_job(parse_document(text, "job.yaml"))
    assert job.env["VALUE"] == value


@pytest.mark.parametrize("data, is_job", [
    ({"name": "web", "command": "./run"}, True),
    ({"name": "web", "comand": "./run"}, True),
    ({"comand": "./run", "kind": "batch", "count": 2}, True),
    ({"all": {"hosts": {"a": None}}}, False),
    ({"gpus": {"hosts": {"gpu01": None}}, "cpus": {"children": {"gpus": None}}}, False),
    (["name", "command"], False),
], ids=["a job", "a job with command misspelled", "a job without name or command", "an inventory",
        "an inventory whose groups look like resources", "a list"])
def test_a_job_is_told_from_an_inventory_by_its_keys(data: Any, is_job: bool) -> None:
    assert looks_like_job(data) is is_job


def test_a_string_command_runs_through_sh_and_a_list_runs_as_is() -> None:
    as_string = parse_job(parse_document("name: a\ncommand: echo $HOME; ls\n", "a.yaml"))
    as_list = parse_job(parse_document("name: a\ncommand: [echo, $HOME]\n", "a.yaml"))
    assert as_string.command == ("/bin/sh", "-c", "echo $HOME; ls")
    assert as_list.command == ("echo", "$HOME")


# --- secrets -------------------------------------------------------------------------------------------

SECRET_SPEC = """\
name: web
command: ./run
secrets:
  API_TOKEN: {env: WEB_TOKEN}
  DB_PASSWORD: {file: db.txt}
"""


@pytest.fixture()
def secret_job(tmp_path: Path) -> JobSpec:
    (tmp_path / "job.yaml").write_text(SECRET_SPEC)
    return load_job(tmp_path / "job.yaml")


def test_secrets_resolve_from_the_environment_and_from_files(secret_job: JobSpec, tmp_path: Path) -> None:
    (tmp_path / "db.txt").write_text("p@ss; $(word)\n")
    values = resolve_secrets(secret_job, {"WEB_TOKEN": "t0ken", "OTHER": "x"})
    assert values == {"API_TOKEN": "t0ken", "DB_PASSWORD": "p@ss; $(word)"}


@pytest.mark.parametrize("environ, file_text, needles", [
    ({}, "hunter2\n", ["secret API_TOKEN", "WEB_TOKEN, which is not set", "export WEB_TOKEN"]),
    ({"WEB_TOKEN": "hunter2"}, None, ["secret DB_PASSWORD", "cannot be read", "create the file"]),
], ids=["an unset variable names the job, the secret and the fix",
        "a missing file names the job, the secret and the fix"])
def test_a_missing_secret_is_a_located_config_error_without_values(
        secret_job: JobSpec, tmp_path: Path, environ: dict[str, str], file_text: str | None,
        needles: list[str]) -> None:
    if file_text is not None:
        (tmp_path / "db.txt").write_text(file_text)
    with pytest.raises(ConfigError) as err:
        resolve_secrets(secret_job, environ)
    text = str(err.value)
    assert "job 'web'" in text and all(n in text for n in needles), text
    assert "hunter2" not in text
    (problem,) = err.value.problems
    assert problem.location.source == str(tmp_path / "job.yaml") and problem.location.line > 0


def test_every_missing_secret_is_reported_at_once(secret_job: JobSpec) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_secrets(secret_job, {})
    assert [p.path for p in err.value.problems] == ["secrets.API_TOKEN", "secrets.DB_PASSWORD"]


def test_secret_values_never_reach_the_job_or_its_fingerprint(secret_job: JobSpec, tmp_path: Path) -> None:
    (tmp_path / "db.txt").write_text("hunter2")
    assert "hunter2" not in repr(secret_job) and "hunter2" not in json.dumps(normalized(secret_job))


# --- fingerprint ---------------------------------------------------------------------------------------

def copy_playbooks(to: Path) -> Path:
    shutil.copytree(ROOT / "playbooks", to / "playbooks")
    return to / "playbooks"


def test_the_fingerprint_does_not_depend_on_where_the_spec_lives(tmp_path: Path) -> None:
    copy = copy_playbooks(tmp_path)
    assert load_job(copy / "webapp.yaml").fingerprint == load_job(ROOT / "playbooks" / "webapp.yaml").fingerprint


@pytest.mark.parametrize("edit, changes", [
    (lambda d: d / "webapp.yaml", False),
    (lambda d: (d / "webapp.yaml").write_text("# a comment\n" + (d / "webapp.yaml").read_text()), False),
    (lambda d: (d / "webapp.yaml").write_text((d / "webapp.yaml").read_text().replace("count: 2", "count: 3")), True),
    (lambda d: (d / "webapp.yaml").write_text((d / "webapp.yaml").read_text().replace("hello from", "hi from")), True),
    (lambda d: (d / "files" / "webapp" / "server.py").write_text("print('v2')\n"), True),
], ids=["nothing changed keeps it", "a comment keeps it", "a new count changes it", "a new env value changes it",
        "a new version of a pushed file changes it"])
def test_the_fingerprint_changes_exactly_when_the_workload_does(tmp_path: Path, edit: Any, changes: bool) -> None:
    copy = copy_playbooks(tmp_path)
    before = load_job(copy / "webapp.yaml").fingerprint
    edit(copy)
    assert (load_job(copy / "webapp.yaml").fingerprint != before) is changes


def test_the_fingerprint_leaves_out_defaults_so_new_fields_do_not_roll_every_job() -> None:
    job = JobSpec("web", ("./run",))
    body = json.dumps({"command": ["./run"], "name": "web"}, separators=(",", ":"), sort_keys=True)
    assert job.fingerprint == job_fingerprint(job) == hashlib.sha256(body.encode()).hexdigest()


def _normalized_reference(value: Any, *, skip_defaults: bool = False) -> Any:
    """normalized() as it was before its fast path (the oracle: job fingerprints must not move)."""
    from dataclasses import MISSING, fields, is_dataclass
    from typing import Mapping

    def is_default(spec: Any, item: Any) -> bool:
        if spec.default is not MISSING:
            return bool(spec.default == item)
        if spec.default_factory is not MISSING:
            return bool(spec.default_factory() == item)
        return False

    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _normalized_reference(getattr(value, f.name), skip_defaults=skip_defaults)
                for f in fields(value) if f.metadata.get("fingerprint", True)
                and not (skip_defaults and is_default(f, getattr(value, f.name)))}
    if isinstance(value, Mapping):
        return {str(k): _normalized_reference(v, skip_defaults=skip_defaults) for k, v in sorted(value.items())}
    if isinstance(value, (tuple, list)):
        return [_normalized_reference(v, skip_defaults=skip_defaults) for v in value]
    return value


def test_normalized_gives_what_it_gave_before_its_fast_path() -> None:
    """Every example playbook's job (both forms: the stored spec and the fingerprint's) and a node state
    with GPUs, allocations and orphans normalize exactly as before."""
    from deployer.models import (AllocationObservation, GpuProcess, GpuState, HealthResult, NodeState,
                                 frozen_mapping, normalized)
    from deployer.spec import load_job

    jobs = [load_job(p) for p in sorted((ROOT / "playbooks").glob("*.yaml"))]
    assert jobs
    state = NodeState("n1", status="ready", load=(0.5, 0.25, 0.0), cpus=8, gpus_known=True, gpus=(
        GpuState(index=0, uuid="GPU-1", utilization=12.5, processes=(GpuProcess(7, 1 << 20, "web-0"),)),),
        allocations=frozen_mapping({"web-0": AllocationObservation(
            alloc_id="web-0", status="running", is_alive=True, pid=7,
            health=HealthResult(ok=True, detail="HTTP 200 OK", checked_at=1.0))}),
        orphans=(frozen_mapping({"alloc_id": "x", "pids": [1, 2]}),))
    for value in [*jobs, state]:
        for skip in (False, True):
            assert normalized(value, skip_defaults=skip) == _normalized_reference(value, skip_defaults=skip)
