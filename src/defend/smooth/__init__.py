"""Denoised smoothing: smoothed predictors with certificates for the three tasks.

    import defend
    smoothed = defend.load_smoothed("runs/bench/cls-resnet18.pt", sigma=0.25)
    label, radius = smoothed.certify(x[0], n0=100, n=10_000, alpha=0.001)

:mod:`defend.smooth.core` holds the algorithms; :func:`smoothed` picks the one of an
estimator's task.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from defend.attacks.torch_attack import torch_forward
from defend.estimators import ReconEstimator, SegEstimator, load_estimator
from defend.io import load_checkpoint
from defend.smooth.core import (
    CenterSmoothing,
    SmoothClassifier,
    SmoothSegmenter,
)
from defend.smooth.denoiser import load_denoiser
from defend.smooth.noise import KspaceNoise, kspace_noise
from defend.smooth.unit import training_unit
from defend.tasks import kind_of

__all__ = [
    "CenterSmoothing",
    "KspaceNoise",
    "SmoothClassifier",
    "SmoothSegmenter",
    "load_smoothed",
    "smoothed",
    "training_unit",
]


Smoothed = SmoothClassifier | SmoothSegmenter | CenterSmoothing


def _task(estimator: Any) -> str:

    if isinstance(estimator, ReconEstimator):
        return "recon"
    return "seg" if isinstance(estimator, SegEstimator) else "cls"


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
            denoiser's (:func:`defend.smooth.noise.kspace_noise`).
        options: for reconstruction, :class:`CenterSmoothing`'s ``delta``.
    """

    forward = torch_forward(estimator)
    if forward is None:
        raise TypeError("smoothing needs a torch estimator (defend's, or an ART PyTorchClassifier)")
    device = getattr(estimator, "device", None) or torch.device("cpu")
    if denoiser is not None:
        denoiser = denoiser.to(device).eval()
    common = {"denoiser": denoiser, "device": device}
    task = _task(estimator)
    if kind_of(task) == "recon":
        noise = kspace_noise(sigma, estimator, unit, denoiser)
        smooth = CenterSmoothing(forward, sigma, noise, **common, **options)
        smooth.input_shape = tuple(estimator.input_shape)
        smooth.reshape = lambda shape: smoothed(
            estimator.reshaped(shape), sigma, denoiser, noise.unit, **options
        )
        return smooth
    if options or unit is not None:
        names = [*options, *(["unit"] if unit is not None else [])]
        raise TypeError(f"unexpected options for {task} smoothing: {', '.join(names)}")
    if kind_of(task) == "seg":
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

    ckpt = load_checkpoint(checkpoint)
    estimator = load_estimator(ckpt, device=device)
    if denoiser is not None and not isinstance(denoiser, nn.Module):
        denoiser = load_denoiser(denoiser, ckpt)
    if unit is None and data is not None and kind_of(ckpt["task"]) == "recon":
        unit = training_unit(data, ckpt)
    return smoothed(estimator, sigma, denoiser, unit, **options)
