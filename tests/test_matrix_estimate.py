"""defend matrix says its plan and model time before it runs, warns when a configuration
sized for a GPU starts on a CPU, and shows its builds under a progress bar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from defend.matrix import load_config, run_matrix
from defend.matrix.builds import Builder, data_build
from defend.matrix.cells import plan
from defend.matrix.estimate import LONG, Passes, cell_passes, estimate, plan_lines
from defend.matrix.rows import run_builds


@pytest.fixture(scope="module")
def fresh_smoke(smoke_run: dict) -> tuple[list[str], str, Path]:
    """The smoke matrix from an empty cache, progress on: ``(log lines, stderr, cache)``."""
    return smoke_run["log"], smoke_run["stderr"], smoke_run["cache"]


def test_the_plan_and_its_estimate_come_before_the_run(fresh_smoke):
    lines, err, _ = fresh_smoke
    said = [i for i, line in enumerate(lines) if line.startswith(("plan:", "estimate:"))]
    built = [i for i, line in enumerate(lines) if line.startswith("== building")]  # data too
    assert len(said) == 3 and built and max(said) < min(built)
    first = lines[said[0]]
    assert "model 3" in first and "detector 2" in first and "44 cells" in first
    assert "recon 2" in first  # smoke's n: 2 samples a cell
    assert "hallucination 5 iterations" in lines[said[1]]
    parts = re.search(r"builds ([0-9.]+) (s|min|h), cells ([0-9.]+) (s|min|h)", lines[said[2]])
    assert parts and float(parts[3]) > 0
    assert not any(line.startswith("warning:") for line in lines)  # smoke is a CPU job


def test_builds_show_progress(fresh_smoke):
    _, err, _ = fresh_smoke
    counts = re.findall(r"builds:.*?(\d+)/(\d+)", err)
    assert counts and counts[-1][0] == counts[-1][1] and int(counts[-1][1]) >= 6


def test_a_run_with_nothing_to_do_says_no_plan(fresh_smoke, tmp_path):
    _, _, cache = fresh_smoke
    lines: list[str] = []
    one = {"shard": (0, 44), "cache": cache, "progress": False}  # one cell
    run_matrix("smoke", tmp_path / "out", **one, log=lines.append)
    assert any(line.startswith("plan: builds to make: none, all cached; 1 cells") for line in lines)
    again: list[str] = []
    run_matrix("smoke", tmp_path / "out", **one, log=again.append)
    assert not any(line.startswith(("plan:", "estimate:")) for line in again)


def test_a_configuration_sized_for_a_gpu_warns_on_the_cpu(fresh_smoke):
    """Smoke with 10^6 training epochs: the model time of its builds passes an hour."""
    _, _, cache = fresh_smoke
    config = load_config("smoke")
    config["recon"]["epochs"] = 1_000_000
    cells = plan(config)
    builder = Builder(cache, "cpu", lambda _: None)
    builds = [b for b in run_builds(config, [c.row for c in cells]) if not builder.done(b)]
    found = estimate(config, cells, builds, builder.make(data_build(config)), "cpu")
    assert found.seconds > LONG
    warning = plan_lines(config, cells, builds, found)[-1]
    assert warning.startswith("warning: about") and "sized for a GPU" in warning


def test_cell_passes_follow_the_configuration():
    config = load_config("smoke")
    cells = plan(config)
    passes = cell_passes(config, cells)
    by_id = {c.id: c for c in cells}
    steps = config["attack"]["hallucination"]["max_iter"]
    # the none row's first cell of the attack pays for it; its clean answer is one forward
    assert passes["recon.unet.none.hallucination.eps0.1"] == Passes(steps, 2)
    config["attack"]["hallucination"]["max_iter"] *= 2
    assert cell_passes(config, cells)["recon.unet.none.hallucination.eps0.1"].steps == 2 * steps
    config["attack"]["hallucination"]["max_iter"] = steps
    # the detector and smoothing rows read the none row's plain attack: no steps of their own
    assert passes["recon.unet.detector.hallucination.eps0.1"].steps == 0
    assert passes["recon.unet.smoothing.hallucination.eps0.1"].steps == 0
    # the adaptive cell: its own EOT steps; its plain half's answer was the plain cell's
    s = config["smoothing"]
    predict = s["n0"] + 2 * s["recon_n"]
    eot = by_id["recon.unet.smoothing.hallucination+eot.eps0.1"]
    assert passes[eot.id] == Passes(steps * s["eot"], predict)  # smoke: no denoiser
    # run alone, the adaptive cell pays for everything it needs
    alone = cell_passes(config, [eot])[eot.id]
    certify = s["n0"] + 3 * s["recon_n"]
    assert alone == Passes(steps * s["eot"] + steps, 3 * predict + certify)
    # behind a denoiser, the smoothed draws and the EOT steps go through it too
    config["smoothing"]["denoiser_epochs"] = 2
    behind = cell_passes(config, [eot])[eot.id]
    assert (behind.denoised_steps, behind.denoised_forwards) == (steps * s["eot"], alone.forwards)
