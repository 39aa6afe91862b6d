"""Real fastMRI layout: k-space columns outside ``[padding_left, padding_right)`` were never
acquired, and neither the data, the estimator nor the hallucination attack may use them.

The file is laid out like fastMRI's own test fixtures (``tests/create_temp_data.py`` in
facebookresearch/fastMRI: random complex k-space ``(slices, coils, H, W)``, a smaller
``reconstruction_rss`` ``(slices, h, w)``, ``max`` / ``norm`` / ``acquisition`` attributes),
plus the ``ismrmrd_header`` that fastMRI's ``SliceDataset`` reads the padding from:

    padding_left  = encodedSpace.matrixSize.y // 2 - kspace_encoding_step_1.center
    padding_right = padding_left + kspace_encoding_step_1.maximum + 1

Here ``W = 40`` with acquired columns ``[4, 36)``. The k-space is random and non-zero in the
padding columns too (as in the fixtures), so only the padding mask can zero them.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import defend.attacks.hallucination as hallucination
from defend.attacks import HallucinationAttack
from defend.data import Acquisition, ReconDataset, load_arrays
from defend.estimators import ReconEstimator
from defend.models import build_model, default_model_config
from fastmri_files import fastmri_header

SLICES, COILS, H, W = 3, 3, 32, 40  # k-space (slices, coils, H, W): H readout rows, W columns
RECON = (24, 24)  # reconstruction_rss (h, w), fastMRI's reconSpace
LEFT, RIGHT = 4, 36  # acquired columns [LEFT, RIGHT)


def write_fastmri_file(path: Path, seed: int = 1234) -> np.ndarray:
    """A multicoil fastMRI-style file; returns its k-space ``(slices, coils, H, W)`` complex64."""
    rng = np.random.default_rng(seed)
    shape = (SLICES, COILS, H, W)
    kspace = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    target = np.abs(rng.normal(size=(SLICES, *RECON))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_rss", data=target)
        header = fastmri_header(H, W, RECON, LEFT, RIGHT, coils=COILS, slices=SLICES)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header))
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["acquisition"] = "AXT1"
    return kspace


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fastmri")
    (root / "val").mkdir()
    write_fastmri_file(root / "val" / "file_brain_AXT1_000.h5")
    return root


def _window() -> torch.Tensor:
    """bool (W,): True on the acquired columns [LEFT, RIGHT)."""
    inside = torch.zeros(W, dtype=torch.bool)
    inside[LEFT:RIGHT] = True
    return inside


def _estimator(name: str) -> tuple[torch.nn.Module, ReconEstimator]:
    torch.manual_seed(0)
    if name == "unet":
        config = {"name": "unet", "chans": 4, "num_pool_layers": 1, "drop_prob": 0.0}
        config["crop"] = list(RECON)
    else:
        config = default_model_config(
            "recon", "varnet", input_shape=(COILS, H, W, 2), target_shape=RECON
        )
        config.update(num_cascades=2, sens_chans=2, sens_pools=1, chans=2, pools=1)
    model = build_model("recon", config).eval()
    estimator = ReconEstimator(model, Acquisition().eval_mask(W), (COILS, H, W, 2), device="cpu")
    return model, estimator


def test_header_padding_read_by_fastmri(data_dir):
    ds = ReconDataset(data_dir / "val", Acquisition(), train=False)
    assert len(ds) == SLICES
    _, _, meta = ds.raw_samples[0]
    assert (meta["padding_left"], meta["padding_right"]) == (LEFT, RIGHT)
    assert meta["encoding_size"] == (H, W, 1) and meta["recon_size"] == (*RECON, 1)
    # the precondition of the attack test: the evaluation mask samples a padding column
    eval_columns = Acquisition().eval_mask(W).squeeze()
    assert (eval_columns & ~_window()).any()


def test_load_arrays_zero_outside_padding(data_dir):
    x, y = load_arrays(data_dir, "recon", "val", n=None)
    assert x.shape == (SLICES, COILS, H, W, 2) and y.shape == (SLICES, *RECON)
    ds = ReconDataset(data_dir / "val", Acquisition(), train=False)
    sample_mask = ds[0]["mask"].squeeze()
    assert torch.equal(sample_mask, Acquisition().eval_mask(W).squeeze() & _window())
    assert (x[:, :, :, :LEFT] == 0).all() and (x[:, :, :, RIGHT:] == 0).all()
    assert (x[:, :, :, ~sample_mask.numpy()] == 0).all()
    assert (x[:, :, :, sample_mask.numpy()] != 0).all()  # random k-space: never exactly 0


@pytest.mark.parametrize("name", ["unet", "varnet"])
def test_estimator_uses_dataset_padded_mask(data_dir, name):
    x, _ = load_arrays(data_dir, "recon", "val", n=None)
    sample_mask = ReconDataset(data_dir / "val", Acquisition(), train=False)[0]["mask"]
    model, est = _estimator(name)
    pred = est.predict(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x), sample_mask).numpy()
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-6)
    if name == "varnet":  # data consistency sees the mask: the padding column matters
        with torch.no_grad():
            eval_only = model(torch.from_numpy(x), Acquisition().eval_mask(W)).numpy()
        assert not np.allclose(eval_only, expected, rtol=1e-5, atol=1e-6)


def _attack(x: np.ndarray) -> np.ndarray:
    _, est = _estimator("unet")
    attack = HallucinationAttack(est, eps=0.05, max_iter=3, patience=0, part="complex")
    return attack.generate(x)


def test_attack_leaves_unacquired_columns(data_dir, monkeypatch):
    x, _ = load_arrays(data_dir, "recon", "val", n=None)
    acquired = x.any(axis=(1, 2, 4))  # (N, W)
    assert not acquired[:, :LEFT].any() and not acquired[:, RIGHT:].any()
    x_adv = _attack(x)
    changed = (x_adv != x).any(axis=(1, 2, 4))  # (N, W)
    assert not (changed & ~acquired).any(), np.argwhere(changed & ~acquired)
    assert changed.any(axis=1).all()  # every sample moved, in acquired columns only
    # the same attack with the padding ignored (every column counted as acquired) writes into
    # the padding column the evaluation mask samples: what this test exists to catch
    monkeypatch.setattr(
        hallucination,
        "acquired_columns",
        lambda k: torch.ones(len(k), 1, 1, k.shape[-2], 1, dtype=torch.bool, device=k.device),
    )
    leaky = (_attack(x) != x).any(axis=(1, 2, 4))
    assert (leaky & ~acquired).any()
