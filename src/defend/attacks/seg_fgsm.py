"""FGSM and PGD against segmentation models (seed 001).

Wang & Xu, "Susceptibility of adversarial attack on medical image segmentation models"
(arXiv 2401.11224): one signed-gradient step on the input, with the attack loss either the
model's training loss or BCE (their finding: BCE attacks better). Unlike their code, the
update is the standard ``x + eps * sign(g)`` clamped to the valid range, and the loss takes
(input, target) in the right order. ``max_iter > 1`` gives PGD with a random start.
"""

from __future__ import annotations

from typing import Any

import torch
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

from defend.attacks.base import TorchAttack, clip_range, differentiable
from defend.errors import DefendError
from defend.losses import SEG_LOSSES, seg_loss
from defend.metrics import dice_iou

LOSSES = (*SEG_LOSSES, "training")


class SegmentationFGSM(TorchAttack):
    """Untargeted l-inf FGSM (``max_iter=1``) or PGD against a per-pixel segmentation model.

    Args:
        estimator: an ART estimator with loss gradients mapping images (B, C, H, W) to
            per-pixel logits (B, K, H, W), e.g. ``defend``'s ``SegEstimator``.
        eps: l-inf budget in the input's units (the seed: 0.007-0.009 on [0, 1]).
        loss: ``"bce"``, ``"dice"``, ``"dicefocal"``, or ``"training"`` (the estimator's own
            loss through ``loss_gradient``: for a ``defend train`` checkpoint, the training
            loss). The first three need a ``defend`` estimator (direct autograd).
        target: ``"truth"`` (y), ``"prediction"`` (the model's own thresholded output on the
            clean input) or ``"auto"`` (truth when y is given).
        max_iter: 1 for FGSM; more for PGD with a random start in the eps-ball.
        step: PGD step as a fraction of eps (default 2.5 / max_iter, Madry et al.).
        threshold: probability threshold of a foreground pixel.
    """

    attack_params = TorchAttack.attack_params + [
        "eps",
        "loss",
        "target",
        "max_iter",
        "step",
        "threshold",
    ]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin)

    def __init__(
        self,
        estimator: Any,
        eps: float = 0.008,
        loss: str = "bce",
        target: str = "auto",
        max_iter: int = 1,
        step: float | None = None,
        threshold: float = 0.5,
        batch_size: int = 16,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.eps = eps
        self.loss = loss
        self.target = target
        self.max_iter = max_iter
        self.step = step
        self.threshold = threshold
        super().__init__(estimator, batch_size=batch_size, seed=seed, verbose=verbose)
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        if not self.eps > 0:
            raise DefendError(f"eps must be > 0, got {self.eps}")
        if self.loss not in LOSSES:
            raise DefendError(f"unknown loss '{self.loss}': choose one of {', '.join(LOSSES)}")
        if self.target not in ("truth", "prediction", "auto"):
            raise DefendError(f"target must be truth, prediction or auto, got '{self.target}'")
        if self.max_iter < 1:
            raise DefendError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.step is not None and not self.step > 0:
            raise DefendError(f"step must be > 0, got {self.step}")
        if not 0 < self.threshold < 1:
            raise DefendError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.loss != "training" and not differentiable(self.estimator):
            raise DefendError(
                f"loss '{self.loss}' needs a defend estimator; use loss='training' for others"
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        est = self.estimator
        if hasattr(est, "forward"):
            return est.forward(x)
        return torch.as_tensor(est.predict(x.cpu().numpy()), device=x.device)

    def _loss_and_grad(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss == "training":
            grad = self.estimator.loss_gradient(x, target)
            return torch.full((len(x),), float("nan"), device=x.device), torch.as_tensor(grad)
        x = x.detach().requires_grad_(True)
        loss = seg_loss(self.loss, self._forward(x).float(), target)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad

    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        generator: torch.Generator,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lo, hi = clip_range(self.estimator)
        with torch.no_grad():
            clean_logits = self._forward(x).float()
        prediction = (torch.sigmoid(clean_logits) > self.threshold).float()
        if self.target == "truth" and y is None:
            raise DefendError("target='truth' needs the ground-truth masks y")
        use_truth = self.target == "truth" or (self.target == "auto" and y is not None)
        target = y.float() if use_truth else prediction
        if target.shape != clean_logits.shape:
            raise DefendError(
                f"masks are {tuple(target.shape)}, the model predicts {tuple(clean_logits.shape)}"
            )

        step = self.eps if self.max_iter == 1 else (self.step or 2.5 / self.max_iter) * self.eps
        x_adv = x.clone()
        if self.max_iter > 1:
            noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
            x_adv = (x + self.eps * noise).clamp(lo, hi)
        for _ in range(self.max_iter):
            _, grad = self._loss_and_grad(x_adv, target)
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(lo, hi)

        with torch.no_grad():
            adv_logits = self._forward(x_adv).float()
        reference = y.float() if y is not None else prediction
        report = self._scores(clean_logits, adv_logits, reference)
        report["linf"] = (x_adv - x).abs().flatten(1).amax(1)
        if self.loss != "training":
            report["loss_clean"] = seg_loss(self.loss, clean_logits, target)
            report["loss_adv"] = seg_loss(self.loss, adv_logits, target)
        return x_adv.detach(), report

    def _scores(
        self, clean: torch.Tensor, adv: torch.Tensor, reference: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Dice / IoU clean and adversarial, mean over labels with a non-empty reference."""
        report = {}
        for name, logits in (("clean", clean), ("adv", adv)):
            dice, iou, nonempty = dice_iou(logits, reference, self.threshold)
            count = nonempty.sum(1).float()
            nan = torch.full_like(count, float("nan"))
            report[f"dice_{name}"] = torch.where(count > 0, (dice * nonempty).sum(1) / count, nan)
            report[f"iou_{name}"] = torch.where(count > 0, (iou * nonempty).sum(1) / count, nan)
        report["dice_diff"] = (report["dice_clean"] - report["dice_adv"]) / report["dice_clean"]
        return report
