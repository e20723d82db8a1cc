"""The placement benchmark's workload runs small and whole: every allocation placed, the same decisions each
round, the JSON written. Nothing here times anything (benchmarks are not tests)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import placements
from bench.placements import Fleet, main, make_fleet, make_jobs, run_round, scaled_allocations

NODES, JOBS, COUNT = 40, 10, 4


@pytest.fixture(scope="module")
def small() -> tuple[Fleet, list]:
    return make_fleet(NODES), make_jobs(JOBS, COUNT)


def test_the_mix_has_every_kind_and_the_asked_number_of_jobs(small: tuple[Fleet, list]) -> None:
    kinds = Counter(kind for kind, _ in small[1])
    assert sum(kinds.values()) == JOBS
    assert set(kinds) == {"gpu1", "gpu2", "gpu4", "gpu8", "gang", "cpu-service"}


def test_a_round_places_every_allocation_and_repeats_its_decisions(small: tuple[Fleet, list]) -> None:
    fleet, jobs = small
    first, allocs = run_round(fleet, jobs, COUNT)
    again, _ = run_round(fleet, jobs, COUNT)
    assert first.failures == []
    assert first.total_placed == len(allocs) == JOBS * COUNT
    assert first.system_placed > 0
    assert first.digest == again.digest


def test_allocations_scale_onto_every_block_of_nodes(small: tuple[Fleet, list]) -> None:
    fleet, jobs = small
    _, allocs = run_round(fleet, jobs, COUNT)
    scaled = scaled_allocations(allocs, NODES, 3 * NODES)
    assert len(scaled) == 3 * len(allocs)
    assert len({a.node for a in scaled}) == 3 * len({a.node for a in allocs})
    assert set(make_fleet(3 * NODES).nodes) >= {a.node for a in scaled}


def test_main_writes_the_summary_and_the_decision_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placements, "machine_info", lambda: {  # no git subprocesses in a unit test
        "date": "-", "nproc": 2, "cpu_model": "-", "python": "-", "flex_version": "-"})
    out = tmp_path / "results" / "placements.json"
    code = main(["--nodes", str(NODES), "--jobs", str(JOBS), "--count", str(COUNT), "--rounds", "2",
                 "--build-sizes", f"{NODES},{2 * NODES}", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert code == 0
    assert len(doc["decisions_sha256"]) == 64 and doc["failures"] == []
    assert doc["summary"][0]["placed_per_round"] == JOBS * COUNT
    assert [(b["nodes"], b["state"]) for b in doc["cluster_build"]] == [
        (NODES, "empty"), (NODES, "full"), (2 * NODES, "empty"), (2 * NODES, "full")]
    assert "placements/s" in capsys.readouterr().out
