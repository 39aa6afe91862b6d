"""DGDE: black-box few-pixel attack against a trained classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import defend
from defend.attacks import DGDE
from defend.errors import DefendError


@pytest.fixture(scope="module")
def classifier(cls_ckpt):
    return defend.load_estimator(cls_ckpt)


@pytest.fixture(scope="module")
def images(synth_dir, classifier):
    x, y = defend.load_arrays(synth_dir, "cls", "train", None)  # more images than test
    correct = np.flatnonzero(classifier.predict(x).argmax(1) == y)
    pick = np.concatenate([correct[y[correct] == label][:3] for label in (0, 1)])
    return x[pick], y[pick]


@pytest.fixture(scope="module")
def attacked(classifier, images):
    x, y = images
    attack = DGDE(classifier, population=12, max_iter=80, patience=30, max_queries=1500)
    return attack, attack.generate(x, y)


def test_flips_labels_with_few_pixels(classifier, images, attacked):
    x, y = images
    attack, x_adv = attacked
    r = attack.report
    success = r["success"].astype(bool)
    assert success.mean() >= 0.5, r
    assert r["noise_success"].mean() >= success.mean()  # DE starts from the noise's success
    # the classifier really changes its mind on the successes, and only there
    flipped = classifier.predict(x_adv).argmax(1) != y
    np.testing.assert_array_equal(flipped, success)
    # differential evolution removed most of the random noise's pixels
    assert np.all(r["pixels"][success] < r["pixels_initial"][success])
    assert np.all(r["p_true"][success] < 0.5)  # binary task
    # the report counts the pixels that differ, and the budget holds
    changed = (np.abs(x_adv - x).max(1) > 0).reshape(len(x), -1).sum(1)
    np.testing.assert_array_equal(changed[success], r["pixels"][success])
    np.testing.assert_array_equal(x_adv[~success], x[~success])
    assert np.all(r["queries"] <= 1500)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_black_box_numpy_path_gives_the_same_result(classifier, images):
    """Only predicted probabilities are used: a numpy-only predict gives the same answer."""

    class BlackBox:
        def __init__(self, inner):
            self.inner = inner
            self.clip_values = inner.clip_values

        def predict(self, x):
            return self.inner.predict(x)

    x, y = images[0][:2], images[1][:2]
    params = dict(population=8, max_iter=15, max_queries=500)
    white = DGDE(classifier, **params).generate(x, y)
    black = DGDE(classifier, **params)
    black._estimator = BlackBox(classifier)
    np.testing.assert_allclose(black.generate(x, y), white, atol=1e-6)


def test_uniform_noise_as_the_seed(classifier, images):
    x, y = images
    attack = DGDE(classifier, noise="uniform", population=8, max_iter=30, max_queries=600)
    x_adv = attack.generate(x[:2], y[:2])
    r = attack.report
    ok = r["success"].astype(bool)
    assert np.all(r["pixels"][ok] < r["pixels_initial"][ok])
    assert np.all((classifier.predict(x_adv[:2]).argmax(1) != y[:2]) == ok)


def test_same_seed_same_result(classifier, images):
    x, y = images
    a = DGDE(classifier, population=8, max_iter=20, seed=5).generate(x[:2], y[:2])
    b = DGDE(classifier, population=8, max_iter=20, seed=5).generate(x[:2], y[:2])
    np.testing.assert_array_equal(a, b)


def test_torch_in_torch_out_and_labels_from_predictions(classifier, images):
    x, _ = images
    x_adv = DGDE(classifier, population=8, max_iter=5).generate(torch.as_tensor(x[:2]))
    assert torch.is_tensor(x_adv)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"population": 3}, "population"),
        ({"max_queries": 0}, "budget"),
        ({"F": 0}, "F must"),
        ({"CR": 1.5}, "CR must"),
        ({"noise_max": 0}, "noise_max"),
        ({"noise": "gauss"}, "noise must"),
    ],
)
def test_invalid_parameters(classifier, params, message):
    with pytest.raises(DefendError, match=message):
        DGDE(classifier, **params)
