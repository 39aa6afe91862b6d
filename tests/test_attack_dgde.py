"""DGDE: black-box few-pixel attack against a trained classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import BlackBoxClassifier

import defend
from defend.attacks import DGDE, torch_attack
from defend.attacks.torch_attack import SampleRNG
from defend.errors import DefendError

#: short searches: the tests are about behaviour, not strength
FAST = {"population": 8, "max_iter": 6, "patience": 2, "max_queries": 600, "noise_tries": 4}


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
    attack = DGDE(classifier, max_queries=1500)
    return attack, attack.generate(x, y)


def changed_pixels(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """Spatial pixels (any channel) that differ, per image (N,)."""
    return (np.abs(x_adv - x).max(1) > 0).reshape(len(x), -1).sum(1)


def test_flips_labels_with_few_pixels(classifier, images, attacked):
    x, y = images
    attack, x_adv = attacked
    r = attack.report
    success = r["success"].astype(bool)
    assert success.mean() >= 0.5, r
    assert np.all(r["clean_correct"] == 1)
    assert r["noise_success"].mean() >= success.mean()  # the search starts from the noise
    # the classifier really changes its mind on the successes, and only there
    flipped = classifier.predict(x_adv).argmax(1) != y
    np.testing.assert_array_equal(flipped, success)
    # every phase keeps a subset of the previous one's pixels, and prunes most of the noise
    ok = success
    assert np.all(r["pixels"][ok] <= r["pixels_de"][ok])
    assert np.all(r["pixels_de"][ok] <= r["pixels_initial"][ok])
    assert r["pixels"][ok].sum() < r["pixels_initial"][ok].sum()
    # the report counts the pixels that differ, and the budget holds
    np.testing.assert_array_equal(changed_pixels(x, x_adv)[ok], r["pixels"][ok])
    np.testing.assert_array_equal(x_adv[~ok], x[~ok])
    assert np.all(r["queries"] <= 1500)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pruned_to_single_pixels(classifier, images, attacked):
    """Pruning ends where removing any one remaining pixel undoes the flip."""
    x, y = images
    attack, x_adv = attacked
    for i in np.flatnonzero(attack.report["success"] == 1):
        changed = np.flatnonzero(np.abs(x_adv[i] - x[i]).max(0).reshape(-1) > 0)
        fewer = np.repeat(x_adv[i : i + 1], len(changed), 0)
        flat = fewer.reshape(len(changed), x.shape[1], -1)
        flat[np.arange(len(changed)), :, changed] = x[i].reshape(x.shape[1], -1)[:, changed].T
        assert np.all(classifier.predict(fewer).argmax(1) == y[i]), i


def test_queries_count_every_image_sent(classifier, images):
    x, y = images
    seen = []
    hook = classifier.model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        attack = DGDE(classifier, **FAST)
        attack.generate(x, y)
    finally:
        hook.remove()
    assert sum(seen) == attack.report["queries"].sum()
    parts = attack.report["queries_noise"] + attack.report["queries_de"]
    assert np.all(parts <= attack.report["queries"])


def test_images_misclassified_clean_are_left_alone(classifier, images):
    """Defect 3: success and pixels are over images the model gets right; the rest apart."""
    x, y = images
    wrong = np.array([1, 4])  # labels the model disagrees with: misclassified when clean
    y_bad = y.copy()
    y_bad[wrong] = 1 - y_bad[wrong]
    attack = DGDE(classifier, **FAST)
    x_adv = attack.generate(x, y_bad)
    r = attack.report
    right = np.setdiff1d(np.arange(len(x)), wrong)
    for key in ("success", "noise_success", "pixels", "pixels_pct"):
        assert np.all(np.isnan(r[key][wrong])), key
    np.testing.assert_array_equal(x_adv[wrong], x[wrong])
    np.testing.assert_array_equal(r["clean_correct"], np.isin(np.arange(len(x)), right))
    assert np.all(r["queries"][wrong] == 2)  # the clean and the final prediction only
    # means over the attacked images only, as the summaries take them (NaN-aware)
    assert np.all(np.isfinite(r["success"][right]))
    assert np.nanmean(r["success"]) == pytest.approx(r["success"][right].mean())
    ok = right[r["success"][right] == 1]
    assert len(ok) > 0
    assert np.nanmean(r["pixels"]) == pytest.approx(r["pixels"][ok].mean())
    # the attacked images get exactly what they get without the others
    alone = DGDE(classifier, **FAST)
    np.testing.assert_array_equal(alone.generate(x[right], y[right], indices=right), x_adv[right])


def assert_same_report(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Equal reports; probabilities up to float rounding (batch composition changes it)."""
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("p_true"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_size_and_shards_do_not_change_the_result(classifier, images):
    """Defect 4: each image draws from its own generator, seeded by (seed, the image)."""
    x, y = images
    n = len(x)
    whole = DGDE(classifier, **FAST, batch_size=n, seed=3)
    x_whole = whole.generate(x, y)
    one = DGDE(classifier, **FAST, batch_size=1, seed=3)
    np.testing.assert_array_equal(one.generate(x, y), x_whole)
    assert_same_report(one.report, whole.report)
    assert np.any(x_whole != x)  # something was attacked
    k = 2
    shard = DGDE(classifier, **FAST, batch_size=3, seed=3)
    np.testing.assert_array_equal(shard.generate(x[k:], y[k:], indices=range(k, n)), x_whole[k:])
    assert_same_report(shard.report, {key: v[k:] for key, v in whole.report.items()})
    # another seed, another search
    other = DGDE(classifier, **FAST, batch_size=n, seed=4)
    other.generate(x, y)
    assert not np.array_equal(other.report["queries"], whole.report["queries"])


def first_draws(monkeypatch, attack: DGDE, x: np.ndarray, **kwargs) -> torch.Tensor:
    """(N, 4) the first uniform numbers of each image's generator, in the order of ``x``,
    when ``attack`` attacks ``x`` (``kwargs``: generate's)."""
    made = []

    class Recorded(SampleRNG):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append([g.initial_seed() for g in self.generators])

    monkeypatch.setattr(torch_attack, "SampleRNG", Recorded)
    attack.generate(x, **kwargs)
    (seeds,) = made
    return torch.stack([torch.rand(4, generator=torch.Generator().manual_seed(s)) for s in seeds])


def test_draws_follow_the_image_not_its_position(classifier, images, monkeypatch):
    """Issue 31 item 9: two different images at the same index get different draws (before,
    both drew from (seed, 0)); an image gets the same draws at any batch position, batch size
    or index; another seed gives other draws for the same image."""
    x, y = images
    a, b = x[:1], x[3:4]
    alone_a = first_draws(monkeypatch, DGDE(classifier, **FAST), a, y=y[:1])
    alone_b = first_draws(monkeypatch, DGDE(classifier, **FAST), b, y=y[3:4])
    assert not torch.equal(alone_a, alone_b)  # index 0 both times
    for batch_size in (1, 2):
        attack = DGDE(classifier, **FAST, batch_size=batch_size)
        swapped = first_draws(monkeypatch, attack, np.r_[b, a], y=np.r_[y[3:4], y[:1]],
                              indices=[7, 9])  # fmt: skip
        assert torch.equal(swapped[0], alone_b[0]) and torch.equal(swapped[1], alone_a[0])
    other = first_draws(monkeypatch, DGDE(classifier, **FAST, seed=1), a, y=y[:1])
    assert not torch.equal(other, alone_a)
    # the end result too: the same images in another order are the same rows, swapped
    forward = DGDE(classifier, **FAST).generate(x[:2], y[:2])
    backward = DGDE(classifier, **FAST).generate(x[[1, 0]], y[[1, 0]])
    np.testing.assert_array_equal(backward[[1, 0]], forward)


def test_direct_and_black_box_paths_agree(classifier, images, monkeypatch):
    """Defect 8: the checkpoint classifier runs on torch tensors, a predict-only one via numpy."""
    x, y = images
    calls = {"art": 0, "black_box": 0}
    art_predict = classifier.predict

    def counted(*args, **kwargs):
        calls["art"] += 1
        return art_predict(*args, **kwargs)

    monkeypatch.setattr(classifier, "predict", counted)
    direct = DGDE(classifier, **FAST)
    x_direct = direct.generate(x, y)
    assert calls["art"] == 0  # the fast path never went through ART's numpy predict
    from defend.attacks.torch_attack import torch_forward  # the one place that decides

    assert torch_forward(classifier) is not None  # ART's identity standardisation is exact

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        calls["black_box"] += 1
        assert isinstance(batch, np.ndarray)
        return art_predict(batch)

    black_box = BlackBoxClassifier(predict_fn, x.shape[1:], 2, clip_values=(0.0, 1.0))
    assert torch_forward(black_box) is None
    numpy_path = DGDE(black_box, **FAST)
    np.testing.assert_allclose(numpy_path.generate(x, y), x_direct, atol=1e-6)
    assert calls["black_box"] > 0
    assert_same_report(numpy_path.report, direct.report)


def test_seed_without_pruning_and_uniform_noise(classifier, images):
    """The seed's algorithm: uniform noise on every pixel, then DE over its subsets only."""
    x, y = images
    params = {**FAST, "noise": "uniform", "prune": False, "max_iter": 20, "patience": 5}
    params["prune_groups"] = 8
    attack = DGDE(classifier, **params)
    x_adv = attack.generate(x[:2], y[:2])
    r = attack.report
    ok = r["success"] == 1
    assert np.all(r["prune_rounds"] == 0)
    np.testing.assert_array_equal(r["pixels"][ok], r["pixels_de"][ok])
    assert np.all(r["pixels"][ok] <= r["pixels_initial"][ok])
    assert np.all((classifier.predict(x_adv).argmax(1) != y[:2]) == ok)


def test_same_seed_same_result(classifier, images):
    x, y = images
    a = DGDE(classifier, **FAST, seed=5).generate(x[:2], y[:2])
    b = DGDE(classifier, **FAST, seed=5).generate(x[:2], y[:2])
    np.testing.assert_array_equal(a, b)


def test_torch_in_torch_out_and_labels_from_predictions(classifier, images):
    x, _ = images
    attack = DGDE(classifier, **FAST)
    x_adv = attack.generate(torch.as_tensor(x[:2]))
    assert torch.is_tensor(x_adv)
    assert np.all(attack.report["clean_correct"] == 1)  # its own predictions are right


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"population": 3}, "population"),
        ({"max_queries": 0}, "max_queries must be >= 1"),
        ({"F": 0}, "F must"),
        ({"CR": 1.5}, "CR must"),
        ({"noise_max": 0}, "noise_max"),
        ({"noise_min": 0}, "noise_min"),
        ({"noise": "gauss"}, "noise must"),
        ({"noise_blocks": (0, 2)}, "noise_blocks"),
        ({"max_iter": -1}, "max_iter"),
        ({"prune_groups": 1}, "prune_groups"),
    ],
)
def test_invalid_parameters(classifier, params, message):
    with pytest.raises(DefendError, match=message):
        DGDE(classifier, **params)
