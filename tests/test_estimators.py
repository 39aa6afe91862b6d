"""Estimators: numpy/torch paths, gradients, ART attacks and traps, checkpoints."""

from __future__ import annotations

import warnings

import fastmri
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainer
from art.estimators.classification import PyTorchClassifier
from fastmri.data.subsample import EquispacedMaskFractionFunc
from segmentation_models_pytorch.losses import DiceLoss

from defend.data import load_arrays
from defend.errors import CheckpointError
from defend.estimators import (
    ReconEstimator,
    SegEstimator,
    TorchEstimator,
    load_estimator,
    make_classifier,
)
from defend.estimators.torch_estimator import ZERO_GRADIENT_WARNING
from defend.io import save_checkpoint
from defend.models import build_model, default_model_config, zero_filled

COILS, SIZE, BATCH = 2, 32, 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def column_mask(width: int = SIZE) -> torch.Tensor:
    """fastMRI's 4x equispaced mask (8 % centre, seed 0), a dataset sample's (1, 1, W, 1)."""
    mask, _ = EquispacedMaskFractionFunc([0.08], [4])((COILS, SIZE, width, 2), seed=0)
    return mask.bool()


@pytest.fixture(scope="module")
def recon_data() -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Masked k-space (B, coils, H, W, 2) at raw fastMRI scale, rss targets (B, H, W), mask."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    phantom = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).float()
    images = 0.1 + phantom * (1 + 0.3 * torch.rand(BATCH, 1, SIZE, SIZE, generator=gen))
    coils = torch.stack([torch.exp(-((xx - c) ** 2)) for c in (-0.8, 0.8)])  # (coils, H, W)
    phase = 0.5 * xx + 0.3 * yy  # a smooth phase, so coil images are complex
    coil_images = torch.stack([images * coils * phase.cos(), images * coils * phase.sin()], -1)
    full = fastmri.fft2c(coil_images) * 1e-4  # (B, coils, H, W, 2)
    mask = column_mask()
    x = (full * mask).numpy().astype(np.float32)
    y = zero_filled(full).numpy().astype(np.float32)
    return x, y, mask


@pytest.fixture(scope="module")
def seg_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 1, SIZE, SIZE), dtype=np.float32)
    y = (rng.random((BATCH, 2, SIZE, SIZE)) > 0.5).astype(np.float32)
    return x, y


def recon_estimator(name: str, mask: torch.Tensor, device: str = "cpu") -> ReconEstimator:
    torch.manual_seed(0)
    model = build_model("recon", {"name": name})
    return ReconEstimator(model, mask, (COILS, SIZE, SIZE, 2), device=device)


def seg_estimator(device: str = "cpu", **kwargs) -> SegEstimator:
    torch.manual_seed(0)
    model = build_model("seg", default_model_config("seg", in_channels=1, classes=2))
    return SegEstimator(model, (1, SIZE, SIZE), device=device, **kwargs)


@pytest.fixture(scope="module", params=["unet", "varnet"])
def recon(request, recon_data):
    return recon_estimator(request.param, recon_data[2])


@pytest.fixture(scope="module")
def seg():
    return seg_estimator()


@pytest.fixture(params=["recon-unet", "recon-varnet", "seg"])
def any_case(request, recon_data, seg_data):
    """(estimator, x, y) for each of our estimators."""
    if request.param == "seg":
        return (seg_estimator(), *seg_data)
    x, y, mask = recon_data
    return recon_estimator(request.param.split("-")[1], mask), x, y


# ----------------------------------------------------------------------------- numpy / torch


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_in_numpy_out_torch_in_torch_out(device, recon_data, seg_data):
    x, y, mask = recon_data
    for est, xs, ys, out_shape in (
        (recon_estimator("unet", mask, device), x, y, (BATCH, SIZE, SIZE)),
        (seg_estimator(device), *seg_data, (BATCH, 2, SIZE, SIZE)),
    ):
        assert est.device == torch.device(device)
        pred = est.predict(xs, batch_size=2)
        assert isinstance(pred, np.ndarray) and pred.dtype == np.float32
        assert pred.shape == out_shape
        xt, yt = torch.from_numpy(xs).to(device), torch.from_numpy(ys).to(device)
        # the same batches: CPU convolutions pick kernels by batch size, which round apart
        # (measured 2e-6 on the 32 px seg output between batches of 2 and 3 on an AMD EPYC)
        pred_t = est.predict(xt, batch_size=2)
        assert torch.is_tensor(pred_t) and pred_t.device.type == device
        np.testing.assert_allclose(pred_t.cpu().numpy(), pred, rtol=1e-4, atol=1e-6)
        whole = est.predict(xt).cpu().numpy()  # one batch of 3
        np.testing.assert_allclose(whole, pred, rtol=1e-4, atol=1e-5)

        grad = est.loss_gradient(xs, ys)
        assert isinstance(grad, np.ndarray) and grad.dtype == np.float32
        assert grad.shape == xs.shape
        grad_t = est.loss_gradient(xt, ys)  # numpy targets with a tensor input are fine
        assert torch.is_tensor(grad_t) and grad_t.device.type == device
        assert grad_t.shape == xt.shape and not grad_t.requires_grad
        scale = np.abs(grad).max()
        np.testing.assert_allclose(grad_t.cpu().numpy(), grad, rtol=1e-3, atol=1e-6 * scale)

        loss = est.compute_loss(xs, ys)
        assert isinstance(loss, np.ndarray) and loss.shape == ()
        assert torch.is_tensor(est.compute_loss(xt, yt, reduction="none"))
        per_sample = est.compute_loss(xs, ys, reduction="none", batch_size=2)
        assert per_sample.shape == (BATCH,)
        np.testing.assert_allclose(per_sample.mean(), loss, rtol=1e-5)
        total = est.compute_loss(xs, ys, reduction="sum")
        np.testing.assert_allclose(total, per_sample.sum(), rtol=1e-5)
        assert not est.model.training


def test_recon_unsampled_kspace_has_zero_gradient(recon, recon_data):
    x, y, mask = recon_data
    grad = recon.loss_gradient(x, y)
    sampled = mask.reshape(-1).numpy()
    assert np.all(grad[..., ~sampled, :] == 0.0)
    assert np.abs(grad[..., sampled, :]).max() > 0.0
    assert recon.mask.shape == (1, 1, 1, SIZE, 1) and recon.mask.dtype == torch.bool
    assert recon.clip_values is None


def test_loss_gradient_matches_finite_differences(any_case):
    est, x, y = any_case
    grad = est.loss_gradient(x, y).astype(np.float64)
    g_norm = np.linalg.norm(grad)
    rng = np.random.default_rng(1)
    direction = grad / g_norm + 0.5 * (r := rng.standard_normal(x.shape)) / np.linalg.norm(r)
    if isinstance(est, ReconEstimator):  # keep the direction in the sampled k-space
        direction = direction * est.mask.cpu().numpy().reshape(1, 1, 1, SIZE, 1)
    direction /= np.linalg.norm(direction)
    loss = float(est.compute_loss(x, y, reduction="sum"))
    step = 1e-3 * loss / g_norm  # small: the models are only piecewise smooth (LeakyReLU)
    plus = est.compute_loss((x + step * direction).astype(np.float32), y, reduction="sum")
    minus = est.compute_loss((x - step * direction).astype(np.float32), y, reduction="sum")
    numeric = (float(plus) - float(minus)) / (2 * step)
    analytic = float((grad * direction).sum())
    assert numeric == pytest.approx(analytic, rel=0.03)


def test_per_sample_gradients_do_not_depend_on_the_batch(any_case):
    est, x, y = any_case
    alone = est.loss_gradient(x[:1], y[:1])
    batched = est.loss_gradient(x, y)
    np.testing.assert_allclose(batched[:1], alone, rtol=1e-3, atol=1e-5 * np.abs(alone).max())


def test_seg_scalar_callable_loss_has_sum_semantics(seg, seg_data):
    x, y = seg_data
    # a scalar batch-mean BCE, multiplied by B, is the sum of the per-sample BCEs
    mean_bce = SegEstimator(seg.model, seg.input_shape, loss=F.binary_cross_entropy_with_logits)
    expected = SegEstimator(seg.model, seg.input_shape, loss="bce").loss_gradient(x, y)
    np.testing.assert_allclose(mean_bce.loss_gradient(x, y), expected, rtol=1e-4, atol=1e-9)
    dice = SegEstimator(seg.model, seg.input_shape, loss=DiceLoss("multilabel", from_logits=True))
    grad = dice.loss_gradient(x, y)
    assert grad.shape == x.shape and np.abs(grad).max() > 0
    assert dice.compute_loss(x, y, reduction="none").shape == (BATCH,)


# ----------------------------------------------------------------------------- ART attacks


def _eps(est, x: np.ndarray, norm) -> float:
    if isinstance(est, ReconEstimator):  # k-space is unbounded: eps relative to its scale
        if norm == "inf":
            return float(0.02 * np.abs(x).max())
        return float(0.02 * np.linalg.norm(x.reshape(len(x), -1), axis=1).min())
    return 0.03 if norm == "inf" else 1.0


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("attack", ["fgm", "pgd"])
def test_art_attacks_run_against_our_estimators(any_case, attack, norm):
    est, x, y = any_case
    eps = _eps(est, x, norm)
    if attack == "fgm":
        art_attack = FastGradientMethod(est, norm=norm, eps=eps, batch_size=2)
    else:
        art_attack = ProjectedGradientDescent(
            est,
            norm=norm,
            eps=eps,
            eps_step=eps / 3,
            max_iter=4,
            num_random_init=0,
            batch_size=2,
            verbose=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither trap warning fires when y is given
        adv = art_attack.generate(x, y=y)
    assert adv.shape == x.shape and adv.dtype == np.float32
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    if norm == "inf":
        assert np.abs(delta).max() <= eps * (1 + 1e-5)
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5)
    assert np.abs(delta).max() > 0
    if isinstance(est, ReconEstimator):
        sampled = est.mask.cpu().numpy().reshape(-1)
        assert np.all(adv[..., ~sampled, :] == x[..., ~sampled, :])
    else:
        assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert not np.allclose(est.predict(adv), est.predict(x))
    assert est.compute_loss(adv, y) > est.compute_loss(x, y)


@pytest.mark.parametrize("norm", ["inf", 2])
def test_art_attacks_run_against_the_classifier(norm):
    torch.manual_seed(0)
    model = build_model("cls", default_model_config("cls", in_channels=1, num_classes=2))
    clf = make_classifier(model, (1, SIZE, SIZE), 2)
    assert isinstance(clf, PyTorchClassifier) and clf.nb_classes == 2
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, SIZE, SIZE), dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    eps = 0.03 if norm == "inf" else 1.0

    def ce(adv: np.ndarray) -> float:
        logits = torch.from_numpy(clf.predict(adv))
        return float(F.cross_entropy(logits, torch.from_numpy(y)))

    for attack in (
        FastGradientMethod(clf, norm=norm, eps=eps),
        ProjectedGradientDescent(
            clf, norm=norm, eps=eps, eps_step=eps / 3, max_iter=4, verbose=False
        ),
    ):
        adv = attack.generate(x, y=y)
        assert adv.shape == x.shape and adv.min() >= 0.0 and adv.max() <= 1.0
        assert not np.allclose(clf.predict(adv), clf.predict(x))
        assert ce(adv) > ce(x)


def test_y_none_trap_warns_and_returns_x_unchanged(recon, recon_data):
    """With y=None, ART uses predict(x) as the target: a distance loss has zero gradient."""
    x, _, _ = recon_data
    with pytest.warns(RuntimeWarning, match="y=None"):
        grad = recon.loss_gradient(x, recon.predict(x))
    assert not grad.any()
    eps = _eps(recon, x, "inf")
    for attack in (
        FastGradientMethod(recon, eps=eps),
        ProjectedGradientDescent(recon, eps=eps, eps_step=eps / 3, max_iter=2, verbose=False),
    ):
        with pytest.warns(RuntimeWarning, match="pass the ground truth"):
            adv = attack.generate(x)
        np.testing.assert_array_equal(adv, x)
    assert ZERO_GRADIENT_WARNING.count("\n") == 0


def test_seg_warns_when_targets_are_logits(seg, seg_data):
    x, _ = seg_data
    with pytest.warns(RuntimeWarning, match="not masks"):
        FastGradientMethod(seg, eps=0.03).generate(x)  # y=None: ART passes logits as y


# ----------------------------------------------------------------------------- ART plumbing


def test_params_set_params_and_clone_for_refitting(recon_data):
    x, y, mask = recon_data
    est = recon_estimator("unet", mask)
    params = est.get_params()
    assert set(params) == set(est.estimator_params)
    assert params["preprocessing"] is None and params["clip_values"] is None
    assert params["input_shape"] == (COILS, SIZE, SIZE, 2) and params["loss_function"] == "mse"
    del params["model"]
    est.set_params(**{**params, "loss_function": "l1", "mask": mask.numpy()})
    assert est.loss_function == "l1" and torch.equal(est.mask.reshape(-1), mask.reshape(-1))
    with pytest.raises(ValueError, match="preprocessing"):
        est.set_params(preprocessing=(0.0, 1.0))
    est.set_params(preprocessing=None)

    clone = est.clone_for_refitting()
    assert type(clone) is ReconEstimator and clone.model is not est.model
    assert torch.equal(clone.mask, est.mask) and clone.loss_function == "l1"
    before = est.model.unet.conv.layers[0].weight
    after = clone.model.unet.conv.layers[0].weight
    assert not torch.equal(before, after)
    assert clone.predict(x).shape == (BATCH, SIZE, SIZE)

    seg = seg_estimator()
    params = seg.get_params()
    assert np.allclose(params["clip_values"], (0.0, 1.0))
    del params["model"]
    seg.set_params(**params)
    assert isinstance(seg, TorchEstimator)


def test_fit_and_art_adversarial_trainer(recon_data, seg_data):
    x, y = seg_data
    est = seg_estimator()
    before = [p.detach().clone() for p in est.model.parameters()]
    est.fit(x, y, batch_size=2, nb_epochs=1, learning_rate=1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(before, est.model.parameters(), strict=True))
    assert not est.model.training
    trainer = AdversarialTrainer(est, FastGradientMethod(est, eps=0.03), ratio=0.5)
    trainer.fit(x, y, batch_size=3, nb_epochs=1)

    kx, ky, mask = recon_data
    recon = recon_estimator("unet", mask)
    eps = _eps(recon, kx, "inf")
    attack = ProjectedGradientDescent(recon, eps=eps, eps_step=eps / 2, max_iter=2, verbose=False)
    loss_before = recon.compute_loss(kx, ky)
    AdversarialTrainer(recon, attack, ratio=1.0).fit(kx, ky, batch_size=3, nb_epochs=2)
    assert recon.compute_loss(kx, ky) != loss_before
    recon.fit(torch.from_numpy(kx), torch.from_numpy(ky), batch_size=3)  # torch inputs too


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint(task: str, model, model_config: dict, data: dict) -> dict:
    return {
        "task": task,
        "model_config": model_config,
        "state_dict": model.state_dict(),
        "data": data,
        "epoch": 1,
    }


def test_load_estimator_seg_and_cls_round_trip(tmp_path, seg_data):
    x, _ = seg_data
    torch.manual_seed(0)
    seg_config = default_model_config("seg", in_channels=1, classes=2)
    seg_model = build_model("seg", seg_config).eval()
    ckpt = _checkpoint("seg", seg_model, seg_config, {"input_shape": [1, SIZE, SIZE], "classes": 2})
    path = save_checkpoint(tmp_path / "seg.pt", ckpt)
    for source in (path, str(path), ckpt):
        est = load_estimator(source, device="cpu")
        assert isinstance(est, SegEstimator) and not est.model.training
        assert est.input_shape == (1, SIZE, SIZE)
        with torch.no_grad():
            expected = seg_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(est.predict(x), expected, rtol=1e-5, atol=1e-6)

    cls_config = default_model_config("cls", in_channels=1, num_classes=3)
    cls_model = build_model("cls", cls_config).eval()
    data = {"input_shape": [1, SIZE, SIZE], "classes": ["a", "b", "c"]}
    path = save_checkpoint(tmp_path / "cls.pt", _checkpoint("cls", cls_model, cls_config, data))
    clf = load_estimator(path)
    assert isinstance(clf, PyTorchClassifier) and clf.nb_classes == 3
    with torch.no_grad():
        expected = cls_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(clf.predict(x), expected, rtol=1e-5, atol=1e-6)

    wrong = {**cls_config, "name": "resnet34"}
    bad = save_checkpoint(tmp_path / "bad.pt", _checkpoint("cls", cls_model, wrong, data))
    with pytest.raises(CheckpointError) as info:
        load_estimator(bad)
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="lacks data"):
        load_estimator({k: v for k, v in ckpt.items() if k != "data"})


@pytest.mark.parametrize("name", ["unet", "varnet"])
def test_load_estimator_recon_round_trip(tmp_path, name, recon_data):
    acquisition_module = pytest.importorskip("defend.data.acquisition")
    acquisition = acquisition_module.Acquisition("equispaced_fraction", 0.08, 4, 0)
    x, y, _ = recon_data
    torch.manual_seed(0)
    info = {"input_shape": [COILS, SIZE, SIZE, 2], "target_shape": [SIZE, SIZE]}
    config = default_model_config("recon", name, **info)
    model = build_model("recon", config).eval()
    data = {**info, "acquisition": acquisition.to_dict()}
    path = save_checkpoint(tmp_path / "recon.pt", _checkpoint("recon", model, config, data))
    est = load_estimator(path, device="cpu")
    assert isinstance(est, ReconEstimator)
    mask = acquisition.eval_mask(SIZE)
    assert torch.equal(est.mask.reshape(-1), mask.reshape(-1))
    with torch.no_grad():
        expected = model(torch.from_numpy(x), mask.unsqueeze(0)).numpy()
    np.testing.assert_allclose(est.predict(x), expected, rtol=1e-5, atol=1e-9)
    assert est.loss_gradient(x, y).shape == x.shape


def test_art_adversarial_trainer_trains_the_classification_estimator(cls_ckpt, synth_dir):
    """ART users keep their scripts: ART's own Madry PGD trainer trains defend's estimator."""
    from art.defences.trainer import AdversarialTrainerMadryPGD

    est = load_estimator(cls_ckpt, device="cpu")
    x, y = load_arrays(synth_dir, "cls", "train", 16, checkpoint=cls_ckpt)
    before = {k: v.clone() for k, v in est.model.state_dict().items()}
    trainer = AdversarialTrainerMadryPGD(
        est, nb_epochs=1, batch_size=8, eps=0.03, eps_step=0.01, max_iter=2
    )
    trainer.fit(x, y)
    after = est.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved
    logits = trainer.get_classifier().predict(x)
    assert logits.shape == (len(x), 2) and np.isfinite(logits).all()
