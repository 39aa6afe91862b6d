"""A toy attack, added the way docs/design.md's recipe "Add an attack" says: one signed
gradient step that raises a classifier's cross-entropy (a one-step FGSM).

Importing this module registers it; ``DEFEND_PLUGINS=toy_sign`` (with this folder on the
Python path) makes it ``defend attack toy-sign`` and the matrix column ``toy-sign``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator

from defend.attacks import register_attack
from defend.attacks.params import COMMON, Param
from defend.attacks.torch_attack import Attacked, SampleRNG, TorchAttack, clip_range, torch_forward


class ToySign(TorchAttack):
    """One signed-gradient step raising a classifier's cross-entropy (a toy FGSM)."""

    _estimator_requirements = (BaseEstimator, ClassifierMixin)  # what ART checks it gets
    PARAMS = COMMON + (
        Param("eps", 8 / 255, "l-inf budget", float, "[0, 1] pixel units", low=0, high=1,
              open_low=True),
    )  # fmt: skip

    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        """Images x (B, C, H, W) in [0, 1], labels y (B,) or one-hot (B, K) (default: the
        model's own) -> ``(x_adv, report)`` with per-image losses and success."""
        forward = torch_forward(self.estimator)
        lo, hi = clip_range(self.estimator, (0.0, 1.0))
        with torch.no_grad():
            clean = forward(x).float()
        labels = clean.argmax(1) if y is None else (y.argmax(1) if y.ndim == 2 else y).long()
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(forward(x_in), labels, reduction="sum"), x_in)
        x_adv = (x + self.eps * grad.sign()).clamp(lo, hi).detach()
        with torch.no_grad():
            adv = forward(x_adv).float()
        report = {"loss_clean": F.cross_entropy(clean, labels, reduction="none"),
                  "loss_adv": F.cross_entropy(adv, labels, reduction="none"),
                  "success": (adv.argmax(1) != labels).float()}  # fmt: skip
        return x_adv, report


register_attack("toy-sign", ToySign, "cls")
