"""First contact (issue "First contact"): every bad input is one line and exit 2 before any
work or file, and the values it reports are the ones the user typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from defend.io import CHECKPOINT_FORMAT
from entry import defend_main, one_line_error

#: a folder no file can be created in, whatever the permission bits say
UNWRITABLE = Path("/proc/defend-out")


def _certify(ckpt: Path, data: Path, out: Path, *options: object):
    return defend_main("certify", "--checkpoint", ckpt, "--data", data, "--out", out,
                       "--sigma", 0.25, "--no-progress", *options)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--alpha", 0), "--alpha must be in (0, 0.5), got 0"),
        (("--alpha", 2), "--alpha must be in (0, 0.5), got 2"),  # not the halved 1
        (("--batch-size", 0), "--batch-size must be > 0, got 0"),
        (("--tau", 0.9), "--tau is segmentation's vote threshold; cls ignores it"),
        (("--eps-in", 0.1), "--eps-in is the reconstruction's input radius; cls ignores it"),
    ],
)
def test_certify_refuses_bad_options_before_any_file(options, message, cls_ckpt, synth_dir,
                                                     tmp_path):  # fmt: skip
    one_line_error(_certify(cls_ckpt, synth_dir, tmp_path / "out", *options), message)
    assert list(tmp_path.iterdir()) == []  # no partial log, no folder


def test_certify_refuses_tau_outside_its_range(seg_ckpt, synth_dir, tmp_path):
    result = _certify(seg_ckpt, synth_dir, tmp_path / "out", "--tau", 0.4)
    one_line_error(result, "--tau must be in (0.5, 1), got 0.4")
    assert list(tmp_path.iterdir()) == []


def test_recon_certify_refuses_more_centre_candidates_than_samples(unet_ckpt, synth_dir,
                                                                   tmp_path):  # fmt: skip
    """Recon abstains on every sample with n0 > n: refused; cls and seg select on n0 and
    estimate on n apart, so there it is a valid, if odd, choice."""
    from defend.smooth.certify import check_options

    result = _certify(unet_ckpt, synth_dir, tmp_path / "out", "--n0", 50, "--n", 20)
    one_line_error(result, "--n0 (50) must not exceed --n (20)")
    assert list(tmp_path.iterdir()) == []
    counts = {"n0": 50, "n": 20, "alpha": 0.01}
    for task in ("cls", "seg"):
        check_options(task, 0.25, counts, 100, None, None)


@pytest.mark.parametrize("kind", ["detector", "input-detector", "denoiser"])
def test_a_helper_checkpoint_is_not_a_model(kind, synth_dir, tmp_path):
    path = tmp_path / f"{kind}.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "kind": kind, "task": "detect", "data": {}}, path)
    one_line_error(_certify(path, synth_dir, tmp_path / "out"), f"{path}: ", "not a model")
    result = defend_main("attack", "dgde", "--checkpoint", path, "--data", synth_dir, "--out",
                         tmp_path / "a", "--n", 1)  # fmt: skip
    one_line_error(result, "not a model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_an_output_no_file_can_be_created_in_is_refused_first(cls_ckpt, synth_dir):
    """Permission bits say /proc is writable to root; creating a file there fails: each
    command probes its output folder before any work."""
    commands = [
        ("train", "cls", "--data", synth_dir, "--out", UNWRITABLE / "m.pt", "--epochs", 1),
        ("attack", "dgde", "--checkpoint", cls_ckpt, "--data", synth_dir, "--out", UNWRITABLE,
         "--n", 1),
        ("certify", "--checkpoint", cls_ckpt, "--data", synth_dir, "--out", UNWRITABLE,
         "--sigma", 0.25),
        ("matrix", "smoke", "--out", UNWRITABLE),
    ]  # fmt: skip
    for command in commands:
        one_line_error(defend_main(*command), f"{UNWRITABLE}", "cannot be written")


def test_train_detector_data_can_be_sized(unet_ckpt, synth_dir, tmp_path):
    """--slices and --max-iter make the detector's attacked data smaller (the manifest says
    so), and an option the run ignores is refused in one line."""
    out = tmp_path / "det.pt"
    result = defend_main("train", "detector", "--checkpoint", unet_ckpt, "--data", synth_dir,
                         "--out", out, "--slices", 2, "--max-iter", 2, "--epochs", 1,
                         "--batch-size", 4, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "det.data" / "manifest.json").read_text())
    assert manifest["slices"] == {"train": 2, "val": 2} and manifest["max_iter"] == 2
    result = defend_main("train", "input-detector", "--checkpoint", unet_ckpt, "--data",
                         synth_dir, "--out", tmp_path / "in.pt", "--max-iter", 5)  # fmt: skip
    one_line_error(result, "--max-iter is for defend train detector")
    result = defend_main("train", "cls", "--data", synth_dir, "--out", tmp_path / "c.pt",
                         "--slices", 2)  # fmt: skip
    one_line_error(result, "--slices and --max-iter are for defend train denoiser")


def test_quality_warnings_fire_only_on_a_useless_model():
    from defend.metrics import quality_warnings

    assert quality_warnings("recon", {"ssim": 0.41, "zf_ssim": 0.43}) == [
        "the reconstruction's SSIM 0.4100 is below its zero-filled input's 0.4300: it is "
        "worse than no model"
    ]
    assert quality_warnings("recon", {"ssim": 0.6, "zf_ssim": 0.43}) == []
    assert len(quality_warnings("cls", {"accuracy": 0.5, "auroc": 0.5}, classes=2)) == 2
    assert quality_warnings("cls", {"accuracy": 0.9, "auroc": 0.95}, classes=2) == []
    assert "below chance" in quality_warnings("detector", {"auroc": 0.3})[0]
    assert quality_warnings("detector", {"auroc": 0.7}) == quality_warnings("seg", {}) == []


def test_info_warns_where_the_number_is_printed(unet_ckpt, tmp_path):
    """A reconstruction checkpoint whose SSIM is below its zero-filled input's: ``defend info``
    prints its metrics and one warning line; one above it prints none."""
    ckpt = torch.load(unet_ckpt, weights_only=True)
    for name, ssim in (("worse", 0.1), ("better", 0.9)):
        ckpt["metrics"] = {**ckpt["metrics"], "ssim": ssim, "zf_ssim": 0.4}
        torch.save(ckpt, tmp_path / f"{name}.pt")
    result = defend_main("info", tmp_path / "worse.pt")
    assert result.returncode == 0 and "metrics" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"warning: {tmp_path / 'worse.pt'}: the reconstruction's SSIM 0.1000 is below its "
        "zero-filled input's 0.4000: it is worse than no model"
    ]
    assert defend_main("info", tmp_path / "better.pt").stderr == ""


def test_the_detector_defaults_are_the_documented_protocol(monkeypatch, tmp_path):
    """``defend train detector`` with no schedule trains as docs/detection.md measured it
    (10 epochs, batch 16), and the unknown-preset error lists the presets."""
    import defend.detect.detector

    seen = {}
    monkeypatch.setattr(defend.detect.detector, "train_detector",
                        lambda *args, config, **kw: seen.update(config=config) or [])  # fmt: skip
    result = defend_main("train", "detector", "--checkpoint", tmp_path / "unet.pt", "--data",
                         tmp_path, "--out", tmp_path / "det.pt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (seen["config"].epochs, seen["config"].batch_size) == (10, 16)
    protocol = Path(__file__).parents[1] / "docs" / "detection.md"
    assert "10 epochs, batch 16" in protocol.read_text()
    one_line_error(defend_main("matrix", "quik"), "a preset is one of smoke, quick, paper")


def test_hallucination_training_carries_the_documented_recipe(monkeypatch, synth_dir, tmp_path):
    """The obvious command gets the measured recipe's beta (4) and one line saying what the
    recipe adds (fine-tuning from a standard model); with --weights the line is not said."""
    import defend.train

    seen = []
    monkeypatch.setattr(defend.train, "train_model",
                        lambda *args, objective, **kw: seen.append(objective) or [])  # fmt: skip
    command = ("train", "recon", "--data", synth_dir, "--out", tmp_path / "h.pt",
               "--adversarial", "hallucination")  # fmt: skip
    result = defend_main(*command)
    assert result.returncode == 0, result.stderr
    assert seen[0].config()["beta"] == 4.0
    assert result.stderr.startswith("note: docs/hardening.md's hardened U-Net")
    assert "--weights" in result.stderr and len(result.stderr.splitlines()) == 1
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert "note:" not in defend_main(*command, "--weights", weights).stderr


def test_certify_refuses_a_batch_that_cannot_fit_before_any_file(cls_ckpt, synth_dir, tmp_path):
    """A batch of noisy copies larger than the free memory (a 15-coil knee slice at the
    default 1000 needs ~79 GiB; here a huge batch of small images) is one line naming a batch
    that fits, before the partial log is made."""
    result = _certify(cls_ckpt, synth_dir, tmp_path / "out", "--batch-size", 10**9)
    line = one_line_error(result, "--batch-size 1000000000: 3 copies of", "GiB free: use")
    assert int(line.split("--batch-size ")[-1].split()[0]) >= 1
    assert not (tmp_path / "out" / "certificates.partial.jsonl").exists()


def test_certify_shows_progress_within_a_sample(cls_ckpt, synth_dir, tmp_path):
    """The smoothed model reports every noisy copy it runs (``on_draws``), and ``defend
    certify`` shows them as a second bar, so a long sample is not a frozen screen."""
    from defend.data import load_arrays
    from defend.smooth import load_smoothed

    smooth = load_smoothed(cls_ckpt, 0.25)
    seen: list[int] = []
    smooth.on_draws = seen.append
    x, _ = load_arrays(synth_dir, "cls", "test", 1, checkpoint=cls_ckpt)
    smooth.certify(x[0], n0=8, n=40, alpha=0.1, batch_size=16)
    assert sum(seen) == 48 and max(seen) <= 16
    result = _certify(cls_ckpt, synth_dir, tmp_path / "out", "--n-samples", 1, "--n0", 8,
                      "--n", 40)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_attacks_show_progress_within_a_batch(unet_ckpt, synth_dir, capsys):
    """A verbose attack shows the iterations of the batch in progress (a second bar), so a
    150-iteration attack at real size is not a frozen screen; quiet, it prints nothing."""
    import defend
    from defend.attacks import HallucinationAttack

    x, _ = defend.load_arrays(synth_dir, "recon", "test", 1, checkpoint=unet_ckpt)
    unet = defend.load_estimator(unet_ckpt)
    HallucinationAttack(unet, eps=0.05, max_iter=3, patience=0).generate(x)
    assert capsys.readouterr().err == ""
    HallucinationAttack(unet, eps=0.05, max_iter=3, patience=0, verbose=True).generate(x)
    assert "iterations, this batch" in capsys.readouterr().err
