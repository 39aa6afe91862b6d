"""The detector-aware PGD on images: fool the model and stay below its input detector.

The adaptive attack on an input detector (:mod:`defend.detect.inputs`), as
:class:`~defend.adaptive.EvadingHallucination` is on the hallucination detector (Carlini &
Wagner 2017): l-inf PGD with a random start that raises

    loss(x') = task_loss(f(x'), y) - evade_weight * s(x'),

where ``s`` is the detector's logit margin (adversarial minus clean logit; flagged above
the checkpoint's calibrated threshold, :func:`defend.detect.inputs.input_threshold`) on the
same step's images, so the gradient runs through
the model and the detector together. The task loss follows the model's output: logits
(B, K) are a classifier (cross-entropy to the labels), logits (B, K, H, W) a segmentation
model (per-pixel BCE to the masks, the seed's stronger loss). ``evade_weight = 0`` is plain
PGD; larger weights trade the attack's effect for evasion, which is the result to report.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from art.estimators.estimator import BaseEstimator

from defend.adaptive.evade_params import EVADING_PGD
from defend.attacks.torch_attack import Attacked, SampleRNG, TorchAttack, clip_range, torch_forward
from defend.detect.inputs import input_detector_classifier, input_threshold
from defend.errors import DefendError


class EvadingPGD(TorchAttack):
    """l-inf PGD against a classifier or segmentation model and its input detector.

    Args:
        estimator: a differentiable ART estimator
            (:func:`~defend.attacks.torch_attack.torch_forward`) of images (B, C, H, W) in
            [0, 1]: ``defend``'s classifier or ``SegEstimator``.

    The task loss follows the model's output (module doc).
    """

    PARAMS = EVADING_PGD
    _estimator_requirements = (BaseEstimator,)  # and a torch forward (checked below)

    def __init__(self, estimator: Any, **params: Any) -> None:
        detector, threshold = params.get("detector"), params.get("threshold")
        if detector is None:
            raise DefendError("the detector-aware PGD needs an input detector checkpoint")
        if isinstance(detector, str | os.PathLike):
            self._detector = input_detector_classifier(detector, device=str(estimator.device))
            threshold = input_threshold(detector) if threshold is None else threshold
            params["detector"] = str(detector)
        else:
            self._detector = detector
        params["threshold"] = 0.0 if threshold is None else float(threshold)
        super().__init__(estimator, **params)

    def _check_params(self) -> None:
        super()._check_params()
        if torch_forward(self.estimator) is None or torch_forward(self._detector) is None:
            raise DefendError("the detector-aware PGD needs differentiable torch estimators")

    def detector_margin(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's adversarial-minus-clean logit (B,) of images ``x`` (B, C, H, W)."""
        logits = torch_forward(self._detector)(x)
        return logits[:, 1] - logits[:, 0]

    @staticmethod
    def task_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,): cross-entropy of logits (B, K) to labels (B,), or the
        per-pixel BCE of logits (B, K, H, W) to masks of that shape."""
        if logits.ndim == 2:
            return F.cross_entropy(logits.float(), target.long(), reduction="none")
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        return bce.flatten(1).mean(1)

    def _loss_and_grad(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        loss = self.task_loss(torch_forward(self.estimator)(x), target)
        loss = loss - self.evade_weight * self.detector_margin(x)
        return torch.autograd.grad(loss.sum(), x)[0]

    def _target(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Labels (B,) or masks (B, K, H, W) to move away from: y, else the clean prediction."""
        with torch.no_grad():
            logits = torch_forward(self.estimator)(x)
        if y is None:
            return logits.argmax(1) if logits.ndim == 2 else (logits > 0).float()
        if logits.ndim == 2 and y.ndim == 2:
            return y.argmax(1)  # one-hot, as ART's classifiers take labels
        return y

    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        """Images x (B, C, H, W) -> ``(x_adv, report)``: per image the task loss and the
        detector's margin, clean and attacked, and whether the attacked one is flagged."""
        lo, hi = clip_range(self.estimator, default=(0.0, 1.0))
        target = self._target(x, y)
        step = (self.step if self.step is not None else 2.5 / self.max_iter) * self.eps
        x_adv = (x + self.eps * (rng.rand(x.shape[1:]) * 2 - 1)).clamp(lo, hi)
        for _ in self.iterations():
            x_adv = x_adv + step * self._loss_and_grad(x_adv, target).sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(lo, hi)
        forward = torch_forward(self.estimator)
        with torch.no_grad():
            report = {
                "loss_clean": self.task_loss(forward(x), target),
                "loss_adv": self.task_loss(forward(x_adv), target),
                "detector_clean": self.detector_margin(x),
                "detector_adv": self.detector_margin(x_adv),
                "linf": (x_adv - x).abs().flatten(1).amax(1),
            }
        report["flagged"] = (report["detector_adv"] > self.threshold).float()
        return x_adv.detach(), report
