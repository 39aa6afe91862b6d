"""Real fastMRI data end to end: folders named as fastMRI ships them, mixed k-space widths and
coil counts, a FLAIR-like volume narrower than the reconstruction size, padding in the
header, multi-coil and single-coil, values ~1e-4.

Checks: training at the default batch size, the attack covering every validation sample and
touching no unacquired column, resume refusing a changed configuration, evaluation of given
weights without training, one shape per batch, worker-independent numbers, and bad input
refused in one line with nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from defend.adaptive.runner import run_attack
from defend.data import Acquisition, ReconDataset, load_groups
from defend.data.batching import ShapeBatchSampler, shape_loader
from defend.detect.examples import load_detection_data, make_detection_data
from defend.errors import CheckpointError, DataError, DefendError
from defend.io import load_checkpoint
from defend.train import TrainConfig, train_model
from entry import defend_main
from fastmri_files import write_volume

#: (name, coils, k-space width): widths 40 / 44 and 3 / 2 coils, and a FLAIR-like volume 20
#: columns wide against a 24 x 24 reconstruction
VOLUMES = (("a", 3, 40), ("b", 2, 44), ("flair", 3, 20))
SLICES = 3
TINY_UNET = {"chans": 4, "num_pool_layers": 2}
TINY_VARNET = {"num_cascades": 1, "sens_chans": 2, "sens_pools": 1, "chans": 2, "pools": 1}


def _write_split(folder: Path, seed: int, singlecoil: bool = False) -> None:
    folder.mkdir(parents=True)
    for i, (name, coils, width) in enumerate(VOLUMES):
        write_volume(
            folder / f"file_{name}_{seed}.h5",
            coils=coils,
            width=width,
            slices=SLICES,
            seed=seed * 10 + i,
            singlecoil=singlecoil,
        )


@pytest.fixture(scope="module")
def multicoil(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("knee")
    _write_split(root / "multicoil_train", 1)
    _write_split(root / "multicoil_val", 2)
    return root


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "lr": 1e-3, "progress": False, **kw})


def _train(data: Path, out: Path, model: str = "unet", log=None, **kw) -> list[dict]:
    options = TINY_UNET if model == "unet" else TINY_VARNET
    config = {k: kw.pop(k) for k in list(kw) if k in TrainConfig.__dataclass_fields__}
    return train_model(
        "recon",
        data,
        out,
        model=model,
        model_options=options,
        config=_config(**config),
        log=log or (lambda s: None),
        **kw,
    )


@pytest.fixture(scope="module")
def unet(multicoil, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "unet.pt"
    _train(multicoil, out)
    return out


def test_dataset_shapes_and_narrow_volume(multicoil):
    ds = ReconDataset(multicoil / "multicoil_val", Acquisition(), train=False)
    keys = ds.shape_keys()
    assert len(set(keys)) == 3 and len(keys) == len(ds) == 3 * SLICES
    for i in range(len(ds)):  # the header-derived key is the sample's real shape
        sample = ds[i]
        assert (tuple(sample["input"].shape), tuple(sample["target"].shape)) == keys[i]
    flair = [k for k in keys if k[0][2] == 20][0]
    assert flair[1] == (20, 20)  # fastMRI's FLAIR rule: a (W, W) crop of the 24 x 24 target


def test_shape_batches_cover_every_sample_once():
    keys = ["a"] * 5 + ["b"] * 3 + ["a"] * 2 + ["c"]
    for shuffle in (False, True):
        sampler = ShapeBatchSampler(keys, 2, shuffle, seed=0)
        batches = list(sampler)
        assert list(sampler) == batches  # every iteration starts from the seed
        assert len(batches) == len(sampler) == 7
        assert sorted(i for b in batches for i in b) == list(range(len(keys)))
        assert all(len({keys[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    for workers in (0, 1):  # the same batches with workers and behind a progress bar
        loader = shape_loader(range(10), 4, shuffle=True, seed=3, num_workers=workers)
        assert [b.tolist() for b in tqdm(loader, disable=True)] == [b.tolist() for b in loader]


@pytest.mark.parametrize("model", ["unet", "varnet"])
def test_trains_on_mixed_shapes_at_the_default_batch_size(multicoil, tmp_path, model):
    lines: list[str] = []
    history = _train(multicoil, tmp_path / "m.pt", model, log=lines.append)
    assert TrainConfig().batch_size == 8 and np.isfinite(history[-1]["train_loss"])
    assert np.isfinite(history[-1]["ssim"])
    assert f"train: {multicoil / 'multicoil_train'} (9 samples)" in lines
    assert f"val: {multicoil / 'multicoil_val'} (9 samples)" in lines


def test_attack_covers_every_sample_and_no_unacquired_column(multicoil, unet, tmp_path):
    result = run_attack(
        "hallucination",
        unet,
        multicoil,
        tmp_path / "attack",
        split="val",
        n=100,
        params={"max_iter": 3, "part": "complex", "region_size": 4},
        save_adversarial=True,
    )
    assert result["attacked"] == 3 * SLICES and len(result["shapes"]) == 3
    assert sorted(r["index"] for r in result["rows"]) == list(range(3 * SLICES))
    assert result["data_root"] == str(multicoil / "multicoil_val")
    arrays = np.load(tmp_path / "attack" / "adversarial.npz")
    for g in range(3):
        x, x_adv = arrays[f"x_{g}"], arrays[f"x_adv_{g}"]
        acquired = x.any(axis=(1, 2, 4))  # (N, W): padding and unsampled columns are zero
        eval_mask = Acquisition().eval_mask(x.shape[-2]).squeeze().numpy()
        assert not (acquired & ~eval_mask).any()
        changed = (x_adv != x).any(axis=(1, 2, 4))
        assert changed.any(axis=1).all()  # every sample was attacked ...
        assert not (changed & ~acquired).any()  # ... in acquired columns only
        assert not changed[:, :2].any() and not changed[:, -2:].any()  # header padding


def test_attack_skip_takes_every_skip_th_sample_across_shapes(multicoil, unet, tmp_path):
    """``skip`` attacks dataset positions 0, skip, 2 skip, ... (here across the three
    k-space shapes), each row as in a run over all samples (rows are seeded by position;
    the tolerance is float32 summation order in batches of other sizes, as below)."""
    params = {"max_iter": 2, "region_size": 4}
    every = run_attack("hallucination", unet, multicoil, tmp_path / "a", split="val", n=100,
                       params=params)  # fmt: skip
    some = run_attack("hallucination", unet, multicoil, tmp_path / "b", split="val", n=3,
                      skip=4, params=params)  # fmt: skip
    assert [r["index"] for r in some["rows"]] == [0, 4, 8] and some["skip"] == 4
    assert len(some["shapes"]) == 3  # positions 0, 4, 8 lie in three shape groups
    rows = {r["index"]: r for r in every["rows"]}
    for row in some["rows"]:
        assert row == pytest.approx(rows[row["index"]], rel=1e-4, abs=1e-7)


def test_groups_give_the_same_rows_as_one_sample_at_a_time(multicoil, unet):
    from defend.attacks.apply import attack_groups
    from defend.estimators import load_estimator

    est = load_estimator(unet, device="cpu")
    params = {"max_iter": 2, "region_size": 4}
    groups = load_groups(multicoil, "recon", "val", None, checkpoint=unet)
    rows = {
        r["index"]: r
        for g in attack_groups("hallucination", est, groups, params)
        for r in g["rows"]
    }
    for index in (0, 4, 8):
        single = load_groups(multicoil, "recon", "val", indices=[index], checkpoint=unet)
        [alone] = attack_groups("hallucination", est, single, params)
        assert alone["rows"][0] == pytest.approx(rows[index], rel=1e-4, abs=1e-7)


def test_resume_refuses_a_changed_configuration(multicoil, tmp_path):
    out = tmp_path / "run.pt"
    _train(multicoil, out)
    before = out.read_bytes()
    changes = [
        ({"seed": 1}, "seed 0 -> 1"),
        ({"lr": 3e-3}, "lr 0.001 -> 0.003"),
        ({"batch_size": 4}, "batch_size 8 -> 4"),
        ({"acquisition": Acquisition(acceleration=8, center_fraction=0.04)}, "acquisition."),
    ]
    for change, named in changes:
        with pytest.raises(CheckpointError) as exc:
            _train(multicoil, out, **change)
        assert named in str(exc.value) and "\n" not in str(exc.value)
    other = tmp_path / "other"
    shutil.copytree(multicoil, other)
    next((other / "multicoil_val").glob("*.h5")).unlink()
    with pytest.raises(CheckpointError, match="data.val"):
        _train(other, out)
    regenerated = tmp_path / "regenerated"  # same names and sizes, other bytes
    shutil.copytree(multicoil, regenerated)
    name, coils, width = VOLUMES[0]
    write_volume(
        regenerated / "multicoil_train" / f"file_{name}_1.h5",
        coils=coils,
        width=width,
        slices=SLICES,
        seed=99,
    )
    assert all(
        (regenerated / p.relative_to(multicoil)).stat().st_size == p.stat().st_size
        for p in multicoil.rglob("*.h5")
    )
    with pytest.raises(CheckpointError, match="data.train"):
        _train(regenerated, out)
    assert out.read_bytes() == before  # nothing written by a refused resume
    lines: list[str] = []
    _train(multicoil, out, log=lines.append)  # the same run: nothing to do
    assert any("nothing to do" in line for line in lines)


def test_given_weights_are_evaluated_without_training(multicoil, unet, tmp_path):
    weights = tmp_path / "weights.pt"
    trained = load_checkpoint(unet)
    torch.save(trained["state_dict"], weights)  # a plain state dict, as fastMRI ships them
    out = tmp_path / "imported.pt"
    history = _train(multicoil, out, epochs=0, weights=weights)
    ckpt = load_checkpoint(out, "recon")
    assert ckpt["epoch"] == 0 and history[-1]["epoch"] == 0
    assert ckpt["metrics"] == pytest.approx(trained["metrics"])  # same weights, same val
    for key, value in trained["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][key], value)
    with pytest.raises(DefendError, match="--epochs 0 evaluates given weights"):
        _train(multicoil, tmp_path / "none.pt", epochs=0)
    assert not (tmp_path / "none.pt").exists()


@pytest.mark.slow
def test_workers_do_not_change_the_numbers(multicoil, tmp_path):
    a = _train(multicoil, tmp_path / "w0.pt", num_workers=0, epochs=2)
    b = _train(multicoil, tmp_path / "w2.pt", num_workers=2, epochs=2)
    assert a == b


def test_singlecoil_trains_and_attacks(tmp_path):
    root = tmp_path / "knee"
    _write_split(root / "singlecoil_train", 3, singlecoil=True)
    _write_split(root / "singlecoil_val", 4, singlecoil=True)
    _train(root, tmp_path / "sc.pt", batch_size=4)
    result = run_attack(
        "hallucination",
        tmp_path / "sc.pt",
        root,
        tmp_path / "a",
        split="val",
        n=4,
        params={"max_iter": 2, "region_size": 4},
    )
    assert result["attacked"] == 4 and result["shapes"][0][0] == 1  # one coil


def test_checkpoint_on_data_of_other_kspace_shapes(unet, tmp_path):
    """A checkpoint is applied to k-space of any width and coil count (fastMRI knee widths
    differ from file to file): each shape gets the acquisition's mask of its width."""
    other = tmp_path / "other" / "multicoil_val"
    other.mkdir(parents=True)
    write_volume(other / "file_wide.h5", coils=4, width=48, slices=2)
    result = run_attack(
        "hallucination",
        unet,
        other.parent,
        tmp_path / "a",
        split="val",
        n=2,
        params={"max_iter": 2, "region_size": 4},
    )
    assert result["attacked"] == 2 and result["shapes"] == [[4, 32, 48, 2]]


def test_split_folder_errors_are_one_line(multicoil, tmp_path):
    both = tmp_path / "both"
    for name in ("multicoil_val", "singlecoil_val"):
        (both / name).mkdir(parents=True)
    with pytest.raises(DataError, match="several folders hold the val split"):
        load_groups(both, "recon", "val")
    with pytest.raises(DataError, match="multicoil_test"):
        load_groups(multicoil, "recon", "test")
    test_split = tmp_path / "t" / "multicoil_test"
    test_split.mkdir(parents=True)
    write_volume(test_split / "file_test.h5", target=False)  # fastMRI's test files
    with pytest.raises(DataError, match="no 'reconstruction_rss' target"):
        load_groups(tmp_path / "t", "recon", "test")


@pytest.mark.parametrize(
    "eps, message",
    [
        ("inf", "eps must be a finite number > 0"),
        ("nan", "eps must be a finite number > 0"),
        ("1e9", "must be <= 1"),
    ],
)
def test_attack_budget_errors_are_one_line(multicoil, unet, tmp_path, eps, message):
    out = tmp_path / "never"
    done = defend_main(
        "attack",
        "hallucination",
        "--checkpoint",
        unet,
        "--data",
        multicoil,
        "--split",
        "val",
        "--out",
        out,
        "--eps",
        eps,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and not out.exists()


def test_visible_perturbation_is_flagged():
    from defend.attacks.apply import attack_warnings

    quiet = {"input_psnr": {"mean": 34.0}}
    loud = {"input_psnr": {"mean": 18.0}}
    assert attack_warnings("hallucination", quiet) == []
    [warning] = attack_warnings("hallucination", loud)
    assert "input PSNR 18.0 dB < 30 dB" in warning and "lower --eps" in warning


def test_default_budget_means_the_same_on_small_and_large_kspace():
    """Relative l-inf eps: a perturbation filling the box has l2 norm eps x the k-space norm
    (moving the real parts; sqrt(2) eps moving both, each part in the same box of eps k-space
    units), at 24 and at 320 columns, so the default is as visible on phantoms as on fastMRI
    data."""
    from defend.attacks.budget import KspaceBudget

    for width, height in ((24, 16), (320, 64)):
        k = torch.randn(2, 3, height, width, 2, dtype=torch.float64) * 1e-4
        k[:, :, :, width // 2] *= 300  # a k-space peak: max |k| far above the RMS
        sampled = torch.ones(2, 1, 1, width, 1, dtype=torch.float64)
        for part, movable in (("real", torch.tensor([1.0, 0.0])), ("complex", torch.ones(2))):
            budget = KspaceBudget(0.1, "inf", "relative", part)
            box = budget.bound(k, sampled) * movable.double().expand_as(k)
            ratio = box.flatten(1).norm(dim=1) / k.flatten(1).norm(dim=1)
            expected = 0.1 * float(movable.sum()) ** 0.5
            torch.testing.assert_close(ratio, torch.full((2,), expected, dtype=torch.float64))


def test_certify_covers_every_shape(multicoil, unet, tmp_path):
    """`defend certify` on a split of mixed k-space widths and coil counts certifies every
    sample asked for, each through the smoothing of its shape (its mask's width)."""
    from defend.smooth.certify import certify_split

    summary = certify_split(unet, multicoil, tmp_path / "c", 0.1, split="val", n_samples=9,
                            n0=4, n=600, alpha=0.2, batch_size=64, progress=False)  # fmt: skip
    assert [r["index"] for r in summary["rows"]] == list(range(9))
    assert sum(not r["abstain"] for r in summary["rows"]) > 0


def test_matrix_cells_take_every_shape(multicoil, tmp_path):
    """A recon matrix on a split of mixed widths and coil counts: every cell judges all the
    samples asked for (n = 9 of three shapes), none silently dropped."""
    from defend.matrix import load_config, run_matrix

    config = load_config("smoke")
    config["run"].update(tasks=["recon"], n=9, split="val", adaptive=False)
    config["data"]["path"] = str(multicoil)
    config["recon"].update(defences=["none", "smoothing"], attacks=["hallucination", "noise"])
    run_matrix(config, tmp_path / "m", cache=tmp_path / "cache", progress=False,
               log=lambda line: None)  # fmt: skip
    records = [json.loads(p.read_text()) for p in (tmp_path / "m" / "cells").glob("*.json")]
    assert records and all(r["status"] == "ok" for r in records), records
    assert all(r["n"] == 9 and r["counts"]["linf"] == 9 for r in records)


def test_a_narrow_first_volume_does_not_set_the_reconstruction_size(tmp_path):
    """A brain split whose first file is FLAIR-narrow (20 columns against a 24 x 24
    reconstruction): the model reconstructs 24 x 24 and crops the narrow volume's output to
    20 x 20; before, the first sample's crop became the model's size and training failed on
    the wider volume."""
    for split, seed in (("multicoil_train", 1), ("multicoil_val", 2)):
        (tmp_path / split).mkdir()
        for i, (name, width) in enumerate((("a_flair", 20), ("b_wide", 40))):
            write_volume(tmp_path / split / f"file_{name}.h5", width=width, slices=2,
                         seed=seed * 10 + i)  # fmt: skip
    history = _train(tmp_path, tmp_path / "m.pt")
    assert np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["ssim"])
    assert load_checkpoint(tmp_path / "m.pt")["data"]["target_shape"] == [24, 24]


def test_detection_data_holds_a_narrow_volume_in_the_reconstruction_frame(multicoil, unet,
                                                                          tmp_path):  # fmt: skip
    """The val split mixes 24 x 24 outputs with a FLAIR-narrow volume's 20 x 20: one part
    holds them all, the narrow images centre zero-padded (before, concatenating the shape
    groups failed and `defend train detector` stopped with a traceback)."""
    make_detection_data(unet, multicoil, tmp_path / "det", splits=("val",), max_iter=1,
                        progress=False)  # fmt: skip
    arrays = load_detection_data(tmp_path / "det", "val")
    assert arrays["inputs"].shape[-2:] == (24, 24) and len(arrays["label"]) > 3 * SLICES
    border = np.abs(arrays["inputs"][..., :, :2]).reshape(len(arrays["label"]), -1).max(1)
    assert (border == 0).sum() >= SLICES  # the narrow slices' padding
