"""The detector-aware hallucination attack: hallucinate and stay below the detector.

A detector is attacked jointly with the model it guards (Carlini & Wagner
2017): :class:`EvadingHallucination` minimises the hallucination loss of
:class:`~defend.attacks.HallucinationAttack` plus ``evade_weight`` times the detector's image
logit on the same step's deployment images (:func:`~defend.detect.features.detector_inputs`
of the perturbed k-space and its reconstruction), so the gradient runs through the detector,
its features and the reconstruction model together. ``evade_weight = 0`` is the plain attack;
larger weights trade the feature's strength for evasion, which is the result to report.
Every report row also holds the detector's logit on the attacked input (``detector_score``)
and whether it is flagged at the detector's calibrated threshold (``flagged``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from defend.adaptive.evade_params import EVADING_HALLUCINATION
from defend.attacks.hallucination import HallucinationAttack
from defend.attacks.torch_attack import torch_forward
from defend.detect.detector import Detector, load_detector
from defend.detect.features import detector_inputs
from defend.errors import DefendError


class EvadingHallucination(HallucinationAttack):
    """:class:`HallucinationAttack` with the detector's logit in its loss (module doc).

    Args:
        estimator: as :class:`HallucinationAttack`'s, with a torch forward (``defend``'s).
    """

    PARAMS = EVADING_HALLUCINATION

    def __init__(self, estimator: Any, **params: Any) -> None:
        detector = params.get("detector")
        if detector is None:
            raise DefendError("the detector-aware attack needs a detector (--evade DET.pt)")
        loaded = detector
        if isinstance(detector, str | os.PathLike):
            loaded = load_detector(detector, device=str(estimator.device))
            params["detector"] = str(detector)
        if not isinstance(loaded, Detector):
            raise DefendError(f"detector must be a detector checkpoint, got {type(detector)}")
        self._detector = loaded
        super().__init__(estimator, **params)
        if torch_forward(estimator) is None:
            raise DefendError("the detector-aware attack needs a torch estimator (defend's)")

    def detector_logit(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The detector's image logit (B,) on k-space ``x`` (B, coils, H, W, 2) and its
        reconstruction ``pred`` (B, h, w), differentiable in both."""
        mask = self.estimator.mask.to(x.device)
        return self._detector.module(detector_inputs(x, mask, pred))[0]

    def _score(
        self, x: torch.Tensor, weight: torch.Tensor, goal: torch.Tensor, gradient: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The hallucination loss plus ``evade_weight`` x the detector's logit, the
        prediction, and the gradient of the sum."""
        forward = torch_forward(self.estimator)
        with torch.set_grad_enabled(gradient):
            x = x.detach().requires_grad_(gradient)
            pred = forward(x)
            loss = self.attack_loss(pred, goal, weight)
            loss = loss + self.evade_weight * self.detector_logit(x, pred)
            grad = torch.autograd.grad(loss.sum(), x)[0] if gradient else None
        return loss.detach(), pred.detach(), grad

    def _report(self, x: torch.Tensor, x_adv: torch.Tensor, *rest: Any) -> dict[str, torch.Tensor]:
        """The plain attack's report, plus the detector's logit and flag on ``x_adv``."""
        report = super()._report(x, x_adv, *rest)
        y_adv = rest[1]
        with torch.no_grad():
            score = self.detector_logit(x_adv, y_adv)
        report["detector_score"] = score
        threshold = self._detector.threshold
        flagged = score > threshold if threshold is not None else torch.full_like(score, np.nan)
        report["flagged"] = flagged.float()
        return report
