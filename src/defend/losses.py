"""Segmentation losses per sample, shared by training, estimators and attacks.

smp's losses reduce over the batch; an attack needs each sample scored on its own, so that
its result does not depend on which other samples share the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses

from defend.errors import DefendError

SEG_LOSSES = ("bce", "dice", "dicefocal")

_DICE = smp_losses.DiceLoss("multilabel", from_logits=True)
_FOCAL = smp_losses.FocalLoss("multilabel")


def seg_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample segmentation loss (B,).

    Args:
        name: ``bce`` (binary cross-entropy), ``dice`` (smp DiceLoss, multilabel) or
            ``dicefocal`` (Dice + Focal: the seed paper's and ``defend train``'s training loss).
        logits: (B, K, H, W) per-pixel logits.
        target: (B, K, H, W) masks in {0, 1}.
    """
    if name not in SEG_LOSSES:
        raise DefendError(f"unknown segmentation loss '{name}': choose {', '.join(SEG_LOSSES)}")
    logits, target = logits.float(), target.float()
    if name == "bce":
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce.flatten(1).mean(1)
    losses = []
    for pred, tgt in zip(logits.split(1), target.split(1), strict=True):
        value = _DICE(pred, tgt)
        if name == "dicefocal":
            value = value + _FOCAL(pred, tgt)
        losses.append(value)
    return torch.stack(losses)


def dicefocal_batch_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + Focal over the whole batch (smp's reduction): what ``defend train seg`` minimises."""
    logits, target = logits.float(), target.float()
    return _DICE(logits, target) + _FOCAL(logits, target)


def dicefocal_training_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice + Focal: the loss a ``defend train seg`` checkpoint was trained on."""
    return seg_loss("dicefocal", logits, target)
