"""Classifiers as ART's own ``PyTorchClassifier``."""

from __future__ import annotations

import contextlib

import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from defend.device import pick_device

__all__ = ["make_classifier"]


def make_classifier(
    model: nn.Module,
    input_shape: tuple[int, ...],
    nb_classes: int,
    device: str | torch.device | None = None,
    clip_values: tuple[float, float] | None = (0.0, 1.0),
    learning_rate: float = 1e-3,
) -> PyTorchClassifier:
    """Wrap a classifier returning logits in ART's ``PyTorchClassifier``.

    Cross-entropy loss, an Adam optimiser (for ART's ``fit`` / adversarial trainers), no
    preprocessing. ART's classifier takes numpy ``x`` ``(N, C, H, W)`` in ``clip_values`` and
    returns logits ``(N, nb_classes)``; its ``loss_gradient`` also accepts tensors. ART picks
    the device from ``device_type`` (``"gpu"`` for a CUDA ``device``) and the current CUDA
    device, which is set to ``device`` while the classifier is built.

    Args:
        model: ``model(x (N, C, H, W)) -> logits (N, nb_classes)``.
        input_shape: ``(C, H, W)``.
        nb_classes: number of classes.
        device: torch device (default: CUDA when available).
        clip_values: valid input range, which attacks clip to.
        learning_rate: Adam learning rate.

    Returns:
        The ``PyTorchClassifier``; its ``model`` is on ``device``.
    """
    device = pick_device(device)
    model = model.to(device)
    cuda = device.type == "cuda"
    context = torch.cuda.device(device) if cuda else contextlib.nullcontext()
    with context:
        return PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(model.parameters(), lr=learning_rate),
            input_shape=tuple(int(s) for s in input_shape),
            nb_classes=int(nb_classes),
            clip_values=clip_values,
            device_type="gpu" if cuda else "cpu",
        )
