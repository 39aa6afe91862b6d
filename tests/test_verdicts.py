"""Honest verdicts: abstentions count against the defence, recon success on the net
strength, intervals on every rate and mean, flags that fire only where intervals separate."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from defend import intervals
from defend.matrix import measures, outcomes, results
from defend.matrix.measures import Outputs
from defend.matrix.record import CellRecord
from defend.matrix.rows import System


# ------------------------------------------------------------------ intervals
def test_wilson_interval_matches_the_closed_form():
    low, high = intervals.wilson(3, 6)
    assert low == pytest.approx(0.1876, abs=1e-3) and high == pytest.approx(0.8124, abs=1e-3)
    low, high = intervals.wilson(0, 6)  # not empty at 0 / n: six samples cannot prove 0
    assert low == 0 and high == pytest.approx(0.3903, abs=1e-3)
    assert all(math.isnan(v) for v in intervals.wilson(0, 0))


def test_rate_and_mean_leave_unjudged_samples_out():
    rate = intervals.rate(np.array([1, 0, np.nan, 1]))
    assert rate.n == 3 and rate.value == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        intervals.rate(np.array([0.5, 1.0]))
    mean = intervals.mean(np.array([0.2, 0.4, 0.6, np.nan]))
    assert mean.n == 3 and mean.value == pytest.approx(0.4)
    assert mean.low == pytest.approx(0.4 - 4.3027 * 0.2 / math.sqrt(3), abs=1e-3)
    assert math.isnan(intervals.mean(np.array([0.3])).low)


def test_separated_only_when_intervals_do_not_overlap():
    weak, strong = intervals.rate(np.zeros(32)), intervals.rate(np.ones(32))
    assert intervals.separated(weak, strong) and not intervals.separated(strong, weak)
    few = intervals.rate(np.zeros(2)), intervals.rate(np.ones(2))
    assert not intervals.separated(*few)  # 0/2 against 2/2: the samples cannot tell


# ------------------------------------------------------------------ abstentions
def test_cls_abstention_under_attack_is_a_success():
    y = np.array([0, 1, 1])
    clean = Outputs(np.array([0, 1, 0]), np.array([False, False, True]))  # third: not judged
    adv = Outputs(np.array([0, 1, 1]), np.array([True, False, False]))  # first: abstains
    success = measures.success("cls", y, *(measures.resolve("cls", o, y) for o in (clean, adv)))
    np.testing.assert_array_equal(success, [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(measures.abstained("cls", adv), [1, 0, 0])


def test_seg_abstaining_pixels_are_scored_wrong():
    y = np.zeros((1, 1, 4, 4), np.float32)
    y[0, 0, :2] = 1
    right = y > 0.5
    gave_up = np.zeros_like(right)
    gave_up[0, 0, 0] = True  # four foreground pixels abstain
    gave_up[0, 0, 3] = True  # four background pixels abstain
    half = Outputs(right, gave_up)
    shown = measures.resolve("seg", half, y)
    assert measures.quality("seg", y, right)[0] == pytest.approx(1.0)
    # 4 of 8 foreground found, 4 background false positives: Dice 2*4 / (8 + 8)
    assert measures.quality("seg", y, shown)[0] == pytest.approx(0.5, abs=1e-3)
    assert measures.abstained("seg", half)[0] == pytest.approx(0.5)


def test_recon_abstention_is_scored_as_the_declared_fallback():
    y = np.ones((2, 4, 4), np.float32)
    out = Outputs(y.copy(), np.array([False, True]))
    fallback = np.zeros_like(y) + 0.5
    shown = measures.resolve("recon", out, y, fallback)
    np.testing.assert_array_equal(shown[1], fallback[1])
    np.testing.assert_array_equal(shown[0], y[0])
    with pytest.raises(ValueError, match="fallback"):
        measures.resolve("recon", out, y)
    np.testing.assert_array_equal(measures.abstained("recon", out), [0, 1])


def _cls_system(predictions: np.ndarray, smooth: bool) -> System:
    outputs = Outputs.answered(predictions, "cls")
    return System("cls", None, lambda x, _: outputs, smooth=object() if smooth else None)


def test_judge_counts_an_abstaining_smoothed_classifier_against_it():
    """Before: an abstention scored success 0. Now it is a success, and ``abstain`` says so."""
    config = {"attack": {}}
    x, y = np.zeros((4, 1, 2, 2), np.float32), np.array([0, 1, 0, 1])
    judge = outcomes.Judge(config, _cls_system(y, smooth=True), x, y, Outputs.answered(y, "cls"))
    samples = judge(x, Outputs(np.array([0, 0, 0, 1]), np.array([True, True, False, False])))
    np.testing.assert_array_equal(samples["success"], [1, 1, 0, 0])
    np.testing.assert_array_equal(samples["attacked_quality"], [0, 0, 1, 1])
    np.testing.assert_array_equal(samples["abstain"], [1, 1, 0, 0])
    summary = outcomes.summarise("cls", samples)
    assert summary["metrics"]["success"] == 0.5 and summary["counts"]["success"] == 4
    low, high = summary["intervals"]["success"]
    assert low < 0.5 < high


# ------------------------------------------------------------------ net strength
class _ZeroFilled(torch.nn.Module):
    """A recon 'model' that shows its zero-filled input: faithful to the measurement."""

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from defend.kspace import zero_filled

        return zero_filled(kspace * mask)


def test_net_strength_is_zero_for_a_model_faithful_to_the_measurement():
    """The attack writes a feature into measured k-space; a model that shows exactly what was
    measured has strength = input strength and net strength 0: no success (before: success
    was judged on the raw strength)."""
    import fastmri

    from defend.kspace import zero_filled

    rng = np.random.default_rng(0)
    image = rng.random((1, 1, 16, 16)).astype(np.float32)
    feature = np.zeros_like(image)
    feature[..., 6:10, 6:10] = 0.6
    real = (torch.as_tensor(a) for a in (image, image + feature))
    x, x_adv = (fastmri.fft2c(torch.stack([r, torch.zeros_like(r)], -1)).numpy() for r in real)
    from defend.estimators import ReconEstimator

    faithful = ReconEstimator(_ZeroFilled(), np.ones((1, 1, 1, 16, 1), np.float32),
                              x.shape[1:], device="cpu")  # fmt: skip
    clean, adv = (zero_filled(torch.as_tensor(k)).numpy() for k in (x, x_adv))
    params = {"region": "square", "region_size": 4, "alpha": 0.3}
    found = measures.Hallucination(faithful, params).strengths(clean, adv, x, x_adv)
    assert found["strength"][0] > measures.STRENGTH  # the raw strength would say "success"
    np.testing.assert_allclose(found["net_strength"], 0, atol=1e-5)
    assert measures.success("recon", None, clean, adv, found["net_strength"])[0] == 0


# ------------------------------------------------------------------ flags and tables
def _record(cell: str, adaptive: str, metrics: dict[str, np.ndarray], task: str = "cls",
            eps: float = 0.03) -> CellRecord:  # fmt: skip
    summary = outcomes.summarise(task, metrics)
    return CellRecord(id=cell, task=task, model="m", defence="smoothing", attack="art-pgd",
                      adaptive=adaptive, eps=eps, n=32, seconds=1.0, **summary)  # fmt: skip


def test_adaptive_weaker_than_plain_flag_fires_where_intervals_separate():
    """The cell's worst case of the two can never be below plain; the adaptive attack on its
    own can, and the flag reads that."""
    weak, strong = np.zeros(32), np.ones(32)
    worst = np.maximum(weak, strong)
    tripped = _record("a", "eot", {"success": worst, "adaptive_success": weak,
                                   "plain_success": strong})  # fmt: skip
    raised = results.flags([tripped])
    assert [f["flag"] for f in raised] == ["EOT attack weaker than plain"]
    close = np.r_[np.ones(15), np.zeros(17)]
    fine = _record("a", "eot", {"success": worst, "adaptive_success": close,
                                "plain_success": np.r_[np.ones(17), np.zeros(15)]})  # fmt: skip
    assert results.flags([fine]) == []  # 15/32 against 17/32: intervals overlap


def test_evade_flag_reads_the_undetected_successes():
    lost = _record("d", "evade", {"success": np.ones(32),
                                  "adaptive_undetected_success": np.zeros(32),
                                  "plain_undetected_success": np.ones(32)})  # fmt: skip
    assert [f["flag"] for f in results.flags([lost])] == ["detector-aware attack weaker than plain"]


def test_eps_flag_needs_separated_intervals():
    small = _record("s", "none", {"success": np.ones(32)}, eps=0.01)
    big = _record("b", "none", {"success": np.zeros(32)}, eps=0.03)
    assert [f["flag"] for f in results.flags([small, big])] == ["success falls as eps grows"]
    small = _record("s", "none", {"success": np.ones(2)}, eps=0.01)
    big = _record("b", "none", {"success": np.zeros(2)}, eps=0.03)
    assert results.flags([small, big]) == []  # two samples a cell cannot tell them apart


def test_csv_and_tables_carry_the_intervals(tmp_path):
    record = _record(
        "c",
        "none",
        {
            "success": np.r_[np.ones(8), np.zeros(24)],
            "abstain": np.r_[np.ones(4), np.zeros(28)],
            "attacked_quality": np.r_[np.ones(24), np.zeros(8)],
        },
    )
    results.write_results(tmp_path, [record])
    with (tmp_path / "matrix.csv").open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert {"ci_low", "ci_high", "n"} <= set(rows["success"])
    low, high = intervals.wilson(8, 32)
    assert float(rows["success"]["ci_low"]) == pytest.approx(low, abs=1e-5)
    assert float(rows["success"]["ci_high"]) == pytest.approx(high, abs=1e-5)
    assert rows["success"]["n"] == "32"
    text = (tmp_path / "matrix.md").read_text()
    assert f"0.250 [{low:.2f}, {high:.2f}]" in text
    assert "abstentions under attack" in text
    assert "abstentions under attack" in (tmp_path / "report.html").read_text()


# ------------------------------------------------------------------ real findings
def test_an_acquired_lesion_shows_in_the_fully_sampled_image():
    """Through estimated coil sensitivities, the root-sum-of-squares image gains the feature
    (exactly, where every column is measured), and only measured columns change."""
    import fastmri

    from defend.data.lesion import add_lesion

    gen = torch.Generator().manual_seed(0)
    coils = torch.randn(2, 3, 16, 16, 2, generator=gen) + 2.0
    kspace = fastmri.fft2c(coils)
    feature = torch.zeros(2, 8, 8)
    feature[:, 3:5, 2:6] = 0.7
    every = torch.ones(2, 1, 1, 16, 1, dtype=torch.bool)
    before = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(kspace)), dim=1)
    after = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(add_lesion(kspace, every, feature))),
                        dim=1)  # fmt: skip
    torch.testing.assert_close(after - before, torch.nn.functional.pad(feature, (4, 4, 4, 4)),
                               atol=1e-4, rtol=0)  # fmt: skip
    some = every.clone()
    some[..., ::3, :] = False
    changed = add_lesion(kspace * some, some, feature) - kspace * some
    assert changed[..., ::3, :].abs().max() == 0 and changed.abs().max() > 0


def test_a_model_that_erases_a_real_feature_misses_it():
    """The real-feature column: a faithful model recalls what was acquired; one that returns
    the clean image whatever it measures (a 'defence' that ignores k-space) misses it."""
    import fastmri

    from defend.data.lesion import add_lesion
    from defend.estimators import ReconEstimator
    from defend.kspace import zero_filled

    rng = np.random.default_rng(1)
    image = torch.as_tensor(rng.random((1, 1, 16, 16)).astype(np.float32) + 0.5)
    x = fastmri.fft2c(torch.stack([image, torch.zeros_like(image)], -1))
    every = torch.ones(1, 1, 1, 16, 1, dtype=torch.bool)
    mask = np.ones((1, 1, 1, 16, 1), np.float32)
    faithful = ReconEstimator(_ZeroFilled(), mask, x.shape[1:], device="cpu")
    params = {"region": "square", "region_size": 4, "alpha": 0.3}
    hallucination = measures.Hallucination(faithful, params)
    y = zero_filled(x).numpy()
    x_feature = add_lesion(x, every, torch.as_tensor(hallucination.feature(y)))
    shown = zero_filled(x_feature).numpy()
    recalled = hallucination.strengths(y, shown, x.numpy(), x_feature.numpy())["strength"]
    assert recalled[0] == pytest.approx(1.0, abs=0.05)
    erased = hallucination.strengths(y, y, x.numpy(), x_feature.numpy())["strength"]
    assert abs(erased[0]) < 1e-6 < measures.STRENGTH


# ------------------------------------------------------------------ certificates
def test_inside_radius_check_holds_inside_and_fires_beyond_the_radius(cls_ckpt, synth_dir):
    """The l2 EOT attack at each sample's certified radius breaks no certificate; the same
    attack at 20 x the radius does: the check can fail (before, no attack stayed inside a
    radius and certificate_violations was 0 by construction)."""
    from defend.data import load_arrays
    from defend.matrix import inside_radius, load_config
    from defend.matrix.rows import Row, certificates, system

    config = load_config("smoke")
    defended = system(config, Row("cls", "resnet18", "smoothing"), {"model": cls_ckpt})
    x, y, positions = load_arrays(synth_dir, "cls", "test", 8, checkpoint=cls_ckpt,
                                  return_indices=True)  # fmt: skip
    clean = certificates(defended, config, x, y, positions)

    def check(scale: float) -> dict[str, np.ndarray]:
        x_adv = inside_radius.attack(defended, clean, x, y, config, scale=scale)
        size = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
        assert np.all(size <= scale * clean["radius"] * (1 + 1e-4) + 1e-6)
        return inside_radius.outcomes(defended, clean, x, defended.outputs(x_adv, positions))

    inside = check(1.0)
    assert inside["covered"].sum() >= 4
    assert inside["violated"].sum() == 0
    assert check(20.0)["violated"].sum() > 0


def test_recon_inside_radius_reads_the_bound_at_the_largest_certified_radius():
    """Recon: the budget is the largest grid radius with a finite bound (in the noise's
    k-space unit); an output that moved further than that bound is a violation."""
    from types import SimpleNamespace

    from defend.matrix import inside_radius

    noise = SimpleNamespace(unit=2.0)
    smooth = SimpleNamespace(noise=noise, device="cpu", forward=lambda x: torch.ones(len(x), 2))
    defended = SimpleNamespace(task="recon", smooth=smooth)
    inf, nan = np.inf, np.nan
    clean = {"eps_in": np.array([0.0, 0.1, 0.2]),
             "eps_out": np.array([[0.1, 0.2, inf], [nan, nan, nan], [0.1, 0.2, 0.3]]),
             "center": np.zeros((3, 1, 2), np.float32),
             "center_abstained": np.array([False, True, False])}  # fmt: skip
    np.testing.assert_allclose(inside_radius.radii(defended, clean), [0.2, 0.0, 0.4])
    x = np.zeros((3, 1, 1, 2, 2), np.float32)
    out = np.zeros((3, 1, 2), np.float32)
    out[0, 0, 0] = 0.25 * math.sqrt(2)  # moved 0.25 of the output norm: beyond the 0.2 bound
    out[2, 0, 0] = 0.25 * math.sqrt(2)  # within its 0.3 bound
    found = inside_radius.outcomes(defended, clean, x, Outputs(out, np.zeros(3, bool)))
    np.testing.assert_array_equal(found["covered"], [1, 0, 1])
    np.testing.assert_array_equal(found["violated"], [1, 0, 0])


def test_intervals_of_bounded_means_and_of_an_auroc():
    """A Dice mean's t interval stays inside [0, 1] (n = 3 Dice near 1 ran past 1 before);
    an AUROC gets the conservative Wilson interval over min(m, n) trials: wide at 6 against
    6, narrow at 600 against 600, and not a point at 0 (Hanley-McNeil's was)."""
    from defend import intervals
    from defend.matrix.outcomes import summarise

    dice = np.array([0.99, 0.7, 0.98])
    assert intervals.mean(dice).high > 1  # the plain t interval
    found = summarise("seg", {"attacked_quality": dice})
    low, high = found["intervals"]["attacked_quality"]
    assert 0 <= low and high == 1.0
    strength = summarise("recon", {"net_strength": np.array([-1.2, -0.9, -1.1])})
    assert strength["intervals"]["net_strength"][0] < -1  # no range: not cut
    small, large = intervals.auroc(0.8, 6, 6), intervals.auroc(0.8, 600, 600)
    assert small.low < 0.6 < small.high <= 1.0
    assert 0.76 < large.low < 0.8 < large.high < 0.84
    assert np.isnan(intervals.auroc(0.5, 0, 6).low)
    few, many = intervals.auroc(0.0, 2, 2), intervals.auroc(0.0, 32, 32)
    assert few.low == 0 and few.high > 0.5  # 2 against 2 ordered wrongly: not below chance
    assert many.high < 0.5
