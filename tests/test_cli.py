"""The `defend` command line: commands run end to end, bad input gives one line and exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from defend.cli import app
from entry import defend_main

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_data_synth(tmp_path):
    out = invoke(
        "data",
        "synth",
        tmp_path / "d",
        "--size",
        "32",
        "--coils",
        "2",
        "--volumes",
        "3",
        "--slices",
        "2",
    )
    assert "wrote" in out
    assert len(list((tmp_path / "d" / "train").glob("*.h5"))) >= 1
    assert (tmp_path / "d" / "seg" / "val" / "images").is_dir()
    assert (tmp_path / "d" / "cls" / "test").is_dir()


def test_train_resume_and_info(synth_dir, tmp_path):
    ckpt = tmp_path / "cls.pt"
    out = invoke(
        "train", "cls", "--data", synth_dir, "--out", ckpt, "--epochs", "1", "--no-progress"
    )
    assert "accuracy" in out and ckpt.exists()
    assert "already trained" in invoke(
        "train", "cls", "--data", synth_dir, "--out", ckpt, "--epochs", "1", "--no-progress"
    )
    longer = defend_main(
        "train", "cls", "--data", synth_dir, "--out", ckpt, "--epochs", "2", "--no-progress"
    )  # another schedule: refused in one line, naming the difference
    assert longer.returncode == 2 and "epochs 1 -> 2" in longer.stderr
    assert longer.stderr.count("\n") == 1
    info = invoke("info", ckpt)
    assert "task      cls" in info and "epoch     1" in info


def read_rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_attack_hallucination(unet_ckpt, synth_dir, tmp_path):
    out = invoke(
        "attack",
        "hallucination",
        "--checkpoint",
        unet_ckpt,
        "--data",
        synth_dir,
        "--out",
        tmp_path,
        "--n",
        "2",
        "--max-iter",
        "5",
        "--region",
        "square",
        "--region-size",
        "6",
    )
    assert "strength" in out and "recon_ssim" in out
    rows = read_rows(tmp_path)
    assert len(rows) == 2 and float(rows[0]["strength"]) > 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["params"]["region"] == "square" and result["params"]["region_size"] == [6, 6]
    assert (tmp_path / "figure.png").stat().st_size > 1000


def test_attack_seg_fgsm(seg_ckpt, synth_dir, tmp_path):
    out = invoke(
        "attack",
        "seg-fgsm",
        "--checkpoint",
        seg_ckpt,
        "--data",
        synth_dir,
        "--out",
        tmp_path,
        "--n",
        "12",
        "--eps",
        "0.02",
        "--loss",
        "training",
        "--save-adversarial",
    )
    assert "dice_adv" in out and "empty_target" in out
    rows = read_rows(tmp_path)
    assert len(rows) == 12 and (tmp_path / "figure.png").exists()
    # slices without a lesion have no Dice (NaN in the rows): the JSON says null, strictly
    assert any(row["dice_clean"] == "nan" for row in rows)

    def no_constants(name):
        raise AssertionError(f"metrics.json holds {name}: not JSON")

    result = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=no_constants)
    assert any(row["dice_clean"] is None for row in result["rows"])
    assert result["summary"]["dice_clean"]["n"] < 12 == result["summary"]["empty_target"]["n"]
    saved = np.load(tmp_path / "adversarial.npz", allow_pickle=False)
    assert saved["x"].shape == saved["x_adv"].shape == (12, 1, 32, 32)
    np.testing.assert_array_equal(saved["indices"], np.arange(12))
    assert 0 < np.abs(saved["x_adv"] - saved["x"]).max() <= 0.02 + 1e-6


def test_attack_dgde(cls_ckpt, synth_dir, tmp_path):
    out = invoke(
        "attack",
        "dgde",
        "--checkpoint",
        cls_ckpt,
        "--data",
        synth_dir,
        "--out",
        tmp_path,
        "--n",
        "2",
        "--max-iter",
        "5",
        "--max-queries",
        "300",
    )
    assert "pixels_pct" in out
    assert len(read_rows(tmp_path)) == 2 and (tmp_path / "figure.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "recon", "--data", "/nonexistent", "--out", "x.pt"], "nonexistent"),
        (["train", "mri", "--data", ".", "--out", "x.pt"], "unknown task 'mri'"),
        (["info", "/nonexistent.pt"], "no such checkpoint"),
    ],
)
def test_bad_input_is_one_line(args, message):
    result = defend_main(*args, isolated=args[0] == "info")  # one through the console script
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_attack_errors_are_one_line(seg_ckpt, unet_ckpt, synth_dir, tmp_path):
    wrong_task = defend_main(
        "attack", "hallucination", "--checkpoint", seg_ckpt, "--data", synth_dir, "--out", tmp_path
    )
    assert wrong_task.returncode == 2 and "expected 'recon'" in wrong_task.stderr
    bad_eps = defend_main(
        "attack",
        "hallucination",
        "--checkpoint",
        unet_ckpt,
        "--data",
        synth_dir,
        "--out",
        tmp_path,
        "--eps",
        "-1",
    )
    assert bad_eps.returncode == 2 and "eps must be a finite number > 0" in bad_eps.stderr
    pickled = tmp_path / "region.npy"
    np.save(pickled, np.array([{"code": "runs"}], dtype=object), allow_pickle=True)
    bad_mask = defend_main(
        "attack",
        "hallucination",
        "--checkpoint",
        unet_ckpt,
        "--data",
        synth_dir,
        "--out",
        tmp_path / "out",
        "--region-mask",
        pickled,
    )
    assert bad_mask.returncode == 2 and "unreadable region mask" in bad_mask.stderr
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in wrong_task.stderr + bad_eps.stderr + bad_mask.stderr


def test_bench_models_quick_trains_everything_and_resumes(tmp_path):
    out = invoke("bench", "models", tmp_path / "run", "--quick", "--n", "2")
    for name in ("recon-unet", "recon-varnet", "seg", "cls"):
        assert (tmp_path / "run" / f"{name}.pt").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["attacks"]) == {
        "hallucination/recon-unet",
        "hallucination/recon-varnet",
        "seg-fgsm/seg/bce",
        "seg-fgsm/seg/training",
        "dgde/cls",
    }
    assert "strength" in out and "zf_ssim" in out
    again = invoke("bench", "models", tmp_path / "run", "--quick", "--n", "2")
    assert again.count("already trained") == 4
