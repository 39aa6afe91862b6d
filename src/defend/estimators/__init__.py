"""ART estimators for the three tasks, and loading one from a checkpoint.

| task  | estimator                   | x                                | prediction              |
|-------|-----------------------------|----------------------------------|-------------------------|
| recon | :class:`ReconEstimator`     | k-space ``(B, coils, H, W, 2)``  | image ``(B, h, w)``     |
| seg   | :class:`SegEstimator`       | image ``(B, C, H, W)`` in [0, 1] | logits ``(B, K, H, W)`` |
| cls   | :func:`make_classifier`     | image ``(B, C, H, W)`` in [0, 1] | logits ``(B, classes)`` |

``make_classifier`` returns ART's own ``PyTorchClassifier``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from art.estimators.classification import PyTorchClassifier

from defend.errors import CheckpointError, DefendError
from defend.estimators.cls import make_classifier
from defend.estimators.recon import ReconEstimator
from defend.estimators.seg import SegEstimator
from defend.estimators.torch_estimator import TorchEstimator
from defend.io import load_checkpoint

__all__ = ["ReconEstimator", "SegEstimator", "TorchEstimator", "load_estimator", "make_classifier"]


def load_estimator(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device | None = None,
) -> ReconEstimator | SegEstimator | PyTorchClassifier:
    """Rebuild the estimator of a trained model from a defend checkpoint.

    Args:
        checkpoint: a checkpoint file written by ``defend train`` (or the loaded dict), with
            ``task``, ``model_config``, ``state_dict`` and ``data`` (``input_shape``; recon:
            ``acquisition`` = ``{mask_type, center_fraction, acceleration, seed}``; cls:
            ``classes``, a list of class names).
        device: torch device (default: CUDA when available).

    Returns:
        The model in eval mode inside a :class:`ReconEstimator` (with the acquisition's fixed
        evaluation mask), a :class:`SegEstimator`, or a ``PyTorchClassifier``.

    Raises:
        CheckpointError: unreadable file, missing keys, or weights that do not fit the model
            config (the message names the file).
    """
    from defend.models import build_model, load_weights

    if isinstance(checkpoint, Mapping):
        ckpt, source = dict(checkpoint), "checkpoint"
    else:
        ckpt, source = load_checkpoint(checkpoint), str(checkpoint)
    if ckpt.get("kind") == "denoiser":
        raise CheckpointError(
            f"{source}: a denoiser checkpoint; pass it as --denoiser beside the model it guards"
        )
    missing = [k for k in ("task", "model_config", "state_dict", "data") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)}")
    task, data = ckpt["task"], ckpt["data"]
    if "input_shape" not in data:
        raise CheckpointError(f"{source}: checkpoint data lacks input_shape")
    input_shape = tuple(int(s) for s in data["input_shape"])
    try:
        model = build_model(task, ckpt["model_config"])
    except DefendError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    load_weights(model, ckpt["state_dict"], source)
    model.eval()

    if task == "recon":
        from defend.data.acquisition import Acquisition

        if "acquisition" not in data:
            raise CheckpointError(f"{source}: recon checkpoint data lacks acquisition")
        try:
            acquisition = Acquisition.from_dict(data["acquisition"])
            mask = acquisition.eval_mask(input_shape[-2])
        except DefendError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        return ReconEstimator(model, mask, input_shape, device=device, acquisition=acquisition)
    if task == "seg":
        from defend.tasks import SegTask

        # the estimator's loss is the training loss, as for ART's classifiers
        loss = ckpt.get("loss", SegTask.loss_name)
        return SegEstimator(model, input_shape, device=device, loss=loss)
    classes = data.get("classes")
    if classes is None:
        nb_classes = int(ckpt["model_config"].get("num_classes", 2))
    else:
        nb_classes = len(classes) if not isinstance(classes, int) else classes
    return make_classifier(model, input_shape, nb_classes, device=device)
