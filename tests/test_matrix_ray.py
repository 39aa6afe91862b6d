"""defend matrix --engine ray: a local 2-worker Ray gives the local engine's matrix."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from defend.errors import DefendError
from defend.matrix import load_config, run_matrix
from defend.matrix.builds import levels
from defend.matrix.cells import plan
from defend.matrix.rows import row_builds


def _quiet(line: str) -> None:
    pass


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _config() -> dict:
    """cls and seg of the smoke preset, fewer attacks (seg: seg-pgd against none and
    smoothing, whose EOT and Monte Carlo draws must also match): builds data -> models ->
    hardened (three levels)."""
    config = load_config("smoke")
    config["run"]["tasks"] = ["cls", "seg"]
    config["seg"]["defences"] = ["none", "smoothing"]
    config["seg"]["attacks"] = ["seg-pgd"]
    config["cls"]["attacks"] = ["dgde", "art-pgd"]
    return config


def test_builds_come_in_dependency_levels():
    config = _config()
    wanted = [b for c in plan(config) for b in row_builds(config, c.row).values()]
    found = levels(wanted)
    kinds = [sorted(b.kind for b in level) for level in found]
    assert kinds == [["data"], ["model", "model"], ["hardened"]]
    seen: set = set()
    for level in found:
        assert all(set(b.needs) <= seen for b in level)
        seen |= set(level)


def test_ray_engine_gives_the_local_matrix(tmp_path):
    ray = pytest.importorskip("ray")
    config, cache = _config(), tmp_path / "cache"
    # Ray first, so the builds are made by Ray tasks; the local run reuses them
    summary = run_matrix(config, tmp_path / "ray", engine="ray", cache=cache, workers=2,
                         progress=False, log=_quiet)  # fmt: skip
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert summary["ran"] == len(plan(config)) and not summary["failed"]
    assert not summary["missing"] and len(list(cache.glob("*/build.json"))) == 4
    run_matrix(config, tmp_path / "local", cache=cache, progress=False, log=_quiet)
    ray_rows = _rows(tmp_path / "ray" / "matrix.csv")
    assert ray_rows and ray_rows == _rows(tmp_path / "local" / "matrix.csv")


def test_missing_ray_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DefendError, match="needs Ray") as error:
        run_matrix(_config(), tmp_path / "out", engine="ray", cache=tmp_path / "c",
                   progress=False, log=_quiet)  # fmt: skip
    assert "\n" not in str(error.value)


def test_a_lost_task_is_a_failed_record(tmp_path):
    from defend.matrix import report
    from defend.matrix.ray_engine import lost
    from defend.matrix.results import write_cell

    config = _config()
    cell = plan(config)[0]
    write_cell(tmp_path, lost(config, cell, RuntimeError("worker died\nmore")))
    summary = report(tmp_path, cells=[cell.id])
    assert summary["failed"] == [cell.id]
    assert f"`{cell.id}`: ray: RuntimeError: worker died" in (tmp_path / "matrix.md").read_text()
