"""Reconstruction samples from a folder of fastMRI HDF5 files.

:class:`ReconDataset` wraps ``fastmri.data.SliceDataset`` (single- or multi-coil, knee or
brain) and returns the dict samples of ``docs/design.md``. Every ``*.h5`` file is checked
before use, so a bad file fails with a one-line :class:`~defend.errors.DataError` naming it
instead of a traceback from deep inside h5py or fastMRI.
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from fastmri.data import SliceDataset
from fastmri.data.mri_data import et_query
from fastmri.data.transforms import apply_mask, center_crop, to_tensor
from torch.utils.data import Dataset

from defend.data.acquisition import Acquisition
from defend.errors import DataError
from defend.kspace import fit_crop

CHALLENGES = {"singlecoil": 3, "multicoil": 4}  # challenge -> kspace ndim (with slices)
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}


class FileInfo(NamedTuple):
    """What :func:`check_file` learns of one file without reading its arrays."""

    slices: int
    #: ``(coils, H, W)`` of one slice's k-space (single-coil: ``coils = 1``)
    kspace_shape: tuple[int, int, int]
    #: ``(h, w)`` of the stored target
    target_shape: tuple[int, int]

    def sample_shapes(self) -> tuple[tuple[int, ...], tuple[int, int]]:
        """``(input shape (coils, H, W, 2), target shape (h, w))`` of this file's samples:
        the target as :func:`crop_target` leaves it."""
        coils, height, width = self.kspace_shape
        return (coils, height, width, 2), target_crop((height, width), self.target_shape)


def target_crop(image_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """The size a stored target ``(h, w)`` is centre-cropped to for k-space of ``(H, W)``:
    itself, unless the image is narrower (fastMRI's FLAIR rule, :func:`fit_crop`)."""
    h, w = fit_crop(image_hw, target_hw)
    return min(h, target_hw[0]), min(w, target_hw[1])


def recon_size(dataset: Any) -> tuple[int, int] | None:
    """The reconstruction size ``(h, w)`` of a :class:`ReconDataset`: the largest stored
    target over its files (fastMRI's 320 x 320), which a narrower volume's samples are cropped
    from (:func:`target_crop`); None for a dataset without file headers."""
    infos = getattr(dataset, "file_info", None)
    if not infos:
        return None
    shapes = [info.target_shape for info in infos.values()]
    return max(h for h, _ in shapes), max(w for _, w in shapes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_header(path: Path, raw: Any) -> None:
    """Parse the fields of ``ismrmrd_header`` that ``SliceDataset`` reads."""
    try:
        root = etree.fromstring(raw)
        enc = ["encoding", "encodedSpace", "matrixSize"]
        rec = ["encoding", "reconSpace", "matrixSize"]
        lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
        for q in [enc + [a] for a in "xyz"] + [rec + [a] for a in "xyz"]:
            int(et_query(root, q))
        int(et_query(root, lims + ["center"]))
        int(et_query(root, lims + ["maximum"]))
    except (etree.ParseError, RuntimeError, ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: unusable ismrmrd_header (needs encodedSpace/reconSpace matrixSize and "
            f"kspace_encoding_step_1 center/maximum: {_first_line(exc)})"
        ) from None


def _check_extent(path: Path, dset: h5py.Dataset) -> None:
    """Raise if the stored bytes of ``dset`` run past the end of the file (truncated copy)."""
    size = path.stat().st_size
    dsid = dset.id
    try:
        offset = dsid.get_offset()
        if offset is not None:  # contiguous layout
            end = offset + dsid.get_storage_size()
        elif dsid.get_num_chunks() > 0:  # chunked: the chunk that ends last
            end = 0
            for i in range(dsid.get_num_chunks()):
                info = dsid.get_chunk_info(i)
                end = max(end, info.byte_offset + info.size)
        else:
            return
    except (AttributeError, RuntimeError, ValueError):  # layout we cannot inspect cheaply
        return
    if end > size:
        raise DataError(
            f"{path}: truncated file ({dset.name.lstrip('/')} needs {end} bytes, file has {size})"
        )


def detect_challenge(path: Path) -> str:
    """``"singlecoil"`` or ``"multicoil"`` from the k-space ndim of one file (3 or 4)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise DataError(f"{path}: no 'kspace' dataset")
            ndim = f["kspace"].ndim
    except OSError as exc:
        raise DataError(f"{path}: not an HDF5 file or truncated ({_first_line(exc)})") from None
    for challenge, n in CHALLENGES.items():
        if ndim == n:
            return challenge
    raise DataError(
        f"{path}: kspace has {ndim} dimensions; expected 3 (slices, H, W: single-coil) or "
        "4 (slices, coils, H, W: multi-coil)"
    )


def check_file(path: Path, challenge: str) -> FileInfo:
    """Validate one fastMRI HDF5 file for ``challenge``; return its slice count and shapes.

    Raises:
        DataError: not an HDF5 file / truncated, no ``kspace`` or wrong ndim / not complex,
            no ``ismrmrd_header`` or one ``SliceDataset`` cannot parse, no target
            (``reconstruction_rss`` / ``reconstruction_esc``) or one of the wrong shape.
    """
    path = Path(path)
    ndim = CHALLENGES[challenge]
    target_key = TARGET_KEYS[challenge]
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
                raise DataError(f"{path}: no 'kspace' dataset")
            kspace = f["kspace"]
            if kspace.ndim != ndim:
                layout = "(slices, H, W)" if ndim == 3 else "(slices, coils, H, W)"
                raise DataError(
                    f"{path}: kspace has {kspace.ndim} dimensions, {challenge} needs {ndim} "
                    f"{layout}"
                )
            if kspace.dtype.kind != "c":
                raise DataError(f"{path}: kspace is {kspace.dtype}, expected complex")
            if kspace.shape[0] == 0 or 0 in kspace.shape:
                raise DataError(f"{path}: kspace is empty, shape {kspace.shape}")
            if "ismrmrd_header" not in f:
                raise DataError(f"{path}: no 'ismrmrd_header' dataset")
            _check_header(path, f["ismrmrd_header"][()])
            if target_key not in f:
                raise DataError(
                    f"{path}: no '{target_key}' target (a fastMRI test file?); "
                    "cannot train or evaluate without targets"
                )
            target = f[target_key]
            if target.ndim != 3 or target.shape[0] != kspace.shape[0]:
                raise DataError(
                    f"{path}: {target_key} has shape {target.shape}, expected "
                    f"({kspace.shape[0]}, h, w)"
                )
            for dset in (kspace, target):
                _check_extent(path, dset)
            coils = 1 if ndim == 3 else int(kspace.shape[1])
            return FileInfo(
                slices=int(kspace.shape[0]),
                kspace_shape=(coils, int(kspace.shape[-2]), int(kspace.shape[-1])),
                target_shape=(int(target.shape[-2]), int(target.shape[-1])),
            )
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: not an HDF5 file or truncated ({_first_line(exc)})") from None


class _CheckedSliceDataset(SliceDataset):
    """``SliceDataset`` over a fixed list of validated files.

    fastMRI lists every entry of ``root``; anything that is not one of our checked ``*.h5``
    files (a README, a cache file, a half-written temporary file) gets zero slices instead of
    crashing h5py.
    """

    def __init__(self, root: Path, challenge: str, files: list[Path], **kwargs: Any) -> None:
        self._allowed = {f.resolve() for f in files}
        super().__init__(root, challenge, **kwargs)

    def _retrieve_metadata(self, fname):
        if Path(fname).resolve() not in self._allowed:
            return {}, 0
        try:
            return super()._retrieve_metadata(fname)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"{fname}: unreadable metadata ({_first_line(exc)})") from None


class _ReconTransform:
    """fastMRI transform -> the recon sample dict (picklable for DataLoader workers)."""

    def __init__(self, root: Path, acquisition: Acquisition, train: bool) -> None:
        self.root = root
        self.acquisition = acquisition
        self.train = train
        self.mask_func = acquisition.mask_func()
        self.epoch_seed = 0

    def seed(self, fname: str, slice_num: int) -> int:
        """Mask seed: the acquisition's fixed seed (eval), or (train) one drawn from the epoch
        seed, the file name and the slice, so that a sample's mask does not depend on batch
        size, sample order or DataLoader workers."""
        if not self.train:
            return self.acquisition.seed
        entropy = [self.epoch_seed, zlib.crc32(fname.encode("utf-8")), int(slice_num)]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def __call__(
        self,
        kspace: np.ndarray,
        mask: np.ndarray | None,
        target: np.ndarray | None,
        attrs: dict[str, Any],
        fname: str,
        slice_num: int,
    ) -> dict[str, Any]:
        where = f"{self.root / fname}: slice {slice_num}"
        if not np.isfinite(kspace).all():
            raise DataError(f"{where}: kspace holds NaN or Inf")
        if target is None:
            raise DataError(f"{where}: no target; cannot train or evaluate without targets")
        if not np.isfinite(target).all():
            raise DataError(f"{where}: target holds NaN or Inf")
        if kspace.ndim == 2:  # single-coil: add the coil axis
            kspace = kspace[None]
        k = to_tensor(np.ascontiguousarray(kspace, dtype=np.complex64))  # (coils, H, W, 2)
        width = k.shape[-2]
        # fastMRI's padding: columns outside [padding_left, padding_right) were not acquired
        left = min(max(int(attrs.get("padding_left", 0)), 0), width)
        right = min(max(int(attrs.get("padding_right", width)), left), width)
        # with the eval seed this is exactly acquisition.eval_mask(W) (same MaskFunc, same seed)
        masked, sample_mask, _ = apply_mask(
            k, self.mask_func, seed=self.seed(fname, slice_num), padding=(left, right)
        )
        max_value = float(attrs["max"]) if "max" in attrs else float(np.max(target))
        target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
        crop = target_crop(tuple(k.shape[1:3]), tuple(target_t.shape))
        if crop != tuple(target_t.shape):  # a volume narrower than the reconstruction size
            target_t = center_crop(target_t, crop).contiguous()
        return {
            "input": masked,
            "mask": sample_mask.to(torch.bool),
            "target": target_t,
            "max_value": max_value,
            "fname": fname,
            "slice_num": int(slice_num),
        }


class ReconDataset(Dataset):
    """Masked k-space / target pairs from a folder of fastMRI HDF5 files.

    Samples are dicts (``docs/design.md``):

    * ``input``: masked k-space, float32 ``(coils, H, W, 2)`` (real, imaginary; single-coil
      data gets ``coils = 1``); exactly zero in unsampled columns.
    * ``mask``: bool ``(1, 1, W, 1)``, True for sampled columns (columns outside fastMRI's
      acquired range ``[padding_left, padding_right)`` are False).
    * ``target``: float32 ``(h, w)``, ``reconstruction_rss`` (multi-coil) or
      ``reconstruction_esc`` (single-coil) as stored; centre-cropped to the image width for a
      volume narrower than it (:func:`target_crop`, fastMRI's FLAIR rule).
    * ``max_value``: float, the file's ``max`` attribute (the volume's target maximum).
    * ``fname``: file name, ``slice_num``: slice index.

    Args:
        root: folder of ``*.h5`` files.
        acquisition: undersampling pattern.
        train: True draws a random mask per sample, seeded by :meth:`set_epoch`, the file
            name and the slice; False uses the fixed ``acquisition.eval_mask(W)`` for every
            sample (deterministic evaluation).
        challenge: ``"singlecoil"``, ``"multicoil"``, or None to detect from the first file
            (k-space ndim 3 or 4).

    Raises:
        DataError: folder missing or without ``*.h5`` files, or a file that fails
            :func:`check_file`. NaN/Inf k-space is found lazily, in ``__getitem__``.
    """

    def __init__(
        self,
        root: Path,
        acquisition: Acquisition,
        train: bool,
        challenge: str | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        files = sorted(p for p in root.glob("*.h5") if p.is_file())
        if not files:
            raise DataError(f"{root}: no *.h5 files")
        if challenge is None:
            challenge = detect_challenge(files[0])
        elif challenge not in CHALLENGES:
            raise DataError(f"unknown challenge '{challenge}' (expected singlecoil or multicoil)")
        self.file_info = {f.name: check_file(f, challenge) for f in files}
        self.root = root
        self.files = files
        self.challenge = challenge
        self.acquisition = acquisition
        self.train = train
        self.transform = _ReconTransform(root, acquisition, train)
        self._slices = _CheckedSliceDataset(
            root, challenge, files, transform=self.transform, use_dataset_cache=False
        )

    def __len__(self) -> int:
        return len(self._slices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._slices[index]

    def set_epoch(self, seed: int) -> None:
        """Seed the random training masks of one epoch (each sample's mask is drawn from
        ``seed``, its file name and slice, whichever worker loads it)."""
        self.transform.epoch_seed = int(seed)

    def shape_keys(self) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
        """``(input shape, target shape)`` of every sample, in dataset order, from the file
        headers: samples that can be stacked into one batch share a key (fastMRI mixes
        k-space widths and coil counts across volumes)."""
        return [self.file_info[Path(f).name].sample_shapes() for f, _, _ in self.raw_samples]

    @property
    def paths(self) -> list[Path]:
        """The data files, sorted."""
        return list(self.files)

    @property
    def raw_samples(self) -> list:
        """fastMRI's ``(fname, slice_ind, metadata)`` list, in dataset order."""
        return self._slices.raw_samples

    def __repr__(self) -> str:
        mode = "train (random masks)" if self.train else "eval (fixed mask)"
        return (
            f"ReconDataset({self.root}, {self.challenge}, {len(self.files)} files, "
            f"{len(self)} slices, {self.acquisition}, {mode})"
        )
