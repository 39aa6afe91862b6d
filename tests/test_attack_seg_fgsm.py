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
        ({"loss": "mse"}, "unknown loss"),
        ({"target": "other"}, "target"),
        ({"max_iter": 0}, "max_iter"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_parameters(seg, params, message):
    with pytest.raises(DefendError, match=message):
        SegmentationFGSM(seg, **params)
