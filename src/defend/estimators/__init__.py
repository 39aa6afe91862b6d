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

from defend.data.acquisition import Acquisition
from defend.errors import CheckpointError, DefendError
from defend.estimators.cls import make_classifier
from defend.estimators.recon import ReconEstimator
from defend.estimators.seg import SegEstimator
from defend.estimators.torch_estimator import TorchEstimator
from defend.io import check_model_checkpoint, load_checkpoint
from defend.models import build_model, load_weights
from defend.tasks import SegTask, kind_of

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
    ckpt, source = _read_checkpoint(checkpoint)
    task, data = ckpt["task"], ckpt["data"]
    input_shape = tuple(int(s) for s in data["input_shape"])
    model = _rebuild_model(ckpt, source)
    if kind_of(task) == "recon":
        return _recon_estimator(model, data, input_shape, source, device)
    if kind_of(task) == "seg":
        # the estimator's loss is the training loss, as for ART's classifiers
        loss = ckpt.get("loss", SegTask.loss_name)
        return SegEstimator(model, input_shape, device=device, loss=loss)
    return make_classifier(model, input_shape, _nb_classes(ckpt), device=device)


def _read_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
) -> tuple[dict[str, Any], str]:
    """A model checkpoint as a dict, and how to name it in messages (its path or "checkpoint").

    Guarantees ``task``, ``model_config``, ``state_dict`` and ``data`` keys, and
    ``input_shape`` in ``data``; a mapping is copied (shallowly), never changed.

    Raises:
        CheckpointError: unreadable file, a denoiser checkpoint, or a missing key.
    """
    if isinstance(checkpoint, Mapping):
        ckpt, source = dict(checkpoint), "checkpoint"
    else:
        ckpt, source = load_checkpoint(checkpoint), str(checkpoint)
    check_model_checkpoint(ckpt, source)
    missing = [k for k in ("task", "model_config", "state_dict", "data") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)}")
    if "input_shape" not in ckpt["data"]:
        raise CheckpointError(f"{source}: checkpoint data lacks input_shape")
    return ckpt, source


def _rebuild_model(ckpt: Mapping[str, Any], source: str) -> torch.nn.Module:
    """The checkpoint's model, built from ``model_config`` with its weights, in eval mode.

    Raises:
        CheckpointError: a config :func:`build_model` refuses, or weights that do not fit it.
    """
    try:
        model = build_model(ckpt["task"], ckpt["model_config"])
    except DefendError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    load_weights(model, ckpt["state_dict"], source)
    model.eval()
    return model


def _recon_estimator(
    model: torch.nn.Module,
    data: Mapping[str, Any],
    input_shape: tuple[int, ...],
    source: str,
    device: str | torch.device | None,
) -> ReconEstimator:
    """A :class:`ReconEstimator` with the fixed evaluation mask of the checkpoint's acquisition
    (``data["acquisition"]``) for k-space ``input_shape`` ``(coils, H, W, 2)``.

    Raises:
        CheckpointError: no acquisition, or one :class:`Acquisition` refuses.
    """
    if "acquisition" not in data:
        raise CheckpointError(f"{source}: recon checkpoint data lacks acquisition")
    try:
        acquisition = Acquisition.from_dict(data["acquisition"])
        mask = acquisition.eval_mask(input_shape[-2])
    except DefendError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return ReconEstimator(model, mask, input_shape, device=device, acquisition=acquisition)


def _nb_classes(ckpt: Mapping[str, Any]) -> int:
    """A cls checkpoint's class count: ``data["classes"]`` (names, or a count), else the model
    config's ``num_classes``, else 2."""
    classes = ckpt["data"].get("classes")
    if classes is None:
        return int(ckpt["model_config"].get("num_classes", 2))
    return len(classes) if not isinstance(classes, int) else classes
