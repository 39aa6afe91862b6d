"""The README's three-line notebook path: any ART attack against any trained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

import defend
from defend.attacks.apply import attack_arrays


def mse_to(est, x, y):
    return ((est.predict(x) - y) ** 2).reshape(len(x), -1).mean(1)


@pytest.mark.parametrize("which", ["unet_ckpt", "varnet_ckpt"])
def test_art_attacks_on_recon_checkpoints(which, synth_dir, request):
    ckpt = request.getfixturevalue(which)
    est = defend.load_estimator(ckpt)
    x, y = defend.load_arrays(synth_dir, "recon", "test", 3, checkpoint=ckpt)
    eps = 0.01 * float(np.abs(x).max())
    for attack in (
        FastGradientMethod(est, eps=eps),
        ProjectedGradientDescent(
            est, eps=eps, eps_step=eps / 4, max_iter=5, num_random_init=0, verbose=False
        ),
    ):
        x_adv = attack.generate(x, y)
        assert np.all(mse_to(est, x_adv, y) > mse_to(est, x, y))


def test_art_attacks_on_seg_and_cls_checkpoints(seg_ckpt, cls_ckpt, synth_dir):
    seg = defend.load_estimator(seg_ckpt)
    x, y = defend.load_arrays(synth_dir, "seg", "test", 4)
    x_adv = ProjectedGradientDescent(
        seg, eps=0.03, eps_step=0.01, max_iter=5, num_random_init=0, verbose=False
    ).generate(x, y)
    assert seg.compute_loss(x_adv, y) > seg.compute_loss(x, y)

    cls = defend.load_estimator(cls_ckpt)
    x, y = defend.load_arrays(synth_dir, "cls", "test", 6)
    onehot = np.eye(2, dtype=np.float32)[y]
    x_adv = ProjectedGradientDescent(
        cls, eps=0.1, eps_step=0.02, max_iter=10, verbose=False
    ).generate(x, onehot)
    clean_acc = (cls.predict(x).argmax(1) == y).mean()
    assert clean_acc > 0.5
    assert (cls.predict(x_adv).argmax(1) == y).mean() < clean_acc


def test_attack_arrays_without_files(unet_ckpt, synth_dir, tmp_path, monkeypatch):
    """The README's file-free path: defend's own attack on arrays, nothing written."""
    monkeypatch.chdir(tmp_path)
    est = defend.load_estimator(unet_ckpt)
    x, _ = defend.load_arrays(synth_dir, "recon", "test", 2, checkpoint=unet_ckpt)
    x_adv, rows = attack_arrays(est, "hallucination", x, params={"eps": 0.02, "max_iter": 5})
    assert x_adv.shape == x.shape and len(rows) == 2 and rows[0]["strength"] > 0
    shard, shard_rows = attack_arrays(
        est, "hallucination", x[1:], params={"eps": 0.02, "max_iter": 5}, indices=[1]
    )
    np.testing.assert_allclose(shard, x_adv[1:], atol=1e-6)
    assert list(tmp_path.iterdir()) == []
