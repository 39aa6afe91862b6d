"""Randomized smoothing: the statistics, the sampling, and certificates that hold under attack.

Each certificate is attacked inside its radius by random perturbations and by ART's PGD on
the smoothed model (EOT: :func:`defend.adaptive.eot.eot_estimator`), and, to show that the
attack can break what it attacks, far outside it. Sample counts are small (CI); the
failure probabilities are stated with each test's alpha, and the seeds are fixed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from scipy.stats import binomtest

import defend
from defend.adaptive.eot import eot_estimator
from defend.errors import DefendError
from defend.smooth import SmoothClassifier, load_smoothed, smoothed
from defend.smooth.core import BLOCK, holm, lower_confidence_bound


def pgd_l2(estimator, x, y, eps, steps=10, mask=None):
    """ART's l2 PGD (the outside attack) of ``steps`` steps of eps / 4, no random start;
    ``eps`` (N,) per sample."""
    eps = np.asarray(eps, np.float32).reshape(-1, *[1] * (x.ndim - 1))
    attack = ProjectedGradientDescent(
        estimator,
        norm=2,
        eps=eps,
        eps_step=eps / 4,
        max_iter=steps,
        num_random_init=0,
        batch_size=len(x),
        verbose=False,
    )
    return attack.generate(x, y=y, mask=mask)


def random_l2(x, radius, seed, mask=None):
    """x plus a random direction of l2 norm ``radius`` (on ``mask`` only)."""
    direction = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    direction = direction * (1 if mask is None else mask)
    return x + radius * direction / np.linalg.norm(direction)


# ---------------------------------------------------------------------------- statistics


def test_holm_is_the_step_down_procedure():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.05, size=rng.integers(1, 30)) ** rng.uniform(0.5, 3)
        m, order = len(p), np.argsort(p, kind="stable")
        expected = np.zeros(m, bool)
        for rank, i in enumerate(order):  # reject while p_(k) <= alpha / (m - k)
            if p[i] > 0.01 / (m - rank):
                break
            expected[i] = True
        np.testing.assert_array_equal(holm(p, 0.01), expected)


def test_clopper_pearson_lower_bound():
    # all successes: the exact one-sided bound is alpha ** (1 / n)
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    # the bound is the proportion whose upper tail at k is alpha
    low = lower_confidence_bound(70, 100, 0.01)
    assert binomtest(70, 100, low, alternative="greater").pvalue == pytest.approx(0.01, rel=1e-3)


# ---------------------------------------------------------------------------- sampling


def test_sampling_is_chunked_and_seeded_not_batched():
    """n = 20,000 noisy copies pass in chunks of at most batch_size (rounded to BLOCK), and
    the counts depend on the seed, not on the batch size."""
    seen = []

    def base(x):  # a linear "classifier" on the mean pixel
        seen.append(len(x))
        mean = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([mean - 0.5, 0.5 - mean], dim=1)

    smooth = SmoothClassifier(base, 2, sigma=0.5)
    x = torch.full((1, 8, 8), 0.52)
    counts = smooth.counts(x, 20_000, batch_size=1000, seed=3, phase=1)
    assert counts.sum() == 20_000 and max(seen) <= 1000 and len(seen) >= 20
    assert not np.array_equal(counts, smooth.counts(x, 20_000, 1000, seed=4, phase=1))
    seen.clear()
    np.testing.assert_array_equal(counts, smooth.counts(x, 20_000, 40, seed=3, phase=1))
    assert max(seen) == 32 == 2 * BLOCK  # 40 rounds down to whole blocks


def test_bad_arguments_are_one_line_errors(cls_ckpt):
    with pytest.raises(DefendError, match="sigma"):
        load_smoothed(cls_ckpt, 0.0)
    smooth = load_smoothed(cls_ckpt, 0.1)
    with pytest.raises(DefendError, match="alpha"):
        smooth.certify(np.zeros((1, 32, 32), np.float32), 10, 10, alpha=0.7)


# ---------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def cls_images(synth_dir, cls_ckpt):
    return defend.load_arrays(synth_dir, "cls", "test", 12, checkpoint=cls_ckpt)


def test_classification_certificate_holds_inside_the_radius(cls_ckpt, cls_images):
    """Cohen et al.: inside the certified l2 radius neither random directions nor PGD on the
    smoothed model (EOT) change its prediction (PREDICT may abstain: it is wrong with
    probability <= alpha = 0.01 per call, CERTIFY too); far outside, PGD does."""
    x, labels = cls_images
    estimator = defend.load_estimator(cls_ckpt)
    smooth = smoothed(estimator, sigma=0.12)
    certified = []
    for i in range(len(x)):
        label, radius = smooth.certify(x[i], n0=32, n=400, alpha=0.01, batch_size=400)
        if label != SmoothClassifier.ABSTAIN and radius > 0.05:
            certified.append((i, label, radius))
        if len(certified) == 2 and {c[1] for c in certified} == set(labels[:2]):
            break
    assert len(certified) == 2, "the smoothed classifier certified too few test images"
    rows = np.array([i for i, _, _ in certified])
    classes = np.array([c for _, c, _ in certified])
    radii = np.array([r for _, _, r in certified], dtype=np.float32)
    eot = eot_estimator(estimator, sigma=0.12, draws=8)
    onehot = np.eye(2, dtype=np.float32)[classes]
    torch.manual_seed(0)
    attacked = pgd_l2(eot, x[rows], onehot, radii * 0.95)
    assert np.all(np.linalg.norm((attacked - x[rows]).reshape(2, -1), axis=1) <= radii)
    for k, (i, label, radius) in enumerate(certified):
        for moved in (random_l2(x[i], 0.95 * radius, seed=k), attacked[k]):
            kept = smooth.predict(moved, n=400, alpha=0.01, batch_size=400, seed=1)
            assert kept in (label, SmoothClassifier.ABSTAIN), (i, radius)
    far = pgd_l2(eot, x[rows], onehot, np.full(2, 6.0, np.float32), steps=20)
    moved = [smooth.predict(far[k], n=400, alpha=0.01, batch_size=400) for k in range(2)]
    assert any(m != c for m, c in zip(moved, classes, strict=True)), "PGD broke nothing"


def test_a_certified_pixel_keeps_its_label(seg_ckpt, synth_dir):
    """SegCertify: every pixel certified at x keeps its label (or abstains) at x + delta for
    random and PGD (EOT) perturbations with ||delta||_2 inside the radius (Holm at alpha =
    0.01 for the certificate and again for each PREDICT); far outside, PGD flips some."""
    x, masks = defend.load_arrays(synth_dir, "seg", "test", 8, checkpoint=seg_ckpt)
    i = int(np.argmax(masks.reshape(len(x), -1).sum(1)))  # the image with the most lesion
    estimator = defend.load_estimator(seg_ckpt)
    smooth = smoothed(estimator, sigma=0.05)
    labels, radius = smooth.certify(x[i], n0=32, n=300, alpha=0.01, batch_size=300)
    certified = labels != smooth.ABSTAIN
    assert radius == pytest.approx(0.05 * 0.6744897, rel=1e-6)
    assert certified.mean() > 0.9 and (labels[certified] == 1).sum() > 0
    eot = eot_estimator(estimator, sigma=0.05, draws=8)
    target = labels.astype(np.float32)[None].clip(0, 1)
    torch.manual_seed(0)

    def flipped(moved):
        after = smooth.predict(moved, n=300, alpha=0.01, batch_size=300, seed=1)
        return int(((after != labels) & (after != smooth.ABSTAIN) & certified).sum())

    inside = pgd_l2(eot, x[i : i + 1], target, [0.95 * radius])[0]
    assert np.linalg.norm(inside - x[i]) <= radius
    assert flipped(random_l2(x[i], 0.95 * radius, seed=0)) == 0
    assert flipped(inside) == 0
    far = pgd_l2(eot, x[i : i + 1], target, [3.0], steps=20)[0]
    assert flipped(far) > 0, "PGD at l2 3.0 flipped no certified pixel"


def test_certify_every_skip_th_sample_and_its_foreground(seg_ckpt, synth_dir, tmp_path):
    """``skip`` certifies dataset positions 0, skip, 2 skip ..., each seeded by its position
    (the row of a full run); ``foreground_accuracy`` is the certified-and-right share of the
    true lesion pixels, the all-pixel accuracy restricted to them."""
    from defend.smooth.certify import certify_split

    counts = dict(n0=16, n=64, alpha=0.01, batch_size=64)
    summary = certify_split(
        seg_ckpt, synth_dir, tmp_path, 0.05, n_samples=3, skip=3, progress=False, **counts
    )
    assert [r["index"] for r in summary["rows"]] == [0, 3, 6]
    x, masks = defend.load_arrays(synth_dir, "seg", "test", indices=[3], checkpoint=seg_ckpt)
    smooth = load_smoothed(seg_ckpt, 0.05)
    labels, _ = smooth.certify(x[0], seed=3, **counts)
    truth = masks[0].astype(np.uint8)
    row = summary["rows"][1]
    assert row["certified_accuracy"] == pytest.approx(float((labels == truth).mean()))
    if truth.any():
        assert row["foreground_accuracy"] == pytest.approx(float((labels[truth == 1] == 1).mean()))
    else:
        assert row["foreground_accuracy"] is None
    lesions = [r["foreground_accuracy"] for r in summary["rows"] if r["foreground_accuracy"]]
    assert summary["foreground_samples"] == len(lesions)


def test_center_smoothing_bound_holds_inside_eps_in(unet_ckpt, synth_dir):
    """Center smoothing: for random and PGD (EOT) k-space perturbations of l2 norm eps_in
    k-space units (the training split's unit, the noise's), the smoothed reconstruction
    moves less than the certified eps_out (alpha 0.05 split between centre and bound;
    PREDICT's centre test at 0.05); a perturbation 40 times larger moves it further."""
    from defend.smooth import training_unit

    x, _ = defend.load_arrays(synth_dir, "recon", "test", 1, checkpoint=unet_ckpt)
    estimator = defend.load_estimator(unet_ckpt)
    sigma, eps_in = 0.05, 0.05
    unit = training_unit(synth_dir, unet_ckpt)
    smooth = smoothed(estimator, sigma=sigma, unit=unit, delta=0.1)
    assert smooth.noise_std == pytest.approx(sigma * unit)
    settings = dict(n0=16, n=600, alpha=0.05, batch_size=300)
    center, eps_out = smooth.certify(x[0], eps_in=eps_in, **settings)
    assert center is not None and 0 < eps_out < 1
    xt = torch.as_tensor(x)
    measured = (smooth.noise.scale(xt) > 0).numpy()
    with torch.no_grad():
        scale = float(smooth.forward(xt).norm())
    eot = eot_estimator(estimator, sigma=sigma, draws=8, unit=unit)
    torch.manual_seed(0)

    def moved(x_new):
        new = smooth.predict(x_new, seed=1, **{k: settings[k] for k in ("n0", "n", "alpha")})
        return float("nan") if new is None else float((new - center).norm()) / scale

    radius = eps_in * unit
    attacked = pgd_l2(eot, x, center[None].numpy(), [radius], mask=measured.astype(np.float32))
    assert np.linalg.norm(attacked - x) <= radius * (1 + 1e-5)
    for x_new in (random_l2(x, radius, seed=0, mask=measured), attacked):
        assert moved(x_new[0]) <= eps_out
    far = pgd_l2(eot, x, center[None].numpy(), [40 * radius], mask=measured.astype(np.float32))
    assert moved(far[0]) > eps_out


def test_kspace_noise_is_one_gaussian_whatever_the_input(unet_ckpt, synth_dir):
    """The shift argument of the certificates: the noisy copies of x and of x + delta are
    the same draws shifted by delta, for delta = x (twice the k-space: a per-sample scale
    would double the noise) and for delta zeroing a sampled column (a support of the input's
    non-zero columns would drop the column's noise); the support is the estimator's mask."""
    from defend.smooth.core import Smooth

    x, _ = defend.load_arrays(synth_dir, "recon", "test", 1, checkpoint=unet_ckpt)
    estimator = defend.load_estimator(unet_ckpt)
    smooth = smoothed(estimator, sigma=0.25, unit=0.5, delta=0.1)
    xt = torch.as_tensor(x[0])
    mask = estimator.mask.cpu().reshape(-1)
    column = int(mask.nonzero()[0])
    zeroed = xt.clone()
    zeroed[..., column, :] = 0
    support = (smooth.noise.scale(xt[None])[0] > 0).any(-1).any(-2).any(0)
    assert torch.equal(support, mask) and smooth.noise_std == pytest.approx(0.125)
    identity = Smooth(lambda v: v, 0.25, smooth.noise)
    noisy = torch.cat([o for _, o in identity.outputs(xt, 32, 32, seed=5, phase=0)])
    for moved in (2 * xt, zeroed):
        shifted = torch.cat([o for _, o in identity.outputs(moved, 32, 32, seed=5, phase=0)])
        torch.testing.assert_close(shifted - noisy, (moved - xt).expand_as(noisy))
    assert (noisy - xt)[..., ~mask, :].abs().max() == 0  # no noise off the sampled columns
    spread = (noisy - xt)[..., mask, :].std()
    assert abs(float(spread) / 0.125 - 1) < 0.05  # noise_std on each sampled component


def test_one_kspace_unit_for_attacks_noise_and_radii(unet_ckpt, synth_dir):
    """The attacks' relative l-inf unit is the rms magnitude of the sampled complex entries
    whichever parts move, and the noise's unit is the same quantity pooled over the training
    split (every slice under the evaluation mask), the same number on every call."""
    import defend.smooth.unit as smooth_module
    from defend.attacks.budget import KspaceBudget, kspace_unit
    from defend.smooth import training_unit

    estimator = defend.load_estimator(unet_ckpt)
    x, _ = defend.load_arrays(synth_dir, "recon", "train", None, checkpoint=unet_ckpt)
    xt = torch.as_tensor(x).double()
    mask = estimator.mask.cpu().double()
    expected = kspace_unit(xt, mask)
    manual = (xt * mask).flatten(1).norm(dim=1) / (mask.sum() * x.shape[1] * x.shape[2]).sqrt()
    torch.testing.assert_close(expected.flatten(), manual)
    for part in ("real", "complex"):
        torch.testing.assert_close(KspaceBudget(0.1, part=part).unit(xt, mask), expected)
    unit = training_unit(synth_dir, unet_ckpt)
    assert unit == pytest.approx(float(expected.square().mean().sqrt()), rel=1e-12)
    smooth_module._UNITS.clear()
    assert training_unit(synth_dir, unet_ckpt) == unit  # recomputed: the same digits


def test_recon_smoothing_refuses_a_noise_it_cannot_fix(unet_ckpt):
    """Without a unit (nor a denoiser that stores one) reconstruction smoothing refuses to
    guess one from the input; a unit other than the denoiser's is refused too."""
    estimator = defend.load_estimator(unet_ckpt)
    with pytest.raises(DefendError, match="k-space unit"):
        smoothed(estimator, sigma=0.1)
    with pytest.raises(DefendError, match="k-space unit"):
        eot_estimator(estimator, sigma=0.1, draws=2)
    denoiser = torch.nn.Identity()
    denoiser.kspace_unit = 2.0
    assert smoothed(estimator, sigma=0.1, denoiser=denoiser).noise_std == pytest.approx(0.2)
    with pytest.raises(DefendError, match="denoiser was trained for noise of k-space unit 2"):
        smoothed(estimator, sigma=0.1, denoiser=denoiser, unit=3.0)


def test_recon_denoiser_and_certify_record_the_noise(unet_ckpt, synth_dir, tmp_path):
    """`defend train denoiser` stores its k-space noise (the training split's unit), loading
    it gives smoothing that noise, and `defend certify` records unit and noise_std."""
    from defend.io import load_checkpoint
    from defend.smooth import training_unit
    from defend.smooth.certify import certify_split
    from defend.smooth.denoiser import load_denoiser, train_denoiser
    from defend.train import TrainConfig

    unit = training_unit(synth_dir, unet_ckpt)
    den = tmp_path / "den.pt"
    config = TrainConfig(epochs=1, batch_size=8, progress=False)
    train_denoiser(unet_ckpt, synth_dir, den, 0.1, depth=2, width=4, config=config,
                   log=lambda line: None)  # fmt: skip
    assert load_checkpoint(den)["noise"] == {"sigma": 0.1, "unit": unit, "noise_std": 0.1 * unit}
    assert load_denoiser(den, unet_ckpt).kspace_unit == unit
    assert load_smoothed(unet_ckpt, 0.1, den).noise_std == pytest.approx(0.1 * unit)
    summary = certify_split(unet_ckpt, synth_dir, tmp_path / "c", 0.1, n_samples=1, n0=4,
                            n=600, alpha=0.2, batch_size=300, progress=False)  # fmt: skip
    settings = summary["settings"]
    assert settings["unit"] == unit and settings["noise_std"] == pytest.approx(0.1 * unit)


# ---------------------------------------------------------------------------- CLI


def test_train_denoiser_then_certify_with_it(cls_ckpt, synth_dir, tmp_path):
    """`defend train denoiser` trains through the training loop (a resumable checkpoint of
    the denoiser alone), and `defend certify --denoiser` writes the CSV, summary and figure;
    a stopped certify run resumes from its partial file with the rows of a fresh run."""
    import csv
    import json

    from typer.testing import CliRunner

    from defend.cli import app
    from defend.io import load_checkpoint

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    den = tmp_path / "den.pt"
    common = ["--checkpoint", cls_ckpt, "--data", synth_dir, "--sigma", "0.12", "--no-progress"]
    invoke("train", "denoiser", *common, "--out", den, "--epochs", "1", "--depth", "3",
           "--width", "8", "--objective", "mse-stability")  # fmt: skip
    ckpt = load_checkpoint(den)
    assert ckpt["kind"] == "denoiser" and all(k.startswith("denoiser.") for k in ckpt["state_dict"])
    assert "accuracy" in ckpt["metrics"]  # the base task's metric on denoised noisy inputs
    assert "already trained" in invoke("train", "denoiser", *common, "--out", den, "--epochs", "1",
                                       "--depth", "3", "--width", "8", "--objective",
                                       "mse-stability")  # fmt: skip
    certify = ["certify", *common, "--denoiser", den, "--n-samples", "3", "--n", "64",
               "--n0", "16", "--alpha", "0.05", "--batch-size", "32"]  # fmt: skip
    invoke(*certify, "--out", tmp_path / "a")
    rows = list(csv.DictReader((tmp_path / "a" / "certificates.csv").open()))
    assert list(rows[0]) == ["index", "label", "predict", "radius", "correct"] and len(rows) == 3
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (
        summary["settings"]["denoiser"] == "den.pt"
        and (tmp_path / "a" / "certified.png").stat().st_size
    )
    # a run stopped after one sample: its partial file is picked up
    (tmp_path / "b").mkdir()
    partial = [summary["settings"], summary["rows"][0]]
    (tmp_path / "b" / "certificates.partial.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in partial) + '{"index": 1, "lab'
    )
    invoke(*certify, "--out", tmp_path / "b")
    assert (tmp_path / "b" / "certificates.csv").read_text() == (
        tmp_path / "a" / "certificates.csv"
    ).read_text()
    assert not (tmp_path / "b" / "certificates.partial.jsonl").exists()


def test_certify_refuses_what_cannot_work(cls_ckpt, unet_ckpt, synth_dir, tmp_path):
    from defend.smooth.certify import certify_split

    with pytest.raises(DefendError, match="needs --n >= "):
        certify_split(unet_ckpt, synth_dir, tmp_path / "r", 0.05, n=100, alpha=0.01)
    assert not (tmp_path / "r").exists()
    with pytest.raises(DefendError, match="denoiser checkpoint"):
        from defend.smooth.denoiser import load_denoiser

        load_denoiser(cls_ckpt)


def test_attacks_target_the_smoothed_model(seg_ckpt, synth_dir, tmp_path):
    """`defend attack ... --smooth-sigma S --eot K` attacks the EOT estimator: the attack
    raises its loss on the smoothed model, the run records the smoothing, and the same seed
    gives the same numbers."""
    import json

    from typer.testing import CliRunner

    from defend.cli import app

    args = ["attack", "seg-fgsm", "--checkpoint", seg_ckpt, "--data", synth_dir, "--n", "4",
            "--max-iter", "5", "--smooth-sigma", "0.05", "--eot", "4", "--no-progress"]  # fmt: skip
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = CliRunner().invoke(app, [str(a) for a in [*args, "--out", out]])
        assert result.exit_code == 0, result.output
        results.append(json.loads((out / "metrics.json").read_text()))
    summary = results[0]["summary"]
    assert results[0]["smooth"] == {"sigma": 0.05, "denoiser": None, "eot": 4}
    assert summary["loss_adv"]["mean"] > summary["loss_clean"]["mean"]
    assert results[0]["rows"] == results[1]["rows"]
    estimator = defend.load_estimator(seg_ckpt)
    x, _ = defend.load_arrays(synth_dir, "seg", "test", 2, checkpoint=seg_ckpt)
    eot = eot_estimator(estimator, sigma=0.05, draws=64)
    # the EOT model is the smoothed one: near the base model at small noise, not equal to it
    gap = np.abs(torch.sigmoid(torch.as_tensor(eot.predict(x))) - torch.sigmoid(
        torch.as_tensor(estimator.predict(x)))).mean()  # fmt: skip
    assert 0 < float(gap) < 0.2


def test_frozen_eot_is_one_deterministic_estimate_and_dgde_moves_the_smoothed_model(
    cls_ckpt, cls_images
):
    """With frozen draws the EOT classifier answers every query the same, whatever the batch
    (fresh draws do not), so the black-box DGDE sees one function; what it finds without
    pruning (the matrix's adaptive DGDE) moves the smoothed classifier's own fresh
    Monte-Carlo prediction off the right label (wrong or abstaining) on some images."""
    from defend.attacks.apply import attack_arrays

    x, labels = cls_images
    estimator = defend.load_estimator(cls_ckpt)
    frozen = eot_estimator(estimator, sigma=0.25, draws=16, frozen_seed=3)
    first = frozen.predict(x[:6], batch_size=6)
    assert np.array_equal(first, frozen.predict(x[:6], batch_size=2))
    assert np.array_equal(first[:1], frozen.predict(x[:1]))
    fresh = eot_estimator(estimator, sigma=0.25, draws=16)
    assert not np.array_equal(fresh.predict(x[:6]), fresh.predict(x[:6]))
    smooth = smoothed(estimator, sigma=0.25)
    before = [smooth.predict(x[i], n=200, alpha=0.01, seed=1) for i in range(6)]
    attacker = eot_estimator(estimator, sigma=0.25, draws=16, frozen_seed=3)  # unused yet
    x_adv, rows = attack_arrays(
        attacker, "dgde", x[:6], labels[:6], {"max_queries": 300, "prune": False}
    )
    # the attack ran the base model inside the EOT wrapper (a module in training mode until
    # it took its base's mode): the base's batch norms must come back in eval mode, else
    # the smoothed model answers differently after an attack, on the clean images too
    assert not any(m.training for m in estimator.model.modules())
    assert before == [smooth.predict(x[i], n=200, alpha=0.01, seed=1) for i in range(6)]
    moved = []
    for i, row in enumerate(rows):
        after = smooth.predict(x_adv[i], n=200, alpha=0.01, seed=1)
        moved.append(row["success"] == 1 and before[i] == labels[i] and after != labels[i])
    assert any(moved)


def test_a_stopped_certify_continues_mid_sample_with_the_same_numbers(
    unet_ckpt, synth_dir, tmp_path, monkeypatch
):
    """Ctrl-C in the middle of a center-smoothing sample keeps its draws: the next run
    continues at the next block (fewer forward passes) and writes the rows of an
    uninterrupted run; a run of another seed does not reuse them."""
    from defend.smooth import certify as certify_module
    from defend.smooth.core import Smooth

    monkeypatch.setattr(certify_module, "SAVE_EVERY", 0.0)  # save after every chunk
    forward, calls, stop_at = Smooth.forward, [0], [None]

    def counted(self, noisy):
        calls[0] += 1
        if calls[0] == stop_at[0]:
            raise KeyboardInterrupt
        return forward(self, noisy)

    monkeypatch.setattr(Smooth, "forward", counted)

    def run(out, seed=0, stop=None):
        calls[0], stop_at[0] = 0, stop
        summary = certify_module.certify_split(
            unet_ckpt, synth_dir, tmp_path / out, 0.1, n_samples=1, n0=4, n=600, alpha=0.2,
            batch_size=64, seed=seed, progress=False)  # fmt: skip
        return summary["rows"], calls[0]

    rows, full = run("a")
    with pytest.raises(KeyboardInterrupt):
        run("b", stop=15)  # in the second of the three 600-draw phases
    assert (tmp_path / "b" / certify_module.SAMPLE).exists()
    resumed, resumed_calls = run("b")
    assert resumed == rows and resumed_calls == full - 14
    assert not (tmp_path / "b" / certify_module.SAMPLE).exists()
    with pytest.raises(KeyboardInterrupt):
        run("c", stop=15)
    assert run("c", seed=1)[1] == full  # another seed's draws are not reused
