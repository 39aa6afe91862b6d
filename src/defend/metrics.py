"""Quality metrics shared by training, attacks and defences.

Segmentation metrics are torch functions on the model's device; reconstruction metrics
wrap ``fastmri.evaluate`` (numpy, scikit-image underneath).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from fastmri import evaluate


def dice_iou(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-label Dice and IoU of thresholded sigmoid predictions.

    Args:
        logits: (B, K, H, W) per-pixel logits.
        target: (B, K, H, W) masks in {0, 1}.
        threshold: probability above which a pixel counts as foreground.

    Returns:
        :func:`mask_dice_iou` of :func:`predicted_masks`.
    """
    return mask_dice_iou(predicted_masks(logits, threshold), target)


def predicted_masks(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, K, H, W) bool: the pixels whose sigmoid probability is above ``threshold``."""
    return torch.sigmoid(logits.float()) > threshold


def mask_dice_iou(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-label Dice and IoU of predicted masks.

    Args:
        pred: (B, K, H, W) predicted masks (bool or {0, 1}).
        target: (B, K, H, W) masks in {0, 1}.

    Returns:
        ``(dice, iou, nonempty)``, each (B, K): the scores, and whether the ground-truth mask
        is non-empty (Wang & Xu 2024 average over those only). Empty prediction and empty
        target score 1.
    """
    pred = pred.float()
    target = (target > 0.5).float()
    inter = (pred * target).flatten(2).sum(-1)
    total = pred.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return dice, iou, target.flatten(2).sum(-1) > 0


def recon_metrics(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> dict:
    """fastMRI's SSIM, PSNR and NMSE of one volume.

    Args:
        gt: (slices, h, w) ground-truth magnitude images.
        pred: (slices, h, w) reconstructions in the same units.
        maxval: data range; fastMRI's default is ``gt.max()`` of the volume.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    maxval = float(gt.max()) if maxval is None else float(maxval)
    return {
        "ssim": float(np.asarray(evaluate.ssim(gt, pred, maxval)).item()),
        "psnr": float(evaluate.psnr(gt, pred, maxval)),
        "nmse": float(evaluate.nmse(gt, pred)),
    }


def image_similarity(
    clean: np.ndarray, other: np.ndarray, region: np.ndarray | None = None
) -> dict[str, float]:
    """PSNR (dB), SSIM and NRMSE of ``other`` against ``clean``, as the hallucination paper.

    Both images are min-max normalised with the *clean* image's range (data range 1), so a
    change in ``other``'s own range shows up instead of being normalised away.

    Args:
        clean: (h, w) reference image.
        other: (h, w) image to compare.
        region: optional (h, w) bool mask. PSNR and NRMSE are computed over its pixels; SSIM
            over its bounding box, grown to at least 7 x 7 px (SSIM's window).

    Returns:
        ``{"psnr", "ssim", "nrmse"}``; PSNR is ``inf`` for identical images.
    """
    from skimage.metrics import structural_similarity  # skimage: on first use

    clean = np.asarray(clean, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    lo, hi = clean.min(), clean.max()
    scale = hi - lo if hi > lo else 1.0
    a, b = (clean - lo) / scale, (other - lo) / scale
    if region is None:
        a_px, b_px, a_box, b_box = a, b, a, b
    else:
        region = np.asarray(region, dtype=bool)
        a_px, b_px = a[region], b[region]
        rows, cols = np.nonzero(region)
        box = []
        for lo_i, hi_i, n in (
            (rows.min(), rows.max(), a.shape[0]),
            (cols.min(), cols.max(), a.shape[1]),
        ):
            grow = max(0, 7 - (hi_i - lo_i + 1))
            start = max(0, min(lo_i - grow // 2, n - max(7, hi_i - lo_i + 1)))
            box.append(slice(start, min(n, start + max(7, hi_i - lo_i + 1))))
        a_box, b_box = a[tuple(box)], b[tuple(box)]
    mse = float(np.mean((a_px - b_px) ** 2))
    norm = float(np.sqrt(np.mean(a_px**2)))
    return {
        "psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "ssim": float(structural_similarity(a_box, b_box, data_range=1.0)),
        "nrmse": float(np.sqrt(mse) / norm) if norm > 0 else float("nan"),
    }


def quality_warnings(kind: str, metrics: dict[str, Any], classes: int | None = None) -> list[str]:
    """One line for each sign that a model is of no use, from its validation ``metrics``:

    * ``recon``: ``ssim`` below ``zf_ssim`` (worse than the zero-filled input it is given);
    * ``cls``: ``auroc`` at or below 0.5, or ``accuracy`` at or below ``1 / classes``
      (no better than chance);
    * ``detector`` and ``input-detector``: ``auroc`` below 0.5 (it ranks attacked images
      below clean ones).

    Missing or NaN metrics raise nothing; ``seg`` has no such check.
    """

    def value(key: str) -> float:
        found = metrics.get(key)
        return float(found) if isinstance(found, int | float) else math.nan

    lines = []
    if kind == "recon" and value("ssim") < value("zf_ssim"):
        lines.append(f"the reconstruction's SSIM {value('ssim'):.4f} is below its zero-filled "
                     f"input's {value('zf_ssim'):.4f}: it is worse than no model")  # fmt: skip
    if kind == "cls" and value("auroc") <= 0.5:
        lines.append(f"the classifier's AUROC {value('auroc'):.4f} is at or below chance (0.5)")
    if kind == "cls" and classes and value("accuracy") <= 1 / classes:
        lines.append(f"the classifier's accuracy {value('accuracy'):.4f} is at or below chance "
                     f"(1/{classes})")  # fmt: skip
    if kind in ("detector", "input-detector") and value("auroc") < 0.5:
        lines.append(f"the detector's AUROC {value('auroc'):.4f} is below chance (0.5): it "
                     "scores attacked images below clean ones")  # fmt: skip
    return lines
