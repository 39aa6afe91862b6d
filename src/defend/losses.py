"""Per-sample losses, shared by training, estimators and attacks.

Every loss here maps a batch to per-sample values ``(B,)``: a sample's loss (and so an
attack's gradient on it) does not depend on which other samples share its batch. Training
minimises their mean.

Segmentation uses smp's functional pieces per sample: the soft Dice score
(``soft_dice_score`` with smoothing 1 over each image's pixels, every label counted, also an
empty one, where the loss is ``P / (P + 1)`` for the predicted foreground mass ``P``: an
attack can still raise it by making the model see something that is not there) and the
focal loss (``focal_loss_with_logits``, gamma 2, as smp's ``FocalLoss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses._functional import focal_loss_with_logits, soft_dice_score

from defend.errors import DefendError

#: smoothing of the soft Dice score: keeps an empty target's loss informative
DICE_SMOOTH = 1.0


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits (B, K, H, W) against masks (B, K, H, W), mean over
    labels and pixels: (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return bce.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice (smoothed) of sigmoid probabilities, per image and label, mean over labels.

    Args:
        logits: (B, K, H, W) per-pixel logits.
        target: (B, K, H, W) masks in {0, 1}.

    Returns:
        (B,) losses in [0, 1).
    """
    probs = torch.sigmoid(logits.float())
    score = soft_dice_score(probs, target.float(), smooth=DICE_SMOOTH, dims=(2, 3))
    return (1 - score).mean(1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """smp's sigmoid focal loss (gamma 2) of logits (B, K, H, W) against masks (B, K, H, W),
    mean over labels and pixels: (B,)."""
    focal = focal_loss_with_logits(logits.float(), target.float(), reduction="none")
    return focal.flatten(1).mean(1)


def dicefocal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + Focal per sample (B,): Wang & Xu's and ``defend train seg``'s training loss."""
    return dice_loss(logits, target) + focal_loss(logits, target)


#: name -> per-sample segmentation loss ``(logits (B, K, H, W), masks (B, K, H, W)) -> (B,)``
SEG_LOSSES = {"bce": bce_loss, "dice": dice_loss, "dicefocal": dicefocal_loss}


def seg_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample segmentation loss (B,) by name: ``bce``, ``dice`` or ``dicefocal``.

    Args:
        name: a key of :data:`SEG_LOSSES`.
        logits: (B, K, H, W) per-pixel logits.
        target: (B, K, H, W) masks in {0, 1}.
    """
    if name not in SEG_LOSSES:
        raise DefendError(f"unknown segmentation loss '{name}': choose {', '.join(SEG_LOSSES)}")
    return SEG_LOSSES[name](logits, target)
