"""One entry point per task: the dataset of a split, or its first samples as numpy arrays.

``data_dir`` is laid out as ``defend data synth`` writes it (``data_dir/{train,val,test}/*.h5``,
``data_dir/seg/<split>/{images,masks}``, ``data_dir/cls/<split>/<class>``), or for one task
alone simply ``data_dir/<split>/...``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from defend.data.acquisition import Acquisition
from defend.data.folders import ClsFolder, SegFolder
from defend.data.recon import ReconDataset
from defend.errors import DefendError

TASKS = ("recon", "seg", "cls")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DefendError(f"unknown task '{task}' (expected one of {', '.join(TASKS)})")


def task_root(data_dir: Path, task: str, split: str) -> Path:
    """The folder holding ``split`` of ``task`` under ``data_dir``.

    recon: ``data_dir/split``; seg: ``data_dir/seg/split`` if it exists, else
    ``data_dir/split``; cls: likewise with ``cls``.
    """
    _check_task(task)
    data_dir = Path(data_dir)
    if task == "recon":
        return data_dir / split
    nested = data_dir / task / split
    return nested if nested.is_dir() else data_dir / split


def load_dataset(
    task: str,
    data_dir: Path,
    split: str,
    *,
    train: bool = False,
    acquisition: Acquisition | None = None,
    classes: int | None = None,
    channels: int | None = None,
) -> Dataset:
    """The dataset of one split: :class:`ReconDataset`, :class:`SegFolder` or :class:`ClsFolder`.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        data_dir: data folder (see :func:`task_root`).
        split: ``train``, ``val``, ``test`` (any sub-folder name).
        train: recon only: random masks per sample (True) or the fixed evaluation mask.
        acquisition: recon only: undersampling pattern (default ``Acquisition()``).
        classes: seg only: number of labels (None: inferred from the masks of this split).
        channels: seg/cls: convert images to this many channels (None: as stored).

    Raises:
        DefendError: unknown task. DataError: missing or unusable data.
    """
    _check_task(task)
    root = task_root(data_dir, task, split)
    if task == "recon":
        return ReconDataset(root, acquisition or Acquisition(), train=train)
    if task == "seg":
        return SegFolder(root, classes=classes, channels=channels)
    return ClsFolder(root, channels=channels)


def load_arrays(
    data_dir: Path,
    task: str,
    split: str = "val",
    n: int | None = 16,
    *,
    acquisition: Acquisition | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of a split (dataset order) as numpy arrays for an estimator.

    Returns:
        ``(x, y)``:

        * recon: x float32 ``(n, coils, H, W, 2)`` k-space masked with the fixed evaluation
          mask, y float32 ``(n, h, w)`` targets;
        * seg: x float32 ``(n, C, H, W)`` in ``[0, 1]``, y float32 ``(n, K, H, W)`` in {0, 1};
        * cls: x float32 ``(n, C, H, W)`` in ``[0, 1]``, y int64 ``(n,)``.

        ``n=None`` takes all samples; fewer than ``n`` come back if the split is smaller.
        Samples whose input or target shape differs from the first one's are skipped with a
        warning (e.g. fastMRI volumes of another k-space width).

    Raises:
        DefendError: unknown task or ``n < 1``. DataError: missing or unusable data.
    """
    _check_task(task)
    if n is not None and n < 1:
        raise DefendError(f"n must be >= 1 (or None for all), got {n}")
    dataset = load_dataset(task, data_dir, split, train=False, acquisition=acquisition)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    skipped: list[str] = []
    for i in range(len(dataset)):
        if n is not None and len(xs) >= n:
            break
        sample = dataset[i]
        x = sample["input"].numpy()
        y = sample["target"].numpy()
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            where = sample.get("fname", str(i))
            if "slice_num" in sample:
                where = f"{where} slice {sample['slice_num']}"
            skipped.append(f"{where} {x.shape}")
            continue
        xs.append(x)
        ys.append(y)
    if skipped:
        warnings.warn(
            f"load_arrays: skipped {len(skipped)} {task} sample(s) whose shape differs from the "
            f"first {xs[0].shape}: {', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}",
            stacklevel=2,
        )
    x_arr = np.stack(xs).astype(np.float32, copy=False)
    y_dtype = np.int64 if task == "cls" else np.float32
    y_arr = np.stack(ys).astype(y_dtype, copy=False)
    return x_arr, y_arr
