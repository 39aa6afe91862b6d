"""defend bench device: the GPU path's figures, checked on the CPU at quick sizes."""

from __future__ import annotations

from typer.testing import CliRunner

from defend.bench.device_figures import (
    PAPER_SMOOTHING,
    PAPER_UNET,
    PAPER_VARNET,
    format_figures,
    run_device_figures,
)
from defend.cli import app
from defend.errors import DefendError
from defend.matrix import load_config


def test_the_figures_are_measured_at_the_paper_presets_sizes():
    paper = load_config("paper")
    assert paper["recon"]["model_options"]["varnet"] == PAPER_VARNET
    assert paper["recon"]["model_options"]["unet"] == PAPER_UNET
    assert {k: paper["smoothing"][k] for k in PAPER_SMOOTHING} == PAPER_SMOOTHING


def test_quick_figures_on_the_cpu(tmp_path):
    result = run_device_figures(tmp_path, quick=True, repeats=1, device="cpu")
    rows = {row["step"]: row for row in result["rows"]}
    assert list(rows) == ["varnet forward", "hallucination attack", "certify"]
    assert all(row["rate"] > 0 and row["seconds"] > 0 and row["peak_gib"] > 0.1
               for row in rows.values())  # fmt: skip
    # the copies are counted through the model: at least n0 2 + 2 x n 6 (the candidates,
    # their medians, the centre's test)
    assert rows["certify"]["copies"] >= 2 + 2 * 6
    assert rows["hallucination attack"]["iterations"] == 2
    assert result["input_shape"] == [2, 320, 320, 2]
    assert "quick: not the GPU figures" in format_figures(result)


def test_bench_device_command_writes_json(tmp_path):
    done = CliRunner().invoke(app, ["bench", "device", str(tmp_path), "--quick", "--device",
                                    "cpu", "--out", str(tmp_path / "figures.json")])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "varnet forward" in done.output and (tmp_path / "figures.json").exists()


def test_bench_memory_refuses_an_unknown_anatomy_before_writing(tmp_path):
    done = CliRunner().invoke(app, ["bench", "memory", str(tmp_path / "m"), "--anatomy", "lung"])
    assert isinstance(done.exception, DefendError) and not (tmp_path / "m").exists()
    assert str(done.exception) == "--anatomy must be knee or brain, got 'lung'"
