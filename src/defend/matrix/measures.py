"""What a cell measures: the defended system's quality, the attack's success, detection.

A system answers with :class:`Outputs`: values in each task's format (recon images
(N, h, w); seg predicted masks (N, K, H, W); cls labels (N,)) and, explicitly, where it
abstained (a smoothed model may: recon a whole image, seg single pixels, cls an image).

An abstention is no answer, and no answer is a failure of the defence, as certified accuracy
counts it (Cohen et al. 2019; Carlini et al. 2019, §5). :func:`resolve` turns outputs into
what is scored: a cls abstention is a wrong label; a seg pixel that abstains takes the wrong
label; a recon abstention shows the defence's declared fallback, the zero-filled image of
its input. :func:`abstained` is the share that abstained (per sample; seg: of its pixels).

Success, per sample, on resolved outputs:

* recon: the model added at least half the feature beyond what the attacked measurement
  holds: ``net_strength = strength - input_strength >= 0.5`` (:data:`STRENGTH`), where
  ``strength`` is the mean change in the attack's region over the intended change
  (:meth:`HallucinationAttack.effect`) and ``input_strength`` that of the zero-filled image
  (:meth:`HallucinationAttack.input_strength`): a model faithful to the measurement shows
  the part of the feature the attack wrote into measured k-space, which is not a
  hallucination; every attack is measured in the hallucination attack's region;
* seg: the Dice falls by at least a tenth of its clean value (:data:`SEG_DROP`);
* cls: an image classified right when clean is classified wrong or abstained on (rate over
  the images classified right when clean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve

from defend.attacks import HallucinationAttack
from defend.attacks.hallucination import SUCCESS_STRENGTH, sampled_columns
from defend.detect.evaluate import separation as scored
from defend.kspace import zero_filled
from defend.metrics import image_similarity, mask_dice_iou
from defend.tasks import kind_of

#: what attack success means on each kind of task, in words (the report shows it)
SUCCESS_MEANS = {
    "recon": "the reconstruction shows at least half of the attack's feature beyond what the "
    "attacked measurement itself holds (net strength >= 0.5)",
    "seg": "the Dice falls by at least a tenth of its clean value",
    "cls": "an image classified right when clean is classified wrong or abstained on (the "
    "rate is over the images classified right when clean)",
}

#: recon: net strength from which a hallucination counts as a success
STRENGTH = SUCCESS_STRENGTH
#: seg: the relative Dice drop from which an attack counts as a success
SEG_DROP = 0.1
#: the quality metric of each task
QUALITY = {"recon": "ssim", "seg": "dice", "cls": "accuracy"}
#: the label a resolved cls abstention takes: no class has it, so it is never right
NO_CLASS = -1


@dataclass(frozen=True)
class Outputs:
    """A defended system's answers to N inputs, and where it abstained.

    Attributes:
        values: recon images (N, h, w) float32; seg predicted masks (N, K, H, W) bool; cls
            labels (N,) int64. Where the system abstained a value is a placeholder (0),
            never scored as it is (:func:`resolve`).
        abstained: (N,) bool for recon and cls; (N, K, H, W) bool for seg, per pixel.
    """

    values: np.ndarray
    abstained: np.ndarray

    @classmethod
    def answered(cls, values: np.ndarray, task: str) -> Outputs:
        """Outputs with no abstention (a model without smoothing)."""
        shape = values.shape if kind_of(task) == "seg" else values.shape[:1]
        return cls(values, np.zeros(shape, bool))

    @classmethod
    def stack(cls, items: list[Outputs]) -> Outputs:
        """One sample's outputs after another (each with a leading axis of 1 or more)."""
        return cls(np.concatenate([o.values for o in items]),
                   np.concatenate([o.abstained for o in items]))  # fmt: skip

    @classmethod
    def choose(cls, choices: list[Outputs], pick: np.ndarray) -> Outputs:
        """Per sample ``i`` the outputs of ``choices[pick[i]]`` (pick (N,) int)."""
        rows = np.arange(len(pick))
        return cls(np.stack([c.values for c in choices])[pick, rows],
                   np.stack([c.abstained for c in choices])[pick, rows])  # fmt: skip

    def __len__(self) -> int:
        return len(self.values)


def abstained(task: str, out: Outputs) -> np.ndarray:
    """(N,) share of each output that abstained: cls / recon 0 or 1, seg the share of
    pixels."""
    gave_up = out.abstained.reshape(len(out), -1).astype(np.float64)
    return gave_up.mean(1) if kind_of(task) == "seg" else gave_up[:, 0]


def resolve(task: str, out: Outputs, y: np.ndarray,
            fallback: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The outputs as scored, abstentions counted against the defence (module doc).

    Args:
        out: the system's outputs. y: the ground truth.
        fallback: recon only, (N, h, w) the images shown where the model abstains (the
            zero-filled images of the inputs); required when a recon output abstains.

    Returns:
        the values with each abstention replaced: cls :data:`NO_CLASS`, seg the wrong
        label of the pixel, recon the fallback image.
    """
    if kind_of(task) == "cls":
        return np.where(out.abstained, NO_CLASS, out.values)
    if kind_of(task) == "seg":
        return np.where(out.abstained, np.asarray(y) <= 0.5, out.values)
    if not out.abstained.any():
        return out.values
    if fallback is None:
        raise ValueError("a recon output abstained and no fallback image was given")
    return np.where(out.abstained[:, None, None], fallback, out.values)


def quality(task: str, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(N,) per-sample quality of resolved outputs ``out`` (:func:`resolve`) against the
    ground truth ``y``: recon SSIM, seg Dice (mean over labels present; NaN with none), cls 1
    if right else 0."""
    if kind_of(task) == "recon":
        return np.array([image_similarity(t, o)["ssim"] for t, o in zip(y, out, strict=True)])
    if kind_of(task) == "seg":
        dice, _, nonempty = mask_dice_iou(torch.as_tensor(out), torch.as_tensor(y))
        count = nonempty.sum(1).float()
        mean = (dice * nonempty).sum(1) / count.clamp_min(1)
        return torch.where(count > 0, mean, torch.nan).numpy()
    return (np.asarray(out) == np.asarray(y)).astype(np.float64)


def success(task: str, y: np.ndarray, clean: np.ndarray, adv: np.ndarray,
            net_strength: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """(N,) float: 1 where the attack succeeded, 0 where not, NaN where it cannot be judged
    (cls: wrong when clean; seg: no clean Dice). Outputs resolved (:func:`resolve`);
    recon needs ``net_strength`` (N,) (:meth:`Hallucination.strengths`)."""
    if kind_of(task) == "recon":
        return (np.asarray(net_strength) >= STRENGTH).astype(np.float64)
    if kind_of(task) == "seg":
        before, after = quality(task, y, clean), quality(task, y, adv)
        judged = np.isfinite(before) & (before > 0) & np.isfinite(after)
        return np.where(judged, after < (1 - SEG_DROP) * np.where(judged, before, 1), np.nan)
    right = np.asarray(clean) == np.asarray(y)
    return np.where(right, np.asarray(adv) != np.asarray(y), np.nan)


class Hallucination:
    """The hallucination attack's feature, measured in the outputs of any recon attack.

    Args:
        estimator: the reconstruction estimator (its mask: which k-space was measured).
        params: the hallucination attack's settings (region, region_size, region_center,
            alpha; its defaults: the paper's centred line, contrast 0.3).
    """

    def __init__(self, estimator: Any, params: dict[str, Any]) -> None:

        keep = ("region", "region_size", "region_center", "alpha")
        self.estimator = estimator
        self.attack = HallucinationAttack(estimator, **{k: v for k, v in params.items()
                                                        if k in keep})  # fmt: skip

    def feature(self, y: np.ndarray) -> np.ndarray:
        """(N, h, w) the attack's target feature on images ``y`` (N, h, w): its region at
        ``alpha`` x each image's range (what a real finding of the same contrast adds)."""
        yt = torch.as_tensor(y).float()
        region = self.attack.regions(tuple(yt.shape[-2:]), len(yt), yt.device).float()
        contrast = self.attack.alphas(len(yt), yt.device) * (yt.amax((1, 2)) - yt.amin((1, 2)))
        return (region * contrast[:, None, None]).numpy()

    def strengths(self, clean: np.ndarray, adv: np.ndarray, x: np.ndarray,
                  x_adv: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
        """Per sample ``strength``, ``input_strength`` and ``net_strength`` (each (N,)) of
        resolved outputs ``clean``, ``adv`` (N, h, w) of k-space ``x``, ``x_adv``
        (N, coils, H, W, 2) (module doc)."""

        y0, y1 = torch.as_tensor(clean).float(), torch.as_tensor(adv).float()
        region = self.attack.regions(tuple(y0.shape[-2:]), len(y0), y0.device)
        strength = self.attack.effect(y0, y1, region)[0]
        k0, k1 = torch.as_tensor(x).float(), torch.as_tensor(x_adv).float()
        sampled = sampled_columns(k0, self.estimator).to(k0.dtype)
        crop = tuple(y0.shape[-2:])
        zf, zf_adv = zero_filled(k0 * sampled, crop), zero_filled(k1 * sampled, crop)
        written = self.attack.input_strength(y0, zf, zf_adv, region)
        return {"strength": strength.numpy(), "input_strength": written.numpy(),
                "net_strength": (strength - written).numpy()}  # fmt: skip


def zero_filled_images(estimator: Any, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, h, w) the zero-filled images of k-space ``x`` (N, coils, H, W, 2) on its measured
    columns, centre-cropped to ``shape`` (h, w): a recon defence's fallback where it
    abstains."""

    k = torch.as_tensor(x).float()
    return zero_filled(k * sampled_columns(k, estimator).to(k.dtype), shape).numpy()


def separation(clean_scores: np.ndarray, adv_scores: np.ndarray) -> float:
    """AUROC of detector scores, attacked samples (positives) against clean ones
    (:func:`defend.detect.evaluate.separation`'s)."""

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(adv_scores))].astype(np.int64)
    return scored(labels, np.r_[clean_scores, adv_scores])["auroc"]


def roc_points(clean_scores: np.ndarray, adv_scores: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (``fpr``, ``tpr`` lists) of :func:`separation`, for the report."""

    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(adv_scores))]
    scores = np.nan_to_num(np.r_[clean_scores, adv_scores].astype(np.float64))
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()}


def mean(values: np.ndarray) -> float:
    """The mean over finite values (NaN when there are none)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")
