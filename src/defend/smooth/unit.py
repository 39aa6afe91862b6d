"""The k-space unit of a reconstruction model's training split: the scale of the k-space
smoothing noise, fixed before any input is seen (:class:`defend.smooth.noise.KspaceNoise`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.attacks.budget import kspace_unit
from defend.data import Acquisition
from defend.data.arrays import load_groups, split_size
from defend.errors import DefendError
from defend.io import load_checkpoint

#: at most this many training slices (spread over the split) measure the k-space unit
UNIT_SAMPLES = 256


def training_unit(
    data_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    samples: int = UNIT_SAMPLES,
) -> float:
    """The k-space unit of a reconstruction model's training split, fixed before any input
    is smoothed (:class:`KspaceNoise`'s ``unit``).

    The root-mean-square magnitude of the sampled complex entries
    (:func:`defend.attacks.budget.kspace_unit`) pooled over at most ``samples`` training
    slices, every k-th from the first so that they spread over the split, each read as the
    model reads it (the checkpoint's acquisition: its evaluation mask of the slice's width);
    summed in float64, so the same data and checkpoint give the same number.

    Returns:
        The unit, raw k-space units (> 0).
    """

    ckpt = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    data = ckpt["data"]
    key = str(Path(data_dir).resolve()), repr(sorted(data["acquisition"].items())), samples
    return _training_unit(key, ckpt)


#: units computed in this process, by (data folder, acquisition, samples)
_UNITS: dict[tuple, float] = {}


def _training_unit(key: tuple, ckpt: dict[str, Any]) -> float:
    """:func:`training_unit`, computed once per (data folder, acquisition, samples) in a
    process."""

    if key in _UNITS:
        return _UNITS[key]
    data_dir, _, samples = key
    size = split_size(Path(data_dir), "recon", "train", ckpt)
    positions = np.arange(0, size, max(1, math.ceil(size / samples)))[:samples]
    acquisition = Acquisition.from_dict(ckpt["data"]["acquisition"])
    energy, entries = 0.0, 0.0
    for first in range(0, len(positions), 16):  # 16 slices in memory at a time
        chunk = positions[first : first + 16]
        for x, _, _ in load_groups(Path(data_dir), "recon", "train", indices=chunk,
                                   checkpoint=ckpt):  # fmt: skip
            k = torch.as_tensor(x, dtype=torch.float64)
            mask = acquisition.eval_mask(k.shape[-2]).reshape(1, 1, 1, -1, 1).double()
            rms = kspace_unit(k, mask).flatten()
            count = float(mask.sum()) * k.shape[1] * k.shape[2]
            energy += float((rms.square() * count).sum())
            entries += count * len(k)
    if not energy > 0:
        raise DefendError(f"{data_dir}: the training split's sampled k-space is all zero")
    _UNITS[key] = math.sqrt(energy / entries)
    return _UNITS[key]
