"""SegmentationFGSM against a trained segmentation estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import defend
from defend.attacks import SegmentationFGSM
from defend.errors import DefendError
from defend.estimators import SegEstimator
from defend.losses import seg_loss
from defend.models import build_model, default_model_config


@pytest.fixture(scope="module")
def seg(seg_ckpt):
    return defend.load_estimator(seg_ckpt)


@pytest.fixture(scope="module")
def lesions(synth_dir):
    x, y = defend.load_arrays(synth_dir, "seg", "test", None)
    keep = y.reshape(len(y), -1).any(1)  # Dice is scored on slices with a lesion
    return x[keep][:6], y[keep][:6]


def losses(est, x, y, name):
    return seg_loss(name, torch.as_tensor(est.predict(x)), torch.as_tensor(y)).numpy()


@pytest.mark.parametrize("loss", ["bce", "dice", "dicefocal"])
def test_fgsm_raises_its_loss_within_budget(seg, lesions, loss):
    x, y = lesions
    attack = SegmentationFGSM(seg, eps=0.03, loss=loss)
    x_adv = attack.generate(x, y)
    assert np.all(losses(seg, x_adv, y, loss) >= losses(seg, x, y, loss))
    assert np.mean(losses(seg, x_adv, y, loss)) > np.mean(losses(seg, x, y, loss))
    assert np.abs(x_adv - x).max() <= 0.03 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    r = attack.report
    assert np.nanmean(r["dice_adv"]) < np.nanmean(r["dice_clean"])
    np.testing.assert_allclose(r["dice_diff"], (r["dice_clean"] - r["dice_adv"]) / r["dice_clean"])


def test_pgd_beats_fgsm(seg, lesions):
    x, y = lesions
    fgsm = SegmentationFGSM(seg, eps=0.02, loss="bce").generate(x, y)
    pgd = SegmentationFGSM(seg, eps=0.02, loss="bce", max_iter=10).generate(x, y)
    assert np.abs(pgd - x).max() <= 0.02 + 1e-6
    assert losses(seg, pgd, y, "bce").mean() > losses(seg, fgsm, y, "bce").mean()


def test_training_loss_through_loss_gradient(seg, lesions):
    """loss='training' uses only the estimator's loss_gradient (its Dice+Focal training loss)."""
    x, y = lesions
    x_adv = SegmentationFGSM(seg, eps=0.03, loss="training").generate(x, y)
    assert losses(seg, x_adv, y, "dicefocal").mean() > losses(seg, x, y, "dicefocal").mean()


def test_target_own_prediction(seg, lesions):
    x, _ = lesions
    attack = SegmentationFGSM(seg, eps=0.03, target="prediction")
    attack.generate(x)  # no ground truth needed
    assert np.nanmean(attack.report["dice_adv"]) < np.nanmean(attack.report["dice_clean"])
    with pytest.raises(DefendError, match="ground-truth"):
        SegmentationFGSM(seg, target="truth").generate(x)


def test_multi_label_masks():
    torch.manual_seed(0)
    model = build_model("seg", default_model_config("seg", None, in_channels=3, classes=2))
    est = SegEstimator(model, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32).numpy()
    y = (torch.rand(2, 2, 32, 32) > 0.7).float().numpy()
    attack = SegmentationFGSM(est, eps=0.05, loss="bce", max_iter=3)
    x_adv = attack.generate(x, y)
    assert losses(est, x_adv, y, "bce").mean() > losses(est, x, y, "bce").mean()
    assert attack.report["dice_adv"].shape == (2,)


def test_same_seed_same_result(seg, lesions):
    x, y = lesions
    a = SegmentationFGSM(seg, max_iter=3, seed=1).generate(x, y)
    b = SegmentationFGSM(seg, max_iter=3, seed=1).generate(x, y)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": float("inf")}, r"eps must be in \(0, 1\]"),
        ({"eps": float("nan")}, r"eps must be in \(0, 1\]"),
        ({"eps": 1e9}, r"eps must be in \(0, 1\]"),
        ({"step": float("inf")}, "step must be a finite number"),
        ({"loss": "mse"}, "loss must be bce, dice, dicefocal or training"),
        ({"target": "other"}, "target"),
        ({"max_iter": 0}, "max_iter"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_parameters(seg, params, message):
    with pytest.raises(DefendError, match=message):
        SegmentationFGSM(seg, **params)


def test_training_loss_is_the_loss_the_checkpoint_was_trained_with(seg, seg_ckpt, lesions):
    """loss='training' scores each sample with the task's training loss, as fit() minimised it."""
    from defend.io import load_checkpoint
    from defend.tasks import get_task

    x, y = lesions
    task = get_task("seg")
    assert load_checkpoint(seg_ckpt)["loss"] == task.loss_name
    with torch.no_grad():
        logits = seg.model(torch.as_tensor(x))
    trained = task.loss(logits, {"target": torch.as_tensor(y)}).numpy()  # (B,): fit's mean
    attack = SegmentationFGSM(seg, eps=0.03, loss="training")
    x_adv = attack.generate(x, y)
    np.testing.assert_allclose(attack.report["loss_clean"], trained, rtol=1e-5)
    np.testing.assert_allclose(seg.compute_loss(x, y, reduction="none"), trained, rtol=1e-5)
    assert np.all(attack.report["loss_adv"] > attack.report["loss_clean"])
    # the training loss is not BCE: the two attacks differ
    bce = SegmentationFGSM(seg, eps=0.03, loss="bce").generate(x, y)
    assert np.abs(bce - x_adv).max() > 0


def test_hand_built_estimator_trains_and_attacks_with_dicefocal(lesions):
    torch.manual_seed(0)
    model = build_model("seg", default_model_config("seg", None, in_channels=1, classes=1))
    x, y = lesions
    est = SegEstimator(model, x.shape[1:])
    training = SegmentationFGSM(est, eps=0.03, loss="training").generate(x, y)
    dicefocal = SegmentationFGSM(est, eps=0.03, loss="dicefocal").generate(x, y)
    bce = SegmentationFGSM(est, eps=0.03, loss="bce").generate(x, y)
    np.testing.assert_array_equal(training, dicefocal)
    assert np.abs(training - bce).max() > 0


@pytest.mark.parametrize("loss", ["dice", "dicefocal", "training"])
def test_empty_targets_are_attacked_and_counted(seg, synth_dir, loss):
    x, y = defend.load_arrays(synth_dir, "seg", "test", None)
    empty = ~y.reshape(len(y), -1).any(1)
    assert empty.sum() >= 2
    xe, ye = x[empty][:3], y[empty][:3]
    attack = SegmentationFGSM(seg, eps=0.03, loss=loss)
    x_adv = attack.generate(
        np.concatenate([xe, x[~empty][:1]]), np.concatenate([ye, y[~empty][:1]])
    )
    r = attack.report
    np.testing.assert_array_equal(r["empty_target"], [1] * len(xe) + [0])
    assert np.all(np.abs(x_adv[: len(xe)] - xe).reshape(len(xe), -1).max(1) > 0)
    assert np.all(r["loss_adv"] > r["loss_clean"])
    assert np.all(np.isnan(r["dice_clean"][: len(xe)]))  # Dice is scored on non-empty masks
    assert np.all(np.isfinite(r["false_fg_adv"][: len(xe)]))


def test_fgsm_honours_step(seg, lesions):
    x, y = lesions
    x_adv = SegmentationFGSM(seg, eps=0.04, step=0.5, loss="bce").generate(x, y)
    np.testing.assert_allclose(np.abs(x_adv - x).max(), 0.02, rtol=1e-5)


def test_dice_diff_is_nan_not_inf_when_clean_dice_is_zero(seg):
    """A clean Dice of 0 has no relative drop: NaN, never -inf (the attack made it better)."""
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    clean = torch.full_like(target, -50.0)  # predicts nothing: Dice 0
    adv = torch.where(target > 0, 50.0, -50.0)  # predicts the mask: Dice 1
    scores = SegmentationFGSM(seg)._scores(clean, adv, target)
    np.testing.assert_array_equal(scores["dice_clean"].numpy(), 0)
    np.testing.assert_array_equal(scores["dice_adv"].numpy(), 1)
    assert torch.isnan(scores["dice_diff"]).all()
