"""Denoised smoothing: smoothed predictors with certificates for the three tasks.

    import defend
    smoothed = defend.load_smoothed("runs/bench/cls-resnet18.pt", sigma=0.25)
    label, radius = smoothed.certify(x[0], n0=100, n=10_000, alpha=0.001)

:mod:`defend.smooth.core` holds the algorithms; :func:`smoothed` picks the one of an
estimator's task.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defend.smooth.core import (
    CenterSmoothing,
    KspaceNoise,
    SmoothClassifier,
    SmoothSegmenter,
    kspace_noise,
)

__all__ = [
    "CenterSmoothing",
    "KspaceNoise",
    "SmoothClassifier",
    "SmoothSegmenter",
    "load_smoothed",
    "smoothed",
    "training_unit",
]

#: at most this many training slices (spread over the split) measure the k-space unit
UNIT_SAMPLES = 256

Smoothed = SmoothClassifier | SmoothSegmenter | CenterSmoothing


def _task(estimator: Any) -> str:
    from defend.estimators import ReconEstimator, SegEstimator

    if isinstance(estimator, ReconEstimator):
        return "recon"
    return "seg" if isinstance(estimator, SegEstimator) else "cls"


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
    from defend.io import load_checkpoint

    ckpt = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    data = ckpt["data"]
    key = str(Path(data_dir).resolve()), repr(sorted(data["acquisition"].items())), samples
    return _training_unit(key, ckpt)


#: units computed in this process, by (data folder, acquisition, samples)
_UNITS: dict[tuple, float] = {}


def _training_unit(key: tuple, ckpt: dict[str, Any]) -> float:
    """:func:`training_unit`, computed once per (data folder, acquisition, samples) in a
    process."""
    from defend.attacks.budget import kspace_unit
    from defend.data import Acquisition
    from defend.data.arrays import load_groups, split_size
    from defend.errors import DefendError

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


def smoothed(
    estimator: Any,
    sigma: float,
    denoiser: nn.Module | None = None,
    unit: float | None = None,
    **options: Any,
) -> Smoothed:
    """The smoothed model of an estimator (``defend.load_estimator``'s): a
    :class:`SmoothClassifier` (a classifier), :class:`SmoothSegmenter` (a ``SegEstimator``)
    or :class:`CenterSmoothing` (a ``ReconEstimator``, noise on its sampled k-space).

    Args:
        estimator: the base model's estimator. sigma: the noise std (images: pixel units
            of [0, 1]; k-space: multiples of ``unit``, :class:`KspaceNoise`).
        denoiser: a module from noisy to clean inputs of the estimator's format, or None.
        unit: reconstruction only: the k-space unit (:func:`training_unit`); None takes the
            denoiser's (:func:`defend.smooth.core.kspace_noise`).
        options: for reconstruction, :class:`CenterSmoothing`'s ``delta``.
    """
    from defend.attacks.base import torch_forward

    forward = torch_forward(estimator)
    if forward is None:
        raise TypeError("smoothing needs a torch estimator (defend's, or an ART PyTorchClassifier)")
    device = getattr(estimator, "device", None) or torch.device("cpu")
    if denoiser is not None:
        denoiser = denoiser.to(device).eval()
    common = {"denoiser": denoiser, "device": device}
    task = _task(estimator)
    if task == "recon":
        noise = kspace_noise(sigma, estimator, unit, denoiser)
        return CenterSmoothing(forward, sigma, noise, **common, **options)
    if options or unit is not None:
        names = [*options, *(["unit"] if unit is not None else [])]
        raise TypeError(f"unexpected options for {task} smoothing: {', '.join(names)}")
    if task == "seg":
        return SmoothSegmenter(forward, sigma, **common)
    return SmoothClassifier(forward, estimator.nb_classes, sigma, **common)


def load_smoothed(
    checkpoint: str | os.PathLike,
    sigma: float,
    denoiser: str | os.PathLike | nn.Module | None = None,
    device: str | None = None,
    *,
    data: str | os.PathLike | None = None,
    unit: float | None = None,
    **options: Any,
) -> Smoothed:
    """The smoothed model of a ``defend train`` checkpoint, with an optional denoiser (a
    ``defend train denoiser`` checkpoint or a module), for ``predict`` and ``certify``
    (``options``: :func:`smoothed`'s). Reconstruction: the k-space unit is ``unit``, else
    :func:`training_unit` of ``data``'s training split, else the denoiser's."""
    from defend.estimators import load_estimator
    from defend.io import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    estimator = load_estimator(ckpt, device=device)
    if denoiser is not None and not isinstance(denoiser, nn.Module):
        from defend.smooth.denoiser import load_denoiser

        denoiser = load_denoiser(denoiser, ckpt)
    if unit is None and data is not None and ckpt["task"] == "recon":
        unit = training_unit(data, ckpt)
    return smoothed(estimator, sigma, denoiser, unit, **options)
