"""fastMRI's real size (issue 32): 15 coils, 640 x 368 and 640 x 372 k-space in one split.

A tiny model at the real input size: one training step, two attack iterations over both
widths, center smoothing of each width, the detector's forward and one matrix cell, each
with every sample asked for, passes sized by the memory budget (defend.memory). The peak
memory of the commands at their defaults is ``defend bench memory``'s (docs/benchmark.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import defend
from defend.data import load_groups
from defend.data.fastmri_files import write_real_size_set
from defend.train import TrainConfig, train_model
from entry import defend_main

TINY = {"chans": 2, "num_pool_layers": 1}


@pytest.fixture(scope="module")
def real_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_real_size_set(tmp_path_factory.mktemp("knee"), slices=1)


@pytest.fixture(scope="module")
def model(real_size, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "unet.pt"
    train_model("recon", real_size, out, model="unet", model_options=TINY,
                config=TrainConfig(epochs=1, batch_size=2, progress=False),
                log=lambda line: None)  # fmt: skip
    return out


def test_data_mixes_the_two_real_widths(real_size):
    groups = load_groups(real_size, "recon", "test", None)
    assert sorted(x.shape[1:] for x, _, _ in groups) == [(15, 640, 368, 2), (15, 640, 372, 2)]


def test_attack_covers_both_widths(model, real_size, tmp_path):
    result = defend_main("attack", "hallucination", "--checkpoint", model, "--data", real_size,
                         "--n", 2, "--max-iter", 2, "--out", tmp_path, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["iterations"] == 2 for r in rows)


def test_center_smoothing_and_detector_at_each_width(model, real_size, monkeypatch):
    from defend.detect.detector import HallucinationDetector, detector_outputs
    from defend.detect.features import forward_in_passes
    from defend.smooth import load_smoothed

    monkeypatch.setenv("DEFEND_MEMORY", "1GiB")  # passes of a few copies: chunked
    smooth = load_smoothed(model, 0.25, data=real_size, delta=0.4)
    estimator = defend.load_estimator(model)
    for x, _, _ in load_groups(real_size, "recon", "test", None, checkpoint=model):
        center, bound = smooth.reshaped(x.shape[1:]).certify(x[0], n0=2, n=16, alpha=0.45)
        assert center is not None and center.shape == (320, 320) and not np.isnan(bound)
        _, inputs, _ = forward_in_passes(estimator.reshaped(x.shape[1:]), torch.as_tensor(x))
        scores, maps = detector_outputs(HallucinationDetector(chans=2, pools=1).eval(),
                                        inputs.numpy())  # fmt: skip
        assert scores.shape == (len(x),) and maps.shape == (len(x), 320, 320)


def test_one_matrix_cell_judges_every_sample(real_size, tmp_path):
    from defend.matrix import load_config, run_matrix

    config = load_config("smoke")
    config["run"].update(tasks=["recon"], n=2, adaptive=False)
    config["data"]["path"] = str(real_size)
    config["recon"].update(defences=["none"], attacks=["hallucination"])
    config["attack"]["hallucination"]["max_iter"] = 2
    run_matrix(config, tmp_path / "m", cache=tmp_path / "cache", progress=False,
               log=lambda line: None)  # fmt: skip
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "m" / "cells").glob("*.json")]
    assert record["status"] == "ok" and record["n"] == 2, record.get("error")
