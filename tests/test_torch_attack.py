"""The attack base: per-sample randomness, so results do not depend on batching or sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import defend
from defend.attacks import HallucinationAttack, SegmentationFGSM
from defend.attacks.torch_attack import SampleRNG, torch_forward


def test_sample_rng_draws_depend_only_on_seed_and_index():
    full = SampleRNG(3, [0, 1, 2, 3], torch.device("cpu"))
    a = full.rand((5,))
    part = SampleRNG(3, [2, 3], torch.device("cpu"))
    np.testing.assert_array_equal(part.rand((5,)).numpy(), a[2:].numpy())
    # drawing for some rows only leaves the others' sequences untouched
    again = SampleRNG(3, [0, 1, 2, 3], torch.device("cpu"))
    again.rand((5,), rows=[1])
    again.rand((5,), rows=[1])
    np.testing.assert_array_equal(again.rand((5,), rows=[0, 2]).numpy(), a[[0, 2]].numpy())
    assert not torch.equal(SampleRNG(4, [0], torch.device("cpu")).rand((5,))[0], a[0])


@pytest.fixture(scope="module")
def unet(unet_ckpt):
    return defend.load_estimator(unet_ckpt)


@pytest.fixture(scope="module")
def kspace(synth_dir, unet_ckpt):
    x, _ = defend.load_arrays(synth_dir, "recon", "test", 4, checkpoint=unet_ckpt)
    return x


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_hallucination_same_result_whatever_the_batching(unet, kspace, norm):
    params = dict(eps=0.02, norm=norm, max_iter=6, patience=2, seed=7)
    whole = HallucinationAttack(unet, batch_size=4, **params)
    x_whole = whole.generate(kspace)
    ones = HallucinationAttack(unet, batch_size=1, **params)
    np.testing.assert_allclose(ones.generate(kspace), x_whole, rtol=0, atol=1e-6)
    shard = HallucinationAttack(unet, batch_size=3, **params)
    np.testing.assert_allclose(
        shard.generate(kspace[1:], indices=[1, 2, 3]), x_whole[1:], rtol=0, atol=1e-6
    )
    for key in ("strength", "iterations", "loss"):
        np.testing.assert_allclose(ones.report[key], whole.report[key], rtol=1e-4, atol=1e-7)
    # another seed per call gives another random start
    assert np.abs(whole.generate(kspace, seed=8) - x_whole).max() > 0


def test_l2_random_start_is_one_step(unet, kspace):
    """With one iteration, the l2 attack ends within two steps of the clean input."""
    eps, step = 0.1, 0.1
    attack = HallucinationAttack(unet, eps=eps, norm="2", step=step, max_iter=1, patience=0)
    attack.generate(kspace)
    assert np.all(attack.report["l2_rel_coil_max"] <= 2 * step * eps * (1 + 1e-4))


def test_per_sample_regions_with_small_batches(unet, kspace):
    regions = np.zeros((4, 32, 32), bool)
    for i in range(4):
        regions[i, 4 + 5 * i : 7 + 5 * i, 10:20] = True
    params = dict(eps=0.02, max_iter=4, patience=0, region_mask=regions)
    small = HallucinationAttack(unet, batch_size=2, **params)
    x_small = small.generate(kspace)
    big = HallucinationAttack(unet, batch_size=4, **params)
    np.testing.assert_allclose(x_small, big.generate(kspace), atol=1e-6)
    np.testing.assert_allclose(small.report["strength"], big.report["strength"], rtol=1e-4)


def test_segmentation_pgd_same_result_whatever_the_batching(seg_ckpt, synth_dir):
    seg = defend.load_estimator(seg_ckpt)
    x, y = defend.load_arrays(synth_dir, "seg", "test", 5)
    params = dict(eps=0.03, max_iter=3, seed=2)
    whole = SegmentationFGSM(seg, batch_size=5, **params).generate(x, y)
    np.testing.assert_allclose(
        SegmentationFGSM(seg, batch_size=1, **params).generate(x, y), whole, atol=1e-6
    )
    np.testing.assert_allclose(
        SegmentationFGSM(seg, batch_size=2, **params).generate(x[2:], y[2:], indices=[2, 3, 4]),
        whole[2:],
        atol=1e-6,
    )


def test_torch_forward_decides_in_one_place(unet, cls_ckpt):
    assert torch_forward(unet) == unet.forward
    classifier = defend.load_estimator(cls_ckpt)
    forward = torch_forward(classifier)
    assert forward is not None  # ART's identity standardisation does not hide the model
    x = np.random.default_rng(0).random((2, *classifier.input_shape), dtype=np.float32)
    np.testing.assert_allclose(
        forward(torch.as_tensor(x)).detach().numpy(), classifier.predict(x), atol=1e-5
    )

    class BlackBox:
        model = classifier.model

        def predict(self, x):
            return classifier.predict(x)

    assert torch_forward(BlackBox()) is None


def test_per_sample_regions_must_match_the_samples(unet, kspace):
    regions = np.zeros((4, 32, 32), bool)
    regions[:, 14:17, 10:20] = True
    attack = HallucinationAttack(unet, eps=0.02, max_iter=2, region_mask=regions)
    with pytest.raises(defend.errors.DefendError, match="4 region masks for 2 samples"):
        attack.generate(kspace[2:], indices=[2, 3])


def test_model_mode_restores_each_submodule_own_mode():
    """A wrapper in training mode (a new nn.Module, as an ART wrapper or the EOT model is)
    around an eval-mode model: after an eval block the model is in eval mode again, not
    switched to training by the wrapper's recursive ``train(True)``."""
    from defend.device import model_mode

    inner = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    wrapper = torch.nn.Sequential(inner)
    assert wrapper.training and not inner.training
    with model_mode(wrapper, training=False):
        assert not any(m.training for m in wrapper.modules())
    assert wrapper.training and not any(m.training for m in inner.modules())
    with model_mode(wrapper, training=True):
        assert all(m.training for m in wrapper.modules())
    assert not inner[1].training
