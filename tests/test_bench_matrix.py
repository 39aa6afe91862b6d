"""defend bench matrix: a matrix run's wall time against its model-time floor, and its split."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from defend.bench.matrix_time import format_profile, matrix_profile, with_test_samples
from defend.cli import app
from defend.data.synth import split_counts
from defend.errors import DefendError
from defend.matrix import load_config
from defend.matrix.config import preset_path
from defend.matrix.phases import PHASES, REST


def test_the_smoke_run_against_its_floor(smoke_run: dict):
    records = [json.loads(p.read_text()) for p in (smoke_run["out"] / "cells").glob("*.json")]
    cells = sum(r["seconds"] for r in records)
    builds = [json.loads(p.read_text()) for p in smoke_run["cache"].glob("*/build.json")]
    made = sum(b["seconds"] for b in builds)
    wall = made + cells + 5.0  # the plan, estimate and reports: 5 s
    found = matrix_profile(smoke_run["out"], smoke_run["cache"], wall)
    assert found["builds"]["wall"] == pytest.approx(made) and made > 0
    assert found["cells"]["wall"] == pytest.approx(cells)
    assert found["floor"] > 0 and found["ratio"] == wall / found["floor"]
    assert found["builds"]["floor"] > 0 and found["cells"]["floor"] > 0
    split = found["split"]
    assert set(split) == {"builds", *PHASES, REST, "plan and reports"}
    assert abs(sum(split.values()) - wall) < 0.05 and abs(split["plan and reports"] - 5) < 0.05
    assert split["attack"] > 0 and split["smoothing"] > 0
    assert sum(g["cells"] for g in found["groups"]) == len(records) == len(found["cells_timed"])
    text = format_profile(found)
    assert f"{found['ratio']:.2f} x" in text and "time split: builds" in text


def test_bench_matrix_profiles_a_run_already_made(smoke_run: dict, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(smoke_run["out"], folder / "matrix")
    shutil.copytree(smoke_run["cache"], folder / "cache")
    out = tmp_path / "profile.json"
    result = CliRunner().invoke(app, ["bench", "matrix", "smoke", str(folder), "--existing",
                                      "--wall", "100", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "over a model-time floor of" in result.output
    assert json.loads(out.read_text())["wall"] == 100


def test_bench_matrix_refuses_a_folder_without_a_run(tmp_path):
    result = CliRunner().invoke(app, ["bench", "matrix", "smoke", str(tmp_path), "--existing"])
    assert result.exit_code != 0 and isinstance(result.exception, DefendError)
    assert "holds no matrix run" in str(result.exception)


def test_bench_matrix_refuses_a_run_without_its_wall_time(smoke_run: dict, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(smoke_run["out"], folder / "matrix")
    result = CliRunner().invoke(app, ["bench", "matrix", "smoke", str(folder), "--existing"])
    assert result.exit_code != 0 and isinstance(result.exception, DefendError)
    assert "needs --wall" in str(result.exception)


def test_scaling_data_holds_the_samples_and_the_same_training_volumes():
    config = load_config("smoke")
    for n in (9, 64):  # 64: 32 test volumes, where a first guess leaves none to train on
        data = with_test_samples(config, n)["data"]
        counts = split_counts(data["volumes"], data["test_volumes"])
        assert counts["test"] * data["slices"] >= n
        assert counts["train"] == split_counts(config["data"]["volumes"])["train"]
    assert config["data"]["test_volumes"] == 0  # the configuration given is left as it was


def test_scaling_runs_the_matrix_at_each_sample_count(tmp_path):
    path = tmp_path / "cls.toml"
    text = (preset_path("smoke").read_text()  # one task, one row, two columns: seconds
            .replace("[run]\n", '[run]\ntasks = ["cls"]\n')
            .replace('defences = ["none", "adversarial"]', 'defences = ["none"]')
            .replace('["dgde", "art-pgd", "noise"]', '["art-pgd", "noise"]'))  # fmt: skip
    assert 'defences = ["none"]' in text and 'attacks = ["art-pgd", "noise"]' in text
    path.write_text(text)
    out = tmp_path / "scaling.json"
    args = ["bench", "matrix", str(path), str(tmp_path / "s"), "--samples", "1,3"]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["n"] for r in rows] == [1, 3] and all(r["seconds"] > 0 for r in rows)
    records = [json.loads(p.read_text()) for p in (tmp_path / "s" / "local-n3" / "cells").glob("*")]
    assert records and {r["n"] for r in records} == {3}
    bad = CliRunner().invoke(app, ["bench", "matrix", str(path), str(tmp_path / "s"),
                                   "--samples", "8,x"])  # fmt: skip
    assert isinstance(bad.exception, DefendError) and "--samples expects" in str(bad.exception)
