"""HallucinationAttack against trained U-Net and VarNet reconstruction estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

import defend
from defend.attacks import HallucinationAttack, region_mask
from defend.data import Acquisition
from defend.errors import DefendError
from defend.io import load_checkpoint


@pytest.fixture(scope="module")
def unet(unet_ckpt):
    return defend.load_estimator(unet_ckpt)


@pytest.fixture(scope="module")
def kspace(synth_dir, unet_ckpt):
    acquisition = Acquisition.from_dict(load_checkpoint(unet_ckpt)["data"]["acquisition"])
    x, _ = defend.load_arrays(synth_dir, "recon", "test", 4, acquisition=acquisition)
    return x


def objective(est, x, x_adv, attack):
    """The attack's own loss, recomputed from the outside: lower is better."""
    y0 = est.predict(x)
    y = est.predict(x_adv)
    m = region_mask(y0.shape[-2:], attack.region, attack.region_size).numpy()
    rng = (y0.max((1, 2)) - y0.min((1, 2)))[:, None, None]
    target = y0 + attack.alpha * rng * m
    return ((y - target) ** 2 * m).sum((1, 2)) / m.sum() + ((y - y0) ** 2 * (1 - m)).sum((1, 2)) / (
        1 - m
    ).sum()


def test_attack_hallucinates_in_region_within_budget(unet, kspace):
    attack = HallucinationAttack(unet, eps=0.05, max_iter=40, patience=0)
    x_adv = attack.generate(kspace)
    r = attack.report
    # the attack lowers its own objective and moves the region towards the target
    assert np.all(objective(unet, kspace, x_adv, attack) < objective(unet, kspace, kspace, attack))
    assert np.all(r["strength"] > 0.2), r["strength"]
    assert np.all(r["error_outside"] < r["strength"])
    # budget: l-inf relative to each sample's max |k|; real part only; sampled entries only
    assert np.all(r["linf_rel"] <= 0.05 * (1 + 1e-5))
    delta = x_adv - kspace
    np.testing.assert_array_equal(delta[..., 1], 0)
    unsampled = ~unet.mask.cpu().numpy().reshape(-1)
    np.testing.assert_array_equal(delta[..., unsampled, :], 0)
    for key in (
        "recon_psnr",
        "recon_ssim",
        "recon_nrmse",
        "input_psnr",
        "input_region_ssim",
        "recon_region_psnr",
        "l2_rel",
        "l2_rel_coil_max",
        "iterations",
        "input_strength",
    ):
        assert key in r and np.all(np.isfinite(r[key])), key


class ZeroFilled(torch.nn.Module):
    """A "reconstruction" that returns the zero-filled image: it shows what was measured."""

    def __init__(self, crop):
        super().__init__()
        self.crop = crop

    def forward(self, kspace, mask):
        from defend.kspace import zero_filled

        return zero_filled(kspace * mask, self.crop)


def test_input_strength_is_what_a_faithful_reconstruction_shows(unet, kspace):
    """input_strength measures the feature in the attacked zero-filled input, in the units
    of strength: recomputed from the outside for the U-Net, and equal to the strength for a
    model that returns its zero-filled input."""
    from defend.estimators import ReconEstimator
    from defend.kspace import zero_filled

    attack = HallucinationAttack(unet, eps=0.05, max_iter=10, patience=0)
    x_adv = attack.generate(kspace)
    y0 = unet.predict(kspace)
    crop = tuple(y0.shape[-2:])
    mask = unet.mask.cpu().float()
    zf, zf_adv = (zero_filled(torch.as_tensor(k) * mask, crop).numpy() for k in (kspace, x_adv))
    m = region_mask(crop, attack.region, attack.region_size).numpy()
    value_range = y0.max((1, 2)) - y0.min((1, 2))
    expected = ((zf_adv - zf) * m).sum((1, 2)) / m.sum() / (attack.alpha * value_range)
    np.testing.assert_allclose(attack.report["input_strength"], expected, rtol=1e-4, atol=1e-5)

    faithful = ReconEstimator(ZeroFilled(crop), unet.mask, kspace.shape[1:], device="cpu")
    attack = HallucinationAttack(faithful, eps=0.05, max_iter=20, patience=0)
    attack.generate(kspace)
    r = attack.report
    assert np.all(r["strength"] > 0.2), r["strength"]
    np.testing.assert_allclose(r["input_strength"], r["strength"], rtol=1e-4, atol=1e-5)
    # a faithful model adds nothing: success is judged on the net strength, not the raw one
    np.testing.assert_allclose(r["net_strength"], 0, atol=1e-5)
    assert not r["success"].any()


def test_l2_budget_per_coil_and_complex_part(unet, kspace):
    attack = HallucinationAttack(unet, eps=0.02, norm="2", part="complex", step=0.2, max_iter=15)
    x_adv = attack.generate(kspace)
    assert np.all(attack.report["l2_rel_coil_max"] <= 0.02 * (1 + 1e-4))
    assert np.abs((x_adv - kspace)[..., 1]).max() > 0  # the imaginary part moved too
    assert np.all(attack.report["strength"] > 0)


def test_varnet_is_attacked_too(varnet_ckpt, synth_dir):
    est = defend.load_estimator(varnet_ckpt)
    x, _ = defend.load_arrays(synth_dir, "recon", "test", 2)
    attack = HallucinationAttack(est, eps=0.05, max_iter=10, patience=0)
    x_adv = attack.generate(x)
    assert np.all(objective(est, x, x_adv, attack) < objective(est, x, x, attack))
    assert np.all(attack.report["strength"] > 0)


def test_same_seed_same_result_and_batching(unet, kspace):
    a = HallucinationAttack(unet, eps=0.03, max_iter=8, seed=3).generate(kspace)
    b = HallucinationAttack(unet, eps=0.03, max_iter=8, seed=3).generate(kspace)
    np.testing.assert_array_equal(a, b)
    one = HallucinationAttack(unet, eps=0.03, max_iter=8, random_start=False, batch_size=1)
    four = HallucinationAttack(unet, eps=0.03, max_iter=8, random_start=False, batch_size=4)
    np.testing.assert_allclose(one.generate(kspace), four.generate(kspace), rtol=0, atol=1e-6)


def test_torch_in_torch_out(unet, kspace):
    x = torch.as_tensor(kspace)
    x_adv = HallucinationAttack(unet, eps=0.03, max_iter=3).generate(x)
    assert torch.is_tensor(x_adv) and x_adv.shape == x.shape


def test_early_stopping_and_best_iterate(unet, kspace):
    attack = HallucinationAttack(unet, eps=0.05, step=0.5, max_iter=60, patience=2)
    x_adv = attack.generate(kspace)
    assert attack.report["iterations"].max() < 60
    # the returned iterate is the best one seen: its loss is what the report says
    assert np.all(objective(unet, kspace, x_adv, attack) <= attack.report["loss"] * (1 + 1e-3))


class ForeignEstimator(LossGradientsMixin, BaseEstimator):
    """An estimator offering only ART's numpy predict / MSE loss_gradient (no torch access)."""

    estimator_params = BaseEstimator.estimator_params

    def __init__(self, inner):
        super().__init__(model=None, clip_values=None)
        self.inner = inner

    @property
    def input_shape(self):
        return self.inner.input_shape

    def predict(self, x, **kwargs):
        return self.inner.predict(x)

    def loss_gradient(self, x, y, **kwargs):
        return self.inner.loss_gradient(x, y)

    def fit(self, x, y, **kwargs):
        raise NotImplementedError


def test_any_art_estimator_with_loss_gradients(unet, kspace):
    """Through predict + loss_gradient the step direction equals the direct autograd one."""
    params = dict(eps=0.03, max_iter=5, random_start=False, patience=0)
    direct = HallucinationAttack(unet, **params).generate(kspace)
    foreign = HallucinationAttack(ForeignEstimator(unet), **params)
    x_adv = foreign.generate(kspace)
    np.testing.assert_allclose(x_adv, direct, rtol=0, atol=1e-6)
    assert np.all(foreign.report["strength"] > 0)


def test_region_mask_image(unet, kspace):
    mask = np.zeros((32, 32), bool)
    mask[5:9, 20:26] = True
    attack = HallucinationAttack(unet, eps=0.05, max_iter=10, region_mask=mask)
    attack.generate(kspace[:2])
    assert np.all(attack.report["strength"] > 0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": -1.0}, "eps must be a finite number > 0"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"eps": float("inf")}, "eps must be a finite number > 0"),
        ({"eps": float("nan")}, "eps must be a finite number > 0"),
        ({"eps": 1e9}, "relative to the k-space norm and must be <= 1"),
        ({"eps": float("inf"), "eps_mode": "absolute"}, "eps must be a finite number > 0"),
        ({"step": float("inf")}, "step must be a finite number > 0"),
        ({"alpha": float("inf")}, "alpha must be finite and non-zero"),
        ({"alpha": float("nan")}, "alpha must be finite and non-zero"),
        ({"weight_inside": float("inf")}, "weight_inside must be a finite number >= 0"),
        ({"weight_outside": float("nan")}, "weight_outside must be a finite number >= 0"),
        ({"max_iter": 0}, "max_iter"),
        ({"norm": "1"}, "norm"),
        ({"eps_mode": "percent"}, "eps_mode"),
        ({"part": "imag"}, "part"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_invalid_parameters(unet, params, message):
    with pytest.raises(DefendError, match=message):
        HallucinationAttack(unet, **params)


def test_invalid_regions(unet, kspace):
    with pytest.raises(DefendError, match="outside"):
        HallucinationAttack(unet, region_size=(4, 40)).generate(kspace[:1])
    with pytest.raises(DefendError, match="outside"):
        HallucinationAttack(unet, region_center=(1, 1), region_size=4).generate(kspace[:1])
    with pytest.raises(DefendError, match="empty"):
        HallucinationAttack(unet, region_mask=np.zeros((32, 32))).generate(kspace[:1])
    with pytest.raises(DefendError, match="reconstruction is"):
        HallucinationAttack(unet, region_mask=np.ones((8, 8))).generate(kspace[:1])
    with pytest.raises(DefendError, match="region must be line, square or disk"):
        HallucinationAttack(unet, region="circle").generate(kspace[:1])
