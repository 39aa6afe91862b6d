"""defend matrix: configuration, cells, resume after SIGKILL, failures, shards, report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defend.cli import app
from defend.errors import DefendError
from defend.matrix import load_config, report, run_matrix
from defend.matrix.cells import plan
from defend.matrix.config import PRESETS


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="session")
def smoke(smoke_run: dict) -> tuple[Path, Path]:
    """An uninterrupted ``smoke`` matrix: ``(out, cache)``."""
    return smoke_run["out"], smoke_run["cache"]


def _rows(path: Path) -> list[dict[str, str]]:
    """matrix.csv without its timing column (the only one that differs between runs)."""
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _task_rows(out: Path, task: str) -> list[dict[str, str]]:
    """The rows of one task in ``out``'s matrix.csv (:func:`_rows`)."""
    return [r for r in _rows(out / "matrix.csv") if r["task"] == task]


def _one_task(folder: Path, task: str) -> Path:
    """The smoke preset restricted to ``task``, written to ``folder / TASK.toml``."""
    path = folder / f"{task}.toml"
    text = Path(load_config("smoke")["source"]).read_text()
    path.write_text(text.replace("[run]\n", f'[run]\ntasks = ["{task}"]\n'))
    return path


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve(name):
    config = load_config(name)
    assert config["run"]["n"] >= 1 and plan(config)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[run]\nnn = 3\n", "unknown key 'run.nn'"),
        ('[recon]\neps = "a"\n', "recon.eps must be a list of float"),
        ("[seg]\neps = [2.0]\n", "seg.eps must be numbers in (0, 1)"),
        ('[cls]\nattacks = ["fgsm"]\n', "cls.attacks holds 'fgsm'"),
        ("[smoothing]\nalpha = 1.5\n", "smoothing.alpha must be in (0, 1)"),
        ("[run]\ntrain_processes = 0\n", "run.train_processes must be >= 1"),
        ("[data]\nvolumes = 8\ntest_volumes = 7\n", "data.test_volumes must be >= 0 and leave"),
        ("[data]\nvolumes = 2\n", "data.volumes must be >= 3"),
        ("[smoothing]\ndenoiser_depth = 1\n", "smoothing.denoiser_depth must be >= 2"),
        ("[smoothing]\ndenoiser_width = 0\n", "smoothing.denoiser_width must be >= 1"),
        ("[run\n", "not valid TOML"),
    ],
)
def test_bad_configuration_is_one_line_naming_key_and_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DefendError, match="bad.toml") as error:
        load_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    result = CliRunner().invoke(app, ["matrix", str(path)])
    assert result.exit_code != 0


def test_print_config_shows_the_resolved_values(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[run]\nn = 3\n[recon]\neps = [0.2]\n")
    result = CliRunner().invoke(app, ["matrix", str(path), "--print-config"])
    assert result.exit_code == 0, result.output
    assert "n = 3" in result.output and "eps = [0.2]" in result.output
    assert "[attack.hallucination]" in result.output  # defaults filled in
    assert not (tmp_path / "runs").exists()


def test_plan_has_every_row_column_and_adaptive_variant():
    cells = plan(load_config("smoke"))
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    kinds = {(c.row.task, c.row.defence, c.attack, c.adaptive) for c in cells}
    assert ("recon", "smoothing", "hallucination", "eot") in kinds
    assert ("recon", "detector", "hallucination", "evade") in kinds
    assert ("recon", "adv-hallucination", "art-pgd", "none") in kinds
    assert ("seg", "smoothing", "seg-pgd", "eot") in kinds
    assert ("cls", "none", "noise", "none") in kinds
    assert all(c.eps is None for c in cells if c.attack == "dgde")
    assert not any(c.adaptive == "eot" for c in cells if c.attack == "noise")


def test_smoke_matrix_records_every_cell(smoke):
    out, _ = smoke
    config = load_config("smoke")
    records = [json.loads((out / "cells" / f"{c.id}.json").read_text()) for c in plan(config)]
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    for r in records:
        judged = {"feature_recall", "missed"} if r["attack"] == "real-feature" else {"success"}
        assert {"clean_quality", "attacked_quality", *judged} <= set(r["metrics"])
        assert r["seed"] == 0 and r["n"] == config["run"]["n"] and r["seconds"] > 0
        assert (out / r["examples"]).exists()
        if r["defence"].endswith("detector"):
            assert 0 <= r["metrics"]["detection_auroc"] <= 1 and r["roc"]["fpr"]
        if r["defence"] == "smoothing":
            assert {"abstain", "clean_abstain"} <= set(r["metrics"])
            if "success" in judged:
                assert r["metrics"]["certificate_violations"] == 0
        if r["task"] == "recon" and "success" in judged:  # net of the measurement's feature
            m = r["metrics"]
            assert m["net_strength"] == pytest.approx(m["strength"] - m["input_strength"])
        if r["attack"] == "inside-radius":  # the certificate check that can fire
            assert {"covered", "violated"} <= set(r["metrics"]) and r["defence"] == "smoothing"
        for metric in judged | {"attacked_quality"}:
            low, high = r["intervals"][metric]
            assert r["counts"][metric] <= r["n"] and len(r["per_sample"][metric]) == r["n"]
            if r["counts"][metric] > 1:
                assert low <= r["metrics"][metric] <= high
    by_id = {r["id"]: r for r in records}
    recon_rows = {r["defence"] for r in records if r["task"] == "recon"}
    assert {r["defence"] for r in records if r["attack"] == "real-feature"} == recon_rows
    assert any(r["attack"] == "inside-radius" for r in records)
    for cell in plan(config):
        if cell.adaptive != "none":  # per-sample worst case of the adaptive and plain attack
            adaptive = by_id[cell.id]
            plain = by_id[replace(cell, adaptive="none").id]
            assert adaptive["worst_case_of"] == [f"{cell.attack}+{cell.adaptive}", cell.attack]
            assert {"adaptive_success", "plain_success"} <= set(adaptive["metrics"])
            key = "undetected_success" if cell.adaptive == "evade" else "success"
            assert adaptive["metrics"][key] >= plain["metrics"][key] - 1e-9, cell.id
    rows = _rows(out / "matrix.csv")
    assert set(rows[0]) == {"task", "model", "defence", "attack", "adaptive", "eps", "metric",
                            "value", "ci_low", "ci_high", "n"}  # fmt: skip
    assert {r["adaptive"] for r in rows} == {"none", "eot", "evade"}
    text = (out / "matrix.md").read_text()
    assert "## recon" in text and "## seg" in text and "## cls" in text
    assert "sanity flags" in text


def test_killed_run_resumes_to_the_same_matrix(smoke, tmp_path):
    """SIGKILL mid-run (builds cached, cells under way), start again: only the missing cells
    run and matrix.csv equals the uninterrupted run's."""
    first, cache = smoke
    out = tmp_path / "killed"
    path = _one_task(tmp_path, "seg")
    command = [sys.executable, "-m", "defend.cli", "matrix", str(path), "--out", str(out),
               "--cache", str(cache), "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = len(plan(load_config(path)))
    deadline = time.monotonic() + 600
    while len(list((out / "cells").glob("*.json"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list((out / "cells").glob("*.json")))
    assert 2 <= done < total
    summary = run_matrix(path, out, cache=cache, progress=False, log=_quiet)
    assert summary["ran"] == total - done and not summary["failed"]
    assert _rows(out / "matrix.csv") == _task_rows(first, "seg")


def test_shards_merge_into_the_same_matrix(smoke, tmp_path):
    first, cache = smoke
    config = load_config("smoke")
    config["run"]["tasks"] = ["cls"]
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        run_matrix(config, part, shard=(i, 2), cache=cache, progress=False, log=_quiet)
    merged = report(parts[0], folders=parts)
    assert not merged["missing"]
    assert _rows(parts[0] / "matrix.csv") == _task_rows(first, "cls")


def test_failed_cell_is_recorded_and_the_rest_go_on(smoke, tmp_path, monkeypatch):
    from defend.matrix import columns

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    _, cache = smoke
    monkeypatch.setitem(columns.ATTACKS, "noise", columns.Column(broken, True))
    out = tmp_path / "failing"
    path = _one_task(tmp_path, "cls")
    result = CliRunner().invoke(app, ["matrix", str(path), "--out", str(out), "--cache",
                                      str(cache), "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and all(r["attack"] == "noise" for r in failed)
    assert "broken on purpose" in failed[0]["error"]
    assert any(r["status"] == "ok" for r in records)
    assert "failed cells" in (out / "matrix.md").read_text()


def test_other_configuration_in_the_same_folder_is_refused(smoke):
    out, cache = smoke
    config = load_config("smoke")
    config["run"]["n"] = 3
    with pytest.raises(DefendError, match="another configuration") as error:
        run_matrix(config, out, cache=cache, progress=False, log=_quiet)
    assert "run" in str(error.value) and "\n" not in str(error.value)


def test_report_rebuilds_the_tables_from_the_cells(smoke, tmp_path):
    import shutil

    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "matrix.csv").unlink()
    (copy / "matrix.md").unlink()
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert _rows(copy / "matrix.csv") == _rows(out / "matrix.csv")
    assert (copy / "matrix.md").read_text() == (out / "matrix.md").read_text()
