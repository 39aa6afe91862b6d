"""What a cell measures: the defended system's quality, the attack's success, detection.

Outputs are in each task's format: recon images (N, h, w) (NaN where the smoothed model
abstains); seg per-pixel logits (N, K, H, W) (smoothed labels as +-10, abstaining pixels as
background); cls labels (N,) (-1 where the smoothed model abstains, counted wrong).

Success, per sample:

* recon: the hallucinated feature is at least half there (strength >= 0.5: the mean change in
  the attack's region over the intended change, :meth:`HallucinationAttack.effect`), measured
  for every attack in the hallucination attack's region;
* seg: the Dice falls by at least a tenth of its clean value (:data:`SEG_DROP`);
* cls: an image classified right when clean is classified wrong (rate over those).

A smoothed model that abstains under attack gives no answer, so no wrong one: that sample is
not a success (recon, cls; the ``abstain`` metric counts them), while quality counts an
abstention as wrong (accuracy) or leaves it out (SSIM).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: recon: strength from which a hallucination counts as a success
STRENGTH = 0.5
#: seg: the relative Dice drop from which an attack counts as a success
SEG_DROP = 0.1
#: the quality metric of each task
QUALITY = {"recon": "ssim", "seg": "dice", "cls": "accuracy"}


def quality(task: str, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(N,) per-sample quality of outputs ``out`` against the ground truth ``y``: recon SSIM,
    seg Dice (mean over labels present; NaN with none), cls 1 if right else 0."""
    if task == "recon":
        from defend.metrics import image_similarity

        return np.array([image_similarity(t, o)["ssim"] if np.isfinite(o).all() else np.nan
                         for t, o in zip(y, out, strict=True)])  # fmt: skip
    if task == "seg":
        from defend.metrics import dice_iou

        dice, _, nonempty = dice_iou(torch.as_tensor(out), torch.as_tensor(y))
        count = nonempty.sum(1).float()
        mean = (dice * nonempty).sum(1) / count.clamp_min(1)
        return torch.where(count > 0, mean, torch.nan).numpy()
    return (np.asarray(out) == np.asarray(y)).astype(np.float64)


def success(task: str, y: np.ndarray, clean: np.ndarray, adv: np.ndarray,
            effect: Any = None) -> np.ndarray:  # fmt: skip
    """(N,) float: 1 where the attack succeeded, 0 where not, NaN where it cannot be judged
    (cls: wrong when clean; seg: no clean Dice; recon: abstained). ``effect``: recon's
    ``(clean (N, h, w), adv) -> strength (N,)``."""
    if task == "recon":
        strength = effect(clean, adv)
        judged = np.where(np.isfinite(strength), strength >= STRENGTH, np.nan)
        return np.where(_abstained(adv) & ~_abstained(clean), 0.0, judged)
    if task == "seg":
        before, after = quality(task, y, clean), quality(task, y, adv)
        judged = np.isfinite(before) & (before > 0) & np.isfinite(after)
        return np.where(judged, after < (1 - SEG_DROP) * np.where(judged, before, 1), np.nan)
    right, adv = np.asarray(clean) == np.asarray(y), np.asarray(adv)
    return np.where(right, (adv != np.asarray(y)) & (adv != -1), np.nan)


def _abstained(images: np.ndarray) -> np.ndarray:
    """(N,) bool: recon outputs (N, h, w) that are all NaN (the smoothed model abstained)."""
    return np.isnan(np.asarray(images).reshape(len(images), -1)).all(1)


def recon_effect(estimator: Any, params: dict[str, Any]) -> Any:
    """``(clean, adv) -> strength (N,)`` in the region of the hallucination attack of
    ``params`` (its defaults: the paper's centred line, contrast 0.3)."""
    from defend.attacks import HallucinationAttack

    keep = ("region", "region_size", "region_center", "alpha")
    attack = HallucinationAttack(estimator, **{k: v for k, v in params.items() if k in keep})

    def strength(clean: np.ndarray, adv: np.ndarray) -> np.ndarray:
        y0, y1 = torch.as_tensor(clean).float(), torch.as_tensor(adv).float()
        region = attack.regions(tuple(y0.shape[-2:]), len(y0), y0.device)
        return attack.effect(y0, y1, region)[0].numpy()

    return strength


def separation(clean_scores: np.ndarray, adv_scores: np.ndarray) -> float:
    """AUROC of detector scores, attacked samples (positives) against clean ones
    (:func:`defend.detect.evaluate.separation`'s)."""
    from defend.detect.evaluate import separation as scored

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(adv_scores))].astype(np.int64)
    return scored(labels, np.r_[clean_scores, adv_scores])["auroc"]


def roc_points(clean_scores: np.ndarray, adv_scores: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (``fpr``, ``tpr`` lists) of :func:`separation`, for the report."""
    from sklearn.metrics import roc_curve

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(adv_scores))]
    scores = np.nan_to_num(np.r_[clean_scores, adv_scores].astype(np.float64))
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()}


def mean(values: np.ndarray) -> float:
    """The mean over finite values (NaN when there are none)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")
