"""A push of unchanged job files does not run jsonschema again; a new, changed or broken one always does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import schemacache
from deployer.errors import ConfigError
from deployer.spec import load_job

ROOT = Path(__file__).resolve().parents[2]
JOB = "name: web\ncommand: [python3, -m, http.server]\ncount: 2\n"

LOAD_TWICE = """
import sys
from deployer.spec import load_job
first = load_job(sys.argv[1])
print("jsonschema" in sys.modules)
"""


def _load_in_fresh_process(path: Path, cache: Path) -> bool:
    """Load the job in a new interpreter; whether it imported jsonschema."""
    done = subprocess.run([sys.executable, "-c", LOAD_TWICE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=60, env={**os.environ, "FLEX_CACHE_DIR": str(cache)})
    return done.stdout.strip() == "True"


def test_an_unchanged_valid_job_is_not_checked_by_jsonschema_again(tmp_path: Path) -> None:
    job = tmp_path / "web.yaml"
    job.write_text(JOB)
    cache = tmp_path / "cache"
    assert _load_in_fresh_process(job, cache) is True
    assert len((cache / "valid-jobs").read_text().split()) == 1
    assert _load_in_fresh_process(job, cache) is False  # the same document: remembered valid
    job.write_text(JOB.replace("count: 2", "count: 3"))
    assert _load_in_fresh_process(job, cache) is True  # changed: checked again
    assert len((cache / "valid-jobs").read_text().split()) == 2


def test_a_broken_job_is_reported_every_time_and_never_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEX_CACHE_DIR", str(tmp_path / "cache"))
    job = tmp_path / "web.yaml"
    job.write_text(JOB.replace("count: 2", "count: three"))
    for _ in range(2):
        with pytest.raises(ConfigError, match="count"):
            load_job(job)
    assert not (tmp_path / "cache" / "valid-jobs").exists()


def test_the_key_follows_the_schema_and_the_data() -> None:
    data = {"name": "web", "command": ["x"], "count": 2}
    assert schemacache.key("schema 1", data) == schemacache.key("schema 1", dict(reversed(list(data.items()))))
    assert schemacache.key("schema 1", data) != schemacache.key("schema 2", data)
    assert schemacache.key("schema 1", data) != schemacache.key("schema 1", {**data, "count": 3})
    assert schemacache.key("schema 1", {"when": {1, 2}}) is None  # no canonical JSON: always validated


def test_an_unwritable_cache_is_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FLEX_CACHE_DIR", str(blocker / "sub"))
    job = tmp_path / "web.yaml"
    job.write_text(JOB)
    assert load_job(job).name == "web"
    assert load_job(job).name == "web"
    job.write_text(JOB + "bogus: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_job(job)


def test_the_cache_keeps_the_last_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEX_CACHE_DIR", str(tmp_path))
    for i in range(schemacache.KEEP + 5):
        schemacache.remember_valid(f"{i:064x}")
    kept = (tmp_path / "valid-jobs").read_text().split()
    assert len(kept) == schemacache.KEEP and kept[-1] == f"{schemacache.KEEP + 4:064x}"
    assert schemacache.seen_valid(kept[0]) and not schemacache.seen_valid(f"{0:064x}")
