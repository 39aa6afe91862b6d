"""Tests of defend.data: acquisition masks, synthetic data, recon / seg / cls datasets."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.transforms import UnetDataTransform, VarNetDataTransform, to_tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from defend.data import (
    Acquisition,
    ClsFolder,
    ReconDataset,
    SegFolder,
    load_arrays,
    load_dataset,
    phantom,
    synthesize,
    task_root,
)
from defend.data.synth import ismrmrd_header, split_counts, to_uint8
from defend.errors import DataError, DefendError

SIZE, COILS, VOLUMES, SLICES = 32, 2, 4, 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, size=SIZE, coils=COILS, volumes=VOLUMES, slices=SLICES, seed=3, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    assert name in message, message
    return message


def write_h5(
    path: Path,
    kspace: np.ndarray,
    target: np.ndarray | None = None,
    target_key: str = "reconstruction_rss",
    header: bool = True,
) -> Path:
    """A fastMRI-style file (the header sized from kspace's last two axes)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if header:
            h, w = kspace.shape[-2:]
            f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header(h, w, 1, 1, "t")))
        if target is not None:
            f.create_dataset(target_key, data=target)
            f.attrs["max"] = float(target.max())
    return path


def _multicoil(slices: int = 2, coils: int = 2, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    image, _ = phantom.brain_volume(rng, size, slices)
    kspace = phantom.multicoil_kspace(rng, image, phantom.coil_maps(rng, size, coils))
    target = phantom.rss(phantom.ifft2c(kspace)).astype(np.float32)
    return kspace, target


# --------------------------------------------------------------------------- Acquisition


def test_acquisition_eval_mask_and_dict():
    acq = Acquisition()
    mask = acq.eval_mask(64)
    assert mask.shape == (1, 1, 64, 1) and mask.dtype == torch.bool
    assert torch.equal(mask, Acquisition().eval_mask(64))
    assert not torch.equal(mask, Acquisition(seed=5).eval_mask(64))
    d = acq.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Acquisition.from_dict(d) == acq
    assert Acquisition.from_dict({"acceleration": 8.0, "center_fraction": 0.04}).acceleration == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask_type": "spiral"},
        {"acceleration": 0},
        {"center_fraction": 0.0},
        {"center_fraction": 1.0},
        {"acceleration": 16, "center_fraction": 0.08},
        {"seed": -1},
    ],
)
def test_acquisition_validation(kwargs):
    with pytest.raises(DefendError) as exc:
        Acquisition(**kwargs)
    assert "\n" not in str(exc.value)
    with pytest.raises(DefendError):
        Acquisition.from_dict({"bogus": 1})


@settings(max_examples=40, deadline=None)
@given(
    mask_type=st.sampled_from(["random", "equispaced", "equispaced_fraction", "magic_fraction"]),
    acceleration=st.integers(2, 8),
    center_fraction=st.sampled_from([0.04, 0.08, 0.1]),
    width=st.integers(96, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_acquisition_masks_property(mask_type, acceleration, center_fraction, width, seed):
    if center_fraction * acceleration >= 1:
        return
    acq = Acquisition(mask_type, center_fraction, acceleration, seed)
    mask = acq.eval_mask(width).squeeze()
    assert torch.equal(mask, acq.eval_mask(width).squeeze())  # deterministic
    fraction = mask.float().mean().item()
    if mask_type == "equispaced_fraction":
        assert fraction == pytest.approx(1 / acceleration, abs=0.03)
    elif mask_type == "magic_fraction":
        # fastMRI rounds the line spacing to an integer: 2x can come out as 2.5x
        assert 0.75 / acceleration <= fraction <= 1 / acceleration + center_fraction + 0.02
    elif mask_type == "random":  # outer lines are Bernoulli: allow 6 standard deviations
        outer = width - acq.num_low_frequencies(width)
        p = 1 / acceleration
        assert fraction == pytest.approx(p, abs=6 * (p * (1 - p) / outer) ** 0.5)
    else:  # equispaced: every acceleration-th line plus the centre
        assert 1 / acceleration - 0.02 <= fraction <= 1 / acceleration + center_fraction + 0.02
    if mask_type != "magic_fraction":  # magic_fraction may shrink the centre
        low = acq.num_low_frequencies(width)
        pad = (width - low + 1) // 2
        assert mask[pad : pad + low].all()
        assert mask[width // 2]


# --------------------------------------------------------------------------- phantom


def test_phantom_conventions():
    rng = np.random.default_rng(0)
    image, lesions = phantom.brain_volume(rng, 48, 3)
    assert image.shape == lesions.shape == (3, 48, 48)
    assert image.dtype == np.float32 and lesions.dtype == bool
    assert 0.8 < image.max() < 1.3 and image.min() >= 0
    maps = phantom.coil_maps(rng, 48, 4)
    assert np.allclose((np.abs(maps) ** 2).sum(0), 1, atol=1e-5)
    x = rng.standard_normal((2, 48, 48)) + 1j * rng.standard_normal((2, 48, 48))
    ours = phantom.fft2c(x)
    theirs = fastmri.fft2c(to_tensor(x.astype(np.complex64)))
    assert np.allclose(to_tensor(ours.astype(np.complex64)), theirs, atol=1e-4)
    assert np.allclose(phantom.ifft2c(ours), x)
    # lesions are bright: far above the median of the brain
    rng = np.random.default_rng(1)
    image, lesions = phantom.brain_volume(rng, 64, 8, lesion_prob=1.0)
    assert lesions.any(axis=(1, 2)).all()
    assert image[lesions].mean() > 0.85 > 0.5 > np.median(image[image > 0.2])


# --------------------------------------------------------------------------- synthesize


def test_synth_deterministic(tmp_path):
    kwargs = {"size": 24, "coils": 2, "volumes": 3, "slices": 2, "progress": False}
    synthesize(tmp_path / "a", seed=1, **kwargs)
    synthesize(tmp_path / "b", seed=1, **kwargs)
    synthesize(tmp_path / "c", seed=2, **kwargs)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    h5 = [k for k in a if k.endswith(".h5")]
    assert len(h5) == 3 and all(a[k] != c[k] for k in h5)
    # regenerating in place replaces the earlier set, leaving no stale file behind
    synthesize(tmp_path / "a", seed=1, **kwargs)
    assert _files(tmp_path / "a") == b
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(DefendError, match="not empty"):
        synthesize(tmp_path / "foreign", **kwargs)


def test_synth_layout_and_counts(synth):
    info = json.loads((synth / "dataset.json").read_text())
    assert info["params"]["size"] == SIZE and info["params"]["seed"] == 3
    volumes = {s: len(list((synth / s).glob("*.h5"))) for s in ("train", "val", "test")}
    assert volumes == {"train": 2, "val": 1, "test": 1}
    for split, count in volumes.items():
        assert info["splits"][split]["volumes"] == count
        n_images = len(list((synth / "seg" / split / "images").glob("*.png")))
        n_masks = len(list((synth / "seg" / split / "masks").glob("*.png")))
        n_cls = len(list((synth / "cls" / split).glob("*/*.png")))
        assert n_images == n_masks == n_cls == count * SLICES
        assert (
            len(list((synth / "cls" / split / "lesion").glob("*.png")))
            == (info["splits"][split]["lesion_slices"])
        )
    assert not list(synth.rglob("*.tmp"))


def test_synth_test_volumes_sizes_the_test_split(tmp_path):
    assert split_counts(14, 6) == {"train": 6, "val": 2, "test": 6}
    assert split_counts(14) == {"train": 10, "val": 2, "test": 2}
    kwargs = {"size": 16, "coils": 1, "volumes": 5, "slices": 2, "progress": False, "seed": 1}
    info = synthesize(tmp_path / "a", test_volumes=3, **kwargs)
    assert {s: info["splits"][s]["volumes"] for s in ("train", "val", "test")} == {
        "train": 1,
        "val": 1,
        "test": 3,
    }
    assert info["params"]["test_volumes"] == 3
    # the train volumes are the same files as without test_volumes (volumes in order)
    plain = synthesize(tmp_path / "b", **{**kwargs, "volumes": 3})
    assert "test_volumes" not in plain["params"]
    first = "train/file_brain_AXFLAIR_synth_000.h5"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    with pytest.raises(DefendError, match="leave a volume to train on"):
        split_counts(5, 4)


def test_synth_default_timing(tmp_path, capsys):
    start = time.perf_counter()
    info = synthesize(tmp_path / "default", progress=False)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[defend] default synth: {info['total']} in {seconds:.1f} s")
    assert info["total"]["slices"] == 24 * 8
    assert 0.3 < info["total"]["lesion_slices"] / info["total"]["slices"] < 0.7


def test_synth_files_read_by_fastmri(synth):
    root = synth / "train"
    mask_func = Acquisition().mask_func()
    varnet = SliceDataset(root, "multicoil", transform=VarNetDataTransform(mask_func))
    unet = SliceDataset(root, "multicoil", transform=UnetDataTransform("multicoil", mask_func))
    assert len(varnet) == len(unet) == 2 * SLICES
    v = varnet[1]
    assert v.masked_kspace.shape == (COILS, SIZE, SIZE, 2)
    assert v.mask.dtype == torch.bool and v.target.shape == (SIZE, SIZE)
    assert v.crop_size == (SIZE, SIZE)
    u = unet[1]
    assert u.image.shape == u.target.shape == (SIZE, SIZE)
    _, _, meta = varnet.raw_samples[0]
    assert meta["encoding_size"] == (SIZE, SIZE, 1) and meta["recon_size"] == (SIZE, SIZE, 1)
    assert (meta["padding_left"], meta["padding_right"]) == (0, SIZE)
    for path in root.glob("*.h5"):
        with h5py.File(path, "r") as f:
            kspace, target = f["kspace"][()], f["reconstruction_rss"][()]
            assert kspace.dtype == np.complex64 and kspace.shape == (SLICES, COILS, SIZE, SIZE)
            assert target.dtype == np.float32 and target.shape == (SLICES, SIZE, SIZE)
            assert f.attrs["max"] == pytest.approx(target.max())
            assert f.attrs["norm"] == pytest.approx(np.linalg.norm(target), rel=1e-5)
            assert f.attrs["acquisition"] == "AXFLAIR" and f.attrs["patient_id"]
            assert f["lesion_mask"].dtype == np.uint8
        rss = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(to_tensor(kspace))), dim=1)
        assert torch.allclose(rss, torch.from_numpy(target), atol=1e-5)
        assert 0.8 < target.max() < 1.3


def test_synth_lesion_masks_agree(synth):
    for split in ("train", "val", "test"):
        for path in (synth / split).glob("*.h5"):
            with h5py.File(path, "r") as f:
                lesions = f["lesion_mask"][()]
                target = f["reconstruction_rss"][()]
            for s in range(SLICES):
                name = f"{path.stem}_s{s:02d}.png"
                seg_mask = np.asarray(Image.open(synth / "seg" / split / "masks" / name))
                assert np.array_equal(seg_mask, lesions[s])
                seg_image = np.asarray(Image.open(synth / "seg" / split / "images" / name))
                assert np.array_equal(seg_image, to_uint8(target[s]))
                label = "lesion" if lesions[s].any() else "healthy"
                cls_file = synth / "cls" / split / label / name
                assert (
                    cls_file.read_bytes() == (synth / "seg" / split / "images" / name).read_bytes()
                )


# --------------------------------------------------------------------------- ReconDataset


def test_recon_dataset_eval_and_train_masks(synth):
    acq = Acquisition(center_fraction=0.1)
    ds = ReconDataset(synth / "train", acq, train=False)
    assert ds.challenge == "multicoil" and len(ds) == 2 * SLICES
    expected = acq.eval_mask(SIZE)
    for i in (0, 3, len(ds) - 1):
        s = ds[i]
        assert s["input"].shape == (COILS, SIZE, SIZE, 2) and s["input"].dtype == torch.float32
        assert s["mask"].shape == (1, 1, SIZE, 1) and s["mask"].dtype == torch.bool
        assert torch.equal(s["mask"], expected)
        assert s["target"].shape == (SIZE, SIZE) and s["target"].dtype == torch.float32
        assert isinstance(s["max_value"], float) and isinstance(s["slice_num"], int)
        columns = s["mask"].squeeze()
        assert (s["input"][:, :, ~columns] == 0).all()
        assert not torch.signbit(s["input"][:, :, ~columns]).any()
        assert (s["input"][:, :, columns] != 0).any()
    assert torch.equal(ds[2]["input"], ds[2]["input"])  # evaluation is deterministic
    train = ReconDataset(synth / "train", acq, train=True)
    masks = []
    for epoch in range(6):  # a fresh mask per epoch, fixed by (epoch seed, file, slice)
        train.set_epoch(epoch)
        masks.append(train[0]["mask"])
        torch.manual_seed(epoch)  # the global RNG plays no part
        assert torch.equal(train[0]["mask"], masks[-1])
    assert any(not torch.equal(masks[0], m) for m in masks[1:])
    for m in masks:
        assert (train[0]["input"].shape == (COILS, SIZE, SIZE, 2)) and m.dtype == torch.bool
    s = train[1]
    assert (s["input"][:, :, ~s["mask"].squeeze()] == 0).all()


def test_recon_dataset_single_coil(tmp_path):
    kspace, target = _multicoil(slices=3, coils=1, size=16)
    write_h5(tmp_path / "sc.h5", kspace[:, 0], target[:, 4:12, 4:12], "reconstruction_esc")
    (tmp_path / "notes.txt").write_text("not a data file")  # ignored
    ds = ReconDataset(tmp_path, Acquisition(), train=False)
    assert ds.challenge == "singlecoil" and len(ds) == 3
    s = ds[2]
    assert s["input"].shape == (1, 16, 16, 2) and s["target"].shape == (8, 8)
    assert (s["input"][:, :, ~s["mask"].squeeze()] == 0).all()


def test_recon_dataset_errors(tmp_path):
    acq = Acquisition()
    with pytest.raises(DataError) as exc:
        ReconDataset(tmp_path / "missing", acq, train=False)
    _one_line(exc, "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        ReconDataset(empty, acq, train=False)
    _one_line(exc, "empty")

    kspace, target = _multicoil()
    cases = {
        "truncated": lambda p: _truncate(write_h5(p, kspace, target)),
        "text": lambda p: p.write_text("hello, not HDF5"),
        "nokspace": lambda p: _without(write_h5(p, kspace, target), "kspace"),
        "ndim5": lambda p: write_h5(p, kspace[None], target),
        "noheader": lambda p: write_h5(p, kspace, target, header=False),
        "notarget": lambda p: write_h5(p, kspace),
    }
    for name, make in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        make(folder / f"{name}_file.h5")
        with pytest.raises(DataError) as exc:
            ReconDataset(folder, acq, train=False)
        message = _one_line(exc, f"{name}_file.h5")
        if name == "notarget":
            assert "target" in message
    # single-coil data read as multi-coil: wrong ndim for the challenge
    folder = tmp_path / "wrongchallenge"
    folder.mkdir()
    write_h5(folder / "sc_file.h5", kspace[:, 0], target, "reconstruction_esc")
    with pytest.raises(DataError) as exc:
        ReconDataset(folder, acq, train=False, challenge="multicoil")
    assert "dimensions" in _one_line(exc, "sc_file.h5")
    # NaN in one slice: found when that slice is read
    folder = tmp_path / "nan"
    folder.mkdir()
    bad = kspace.copy()
    bad[1, 0, 3, 3] = np.nan
    write_h5(folder / "nan_file.h5", bad, target)
    ds = ReconDataset(folder, acq, train=False)
    ds[0]
    with pytest.raises(DataError) as exc:
        ds[1]
    assert "slice 1" in _one_line(exc, "nan_file.h5")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without(path: Path, key: str) -> None:
    with h5py.File(path, "a") as f:
        del f[key]


# --------------------------------------------------------------------------- SegFolder


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_seg_folder_formats(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "seg"
    # PNG image + 0/255 binary mask -> one label
    img8 = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    _png(root / "images" / "a.png", img8)
    binary = np.zeros((12, 10), np.uint8)
    binary[2:5, 3:6] = 255
    _png(root / "masks" / "a.png", binary)
    ds = SegFolder(root)
    assert ds.classes == 1 and len(ds) == 1
    s = ds[0]
    assert s["input"].shape == (1, 12, 10) and s["input"].dtype == torch.float32
    assert torch.allclose(s["input"][0], torch.from_numpy(img8 / 255.0).float())
    assert s["target"].shape == (1, 12, 10) and s["target"].sum() == 9
    assert s["fname"] == "a.png"

    # 16-bit TIFF image + TIFF label indices 0..3 -> three channels
    img16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(img16).save(root / "images" / "b.tif")
    labels = np.zeros((12, 10), np.uint8)
    labels[0, 0], labels[1, 1], labels[2, 2] = 1, 2, 3
    Image.fromarray(labels).save(root / "masks" / "b.tiff")
    # NPY float image (C, H, W) + NPY multi-hot mask (K, H, W): overlapping labels
    img_f = rng.normal(size=(1, 12, 10)) * 100
    np.save(root / "images" / "c.npy", img_f)
    multi = np.zeros((3, 12, 10), np.uint8)
    multi[0, :4] = 1
    multi[2, 2:6] = 1
    np.save(root / "masks" / "c.npy", multi)
    # NPY (H, W) image + NPY (H, W) label indices
    np.save(root / "images" / "d.npy", rng.random((12, 10)).astype(np.float32))
    np.save(root / "masks" / "d.npy", labels.astype(np.int64))

    ds = SegFolder(root)
    assert ds.classes == 3 and [p.name for p, _ in ds.pairs] == ["a.png", "b.tif", "c.npy", "d.npy"]
    batch = [ds[i] for i in range(len(ds))]
    for s in batch:
        assert s["input"].shape == (1, 12, 10) and s["target"].shape == (3, 12, 10)
        assert 0 <= s["input"].min() and s["input"].max() <= 1
        assert set(s["target"].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(batch[1]["input"][0], torch.from_numpy(img16 / 65535.0).float())
    assert [batch[1]["target"][k, k, k].item() for k in range(3)] == [1, 1, 1]
    assert batch[1]["target"].sum() == 3
    assert batch[2]["input"].min() == 0 and batch[2]["input"].max() == 1  # min-max
    assert torch.equal(batch[2]["target"], torch.from_numpy(multi).float())
    assert batch[0]["target"][1:].sum() == 0  # binary label 1 -> channel 0 only
    assert SegFolder(root, classes=5)[0]["target"].shape == (5, 12, 10)
    assert SegFolder(root, channels=3)[0]["input"].shape == (3, 12, 10)


def test_seg_folder_errors(tmp_path):
    with pytest.raises(DataError) as exc:
        SegFolder(tmp_path / "nowhere")
    _one_line(exc, "nowhere")
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DataError) as exc:
        SegFolder(root)
    _one_line(exc, "images")

    _png(root / "images" / "lonely.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as exc:
        SegFolder(root)
    _one_line(exc, "lonely.png")

    _png(root / "masks" / "lonely.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError) as exc:
        SegFolder(root, classes=1)[0]
    _one_line(exc, "lonely.png")
    (root / "images" / "lonely.png").unlink()
    (root / "masks" / "lonely.png").unlink()

    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _png(root / "masks" / "broken.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as exc:
        SegFolder(root, classes=1)[0]
    _one_line(exc, "broken.png")
    (root / "images" / "broken.png").unlink()
    (root / "masks" / "broken.png").unlink()

    bad = np.zeros((8, 8), np.float32)
    bad[1, 1] = np.inf
    np.save(root / "images" / "inf.npy", bad)
    _png(root / "masks" / "inf.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError) as exc:
        SegFolder(root)[0]
    _one_line(exc, "inf.npy")


# --------------------------------------------------------------------------- ClsFolder


def test_cls_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cls"
    _png(root / "cat" / "0.png", rng.integers(0, 256, (9, 7), dtype=np.uint8))
    _png(root / "dog" / "1.png", rng.integers(0, 256, (9, 7), dtype=np.uint8))
    _png(root / "dog" / "2.png", rng.integers(0, 256, (9, 7), dtype=np.uint8))
    ds = ClsFolder(root)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3 and ds.channels == 1
    s = ds[2]
    assert s["input"].shape == (1, 9, 7) and s["input"].dtype == torch.float32
    assert s["target"].dtype == torch.int64 and s["target"].shape == () and s["target"] == 1
    assert ClsFolder(root, channels=3)[0]["input"].shape == (3, 9, 7)
    _png(root / "dog" / "3.png", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    ds = ClsFolder(root)
    assert ds.channels == 3 and ds[0]["input"].shape == (3, 9, 7) and ds[3]["input"].max() <= 1

    with pytest.raises(DataError) as exc:
        ClsFolder(tmp_path / "absent")
    _one_line(exc, "absent")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        ClsFolder(tmp_path / "hollow")
    _one_line(exc, "hollow")


# --------------------------------------------------------------------------- arrays


def test_task_root(synth, tmp_path):
    assert task_root(synth, "recon", "val") == synth / "val"
    assert task_root(synth, "seg", "val") == synth / "seg" / "val"
    assert task_root(synth, "cls", "test") == synth / "cls" / "test"
    assert task_root(tmp_path, "seg", "val") == tmp_path / "val"
    with pytest.raises(DefendError, match="unknown task"):
        task_root(synth, "detect", "val")
    with pytest.raises(DefendError, match="unknown task"):
        load_arrays(synth, "detect")


def test_load_arrays_all_tasks(synth):
    x, y = load_arrays(synth, "recon", "train", n=5)
    assert x.shape == (5, COILS, SIZE, SIZE, 2) and x.dtype == np.float32
    assert y.shape == (5, SIZE, SIZE) and y.dtype == np.float32
    columns = Acquisition().eval_mask(SIZE).squeeze().numpy()
    assert (x[:, :, :, ~columns] == 0).all()
    ds = load_dataset("recon", synth, "train")
    assert np.array_equal(x[3], ds[3]["input"].numpy())

    x, y = load_arrays(synth, "seg", "val", n=None)
    assert x.shape == (SLICES, 1, SIZE, SIZE) and x.dtype == np.float32
    assert y.shape == (SLICES, 1, SIZE, SIZE) and y.dtype == np.float32

    x, y = load_arrays(synth, "cls", "test", n=100)
    assert x.shape == (SLICES, 1, SIZE, SIZE) and x.dtype == np.float32
    assert y.shape == (SLICES,) and y.dtype == np.int64 and set(y.tolist()) <= {0, 1}
    with pytest.raises(DefendError):
        load_arrays(synth, "cls", "test", n=0)


def test_load_arrays_skips_other_shapes(synth, tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    for p in (synth / "val").glob("*.h5"):
        (folder / p.name).write_bytes(p.read_bytes())
    kspace, target = _multicoil(slices=2, coils=COILS, size=16)
    write_h5(folder / "zz_small.h5", kspace, target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = load_arrays(tmp_path, "recon", "val", n=None)
    assert x.shape == (SLICES, COILS, SIZE, SIZE, 2) and y.shape == (SLICES, SIZE, SIZE)
    assert any("zz_small.h5" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- class map, indices


def _cls_split(root: Path, counts: dict[str, int], seed: int = 0, size: int = 8) -> Path:
    """``root/<class>/<i>.png`` grayscale images, ``counts[class]`` of each."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _png(root / name / f"{name}{i}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return root


def test_cls_split_with_one_class_keeps_training_indices(tmp_path):
    """Item 5: a split holding only lesion/ labels it 1 (its index in the training split)."""
    data = tmp_path / "data"
    _cls_split(data / "cls" / "train", {"healthy": 2, "lesion": 2})
    _cls_split(data / "cls" / "test", {"lesion": 3}, seed=1)
    train = ClsFolder(data / "cls" / "train")
    assert train.classes == ["healthy", "lesion"] and train.targets == [0, 0, 1, 1]
    test = ClsFolder(data / "cls" / "test", classes=train.classes)
    assert test.classes == ["healthy", "lesion"] and test.class_to_idx["lesion"] == 1
    assert test.targets == [1, 1, 1] and int(test[2]["target"]) == 1
    ds = load_dataset("cls", data, "test", classes=train.classes, channels=3)
    assert ds.targets == [1, 1, 1] and ds[0]["input"].shape == (3, 8, 8)
    # index = position in the list, not the sorted order
    assert ClsFolder(data / "cls" / "test", classes=["lesion", "healthy"]).targets == [0, 0, 0]
    # an empty class folder is a class this split lacks: allowed with the training classes
    (data / "cls" / "test" / "healthy").mkdir()
    (data / "cls" / "test" / ".ipynb_checkpoints").mkdir()  # hidden folders are no class
    assert ClsFolder(data / "cls" / "test", classes=train.classes).targets == [1, 1, 1]
    with pytest.raises(DataError) as exc:
        ClsFolder(data / "cls" / "test")  # its own map: an empty class is an error
    _one_line(exc, "healthy")


def test_cls_unknown_class_folder_is_one_line_error(tmp_path):
    root = _cls_split(tmp_path / "test", {"lesion": 1, "tumour": 1})
    with pytest.raises(DataError) as exc:
        ClsFolder(root, classes=["healthy", "lesion"])
    message = _one_line(exc, "tumour")
    assert "healthy" in message and "lesion" in message
    for bad in ([], ["a", "a"], "healthy", [1, 2]):
        with pytest.raises(DataError):
            ClsFolder(root, classes=bad)


def test_train_model_validates_with_training_class_map(tmp_path, monkeypatch):
    """The val split (lesion only, RGB) is read with the training split's classes and channels."""
    import defend.train.from_folder as build

    data = tmp_path / "data"
    _cls_split(data / "cls" / "train", {"healthy": 2, "lesion": 2})
    (data / "cls" / "val" / "lesion").mkdir(parents=True)
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _png(data / "cls" / "val" / "lesion" / "v0.png", rgb)
    seen: dict = {}

    def fake_fit(task, net, train_set, val_set, config, out, meta, resume, log, objective=None):
        seen.update(val=val_set, meta=meta)
        return []

    monkeypatch.setattr(build, "fit", fake_fit)
    build.train_model("cls", data, tmp_path / "cls.pt", log=lambda s: None)
    val = seen["val"]
    assert val.classes == ["healthy", "lesion"] and val.targets == [1]
    assert val.channels == 1 and val[0]["input"].shape == (1, 8, 8)
    assert seen["meta"]["data"]["classes"] == ["healthy", "lesion"]
    assert seen["meta"]["data"]["input_shape"] == [1, 8, 8]


def test_load_arrays_checkpoint_gives_training_map(tmp_path, synth):
    from defend.io import save_checkpoint

    data = tmp_path / "data"
    _cls_split(data / "cls" / "test", {"lesion": 3})
    ckpt = {"task": "cls", "data": {"classes": ["healthy", "lesion"], "input_shape": [3, 8, 8]}}
    path = save_checkpoint(tmp_path / "cls.pt", ckpt)
    for source in (ckpt, path, str(path)):
        x, y = load_arrays(data, "cls", "test", None, checkpoint=source)
        assert y.tolist() == [1, 1, 1] and x.shape == (3, 3, 8, 8)
    x, y = load_arrays(data, "cls", "test", checkpoint=ckpt, classes=["healthy", "lesion"])
    assert y.tolist() == [1, 1, 1]
    with pytest.raises(DefendError, match="contradicts"):
        load_arrays(data, "cls", "test", checkpoint=ckpt, classes=["lesion"])
    with pytest.raises(DefendError, match="contradicts"):
        load_arrays(data, "cls", "test", checkpoint=ckpt, channels=1)
    with pytest.raises(DefendError, match="acquisition does not apply"):
        load_arrays(data, "cls", "test", checkpoint=ckpt, acquisition=Acquisition())
    with pytest.raises(DefendError, match="acquisition does not apply"):
        load_arrays(data, "cls", "test", acquisition=Acquisition())
    with pytest.raises(DefendError, match="'cls' checkpoint"):
        load_arrays(synth, "seg", "test", checkpoint=path)
    with pytest.raises(DefendError, match="lacks"):
        load_arrays(data, "cls", "test", checkpoint={"task": "cls", "data": {}})
    # seg: the label count and channels
    seg_ckpt = {"task": "seg", "data": {"classes": 2, "input_shape": [3, SIZE, SIZE]}}
    x, y = load_arrays(synth, "seg", "test", 2, checkpoint=seg_ckpt)
    assert x.shape == (2, 3, SIZE, SIZE) and y.shape == (2, 2, SIZE, SIZE)
    assert (y[:, 1] == 0).all()
    # recon: the acquisition
    acq = Acquisition(center_fraction=0.04, acceleration=8)
    recon_ckpt = {"task": "recon", "data": {"acquisition": acq.to_dict()}}
    x, _ = load_arrays(synth, "recon", "test", 2, checkpoint=recon_ckpt)
    assert np.array_equal(x, load_arrays(synth, "recon", "test", 2, acquisition=acq)[0])
    assert not np.array_equal(x, load_arrays(synth, "recon", "test", 2)[0])
    with pytest.raises(DefendError, match="contradicts"):
        load_arrays(synth, "recon", "test", 2, checkpoint=recon_ckpt, acquisition=Acquisition())
    with pytest.raises(DefendError, match="does not apply to recon"):
        load_arrays(synth, "recon", "test", 2, checkpoint=recon_ckpt, channels=1)


def test_load_arrays_indices(synth, tmp_path):
    ds = load_dataset("recon", synth, "train")
    x, y = load_arrays(synth, "recon", "train", indices=[5, 0, 5])
    assert x.shape == (3, COILS, SIZE, SIZE, 2) and y.shape == (3, SIZE, SIZE)
    for row, index in enumerate([5, 0, 5]):
        assert np.array_equal(x[row], ds[index]["input"].numpy())
        assert np.array_equal(y[row], ds[index]["target"].numpy())
    # n is ignored with indices; numpy integer arrays work
    x2, _ = load_arrays(synth, "recon", "train", n=1, indices=np.array([5, 0, 5]))
    assert np.array_equal(x, x2)
    # shards over indices give the same rows as one call
    full_x, full_y = load_arrays(synth, "cls", "val", None)
    parts = [load_arrays(synth, "cls", "val", indices=range(i, len(full_x), 3)) for i in range(3)]
    for i, (px, py) in enumerate(parts):
        assert np.array_equal(px, full_x[i::3]) and np.array_equal(py, full_y[i::3])
    for bad in ([len(ds)], [-1], [], [0.5], [True], "01"):
        with pytest.raises(DefendError) as exc:
            load_arrays(synth, "recon", "train", indices=bad)
        assert "\n" not in str(exc.value)
    with pytest.raises(DefendError, match=f"{len(ds)}"):
        load_arrays(synth, "recon", "train", indices=[0, len(ds) + 3])
    # a sample of another shape: skipped with a warning by n, an error (naming it) by indices
    folder = tmp_path / "val"
    folder.mkdir()
    for p in (synth / "val").glob("*.h5"):
        (folder / p.name).write_bytes(p.read_bytes())
    kspace, target = _multicoil(slices=2, coils=COILS, size=16)
    write_h5(folder / "zz_small.h5", kspace, target)
    with pytest.raises(DataError) as exc:
        load_arrays(tmp_path, "recon", "val", indices=[0, SLICES + 1])
    assert "zz_small.h5 slice 1" in _one_line(exc, f"#{SLICES + 1}")
    x, _ = load_arrays(tmp_path, "recon", "val", indices=[SLICES + 1, SLICES])
    assert x.shape == (2, COILS, 16, 16, 2)
