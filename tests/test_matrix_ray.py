"""defend matrix --engine ray: a local 2-worker Ray gives the local engine's matrix."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from defend.errors import DefendError
from defend.matrix import load_config, run_matrix
from defend.matrix.builds import Builder
from defend.matrix.cells import plan
from defend.matrix.ray_engine import levels, run_ray


def _quiet(line: str) -> None:
    pass


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _config() -> dict:
    config = load_config("smoke")
    config["run"]["tasks"] = ["cls", "seg"]
    config["seg"]["defences"] = ["none", "smoothing"]
    return config


def test_builds_come_in_dependency_levels():
    from defend.matrix.defences import row_builds

    config = _config()
    wanted = [b for c in plan(config) for b in row_builds(config, c.row).values()]
    found = levels(wanted)
    seen: set = set()
    for level in found:
        assert all(set(b.needs) <= seen for b in level)
        seen |= set(level)
    assert found[0][0].kind == "data"


def test_ray_engine_gives_the_local_matrix(tmp_path):
    pytest.importorskip("ray")
    config, cache = _config(), tmp_path / "cache"
    run_matrix(config, tmp_path / "local", cache=cache, progress=False, log=_quiet)
    out = tmp_path / "ray"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "local" / "config.json").read_text())
    todo = plan(config)
    run_ray(config, todo, Builder(cache, None, _quiet), out, None, False, _quiet, num_cpus=2)
    from defend.matrix import report

    summary = report(out)
    assert not summary["failed"] and not summary["missing"]
    assert _rows(out / "matrix.csv") == _rows(tmp_path / "local" / "matrix.csv")


def test_missing_ray_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DefendError, match="needs Ray") as error:
        run_matrix(_config(), tmp_path / "out", engine="ray", cache=tmp_path / "c",
                   progress=False, log=_quiet)  # fmt: skip
    assert "\n" not in str(error.value)
