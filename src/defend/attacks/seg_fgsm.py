"""FGSM and PGD against segmentation models (Wang & Xu 2024).

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

from defend.attacks.declared import SEG_FGSM
from defend.attacks.torch_attack import (
    Attacked,
    SampleRNG,
    TorchAttack,
    clip_range,
    differentiable,
    torch_forward,
)
from defend.errors import DefendError
from defend.estimators.torch_estimator import per_sample
from defend.losses import SEG_LOSSES, seg_loss
from defend.metrics import dice_iou

LOSSES = (*SEG_LOSSES, "training")


class SegmentationFGSM(TorchAttack):
    """Untargeted l-inf FGSM (``max_iter=1``) or PGD against a per-pixel segmentation model.

    Args:
        estimator: an ART estimator with loss gradients mapping images (B, C, H, W) to
            per-pixel logits (B, K, H, W), e.g. ``defend``'s ``SegEstimator``.

    ``loss="training"`` is the estimator's own loss, for a ``defend train`` checkpoint the loss
    it was trained with (``defend.tasks.SegTask``). Any per-image Dice counts an empty target
    too (smoothed), so samples without foreground are attacked as well (towards false
    foreground). ``bce``, ``dice`` and ``dicefocal`` need a differentiable estimator
    (:func:`defend.attacks.torch_attack.torch_forward`); other ART estimators are attacked through
    ``loss_gradient`` with ``"training"``.
    """

    PARAMS = SEG_FGSM
    _estimator_requirements = (BaseEstimator, LossGradientsMixin)

    def _check_params(self) -> None:
        super()._check_params()
        if self.loss != "training" and not differentiable(self.estimator):
            raise DefendError(
                f"loss '{self.loss}' needs a defend estimator; use loss='training' for others"
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        forward = torch_forward(self.estimator)
        if forward is not None:
            return forward(x)
        return torch.as_tensor(self.estimator.predict(x.cpu().numpy()), device=x.device)

    def attack_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-sample loss (B,) the attack raises, of logits (B, K, H, W) against masks
        (B, K, H, W); ``training``: the estimator's own loss."""
        if self.loss == "training":
            return per_sample(self.estimator.loss(logits, target), len(logits))
        return seg_loss(self.loss, logits.float(), target)

    def _through_art(self) -> bool:
        """Whether the loss is reached only through ART's ``loss_gradient`` (no torch path)."""
        est = self.estimator
        return self.loss == "training" and (
            torch_forward(est) is None or not callable(getattr(est, "loss", None))
        )

    def _loss_and_grad(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._through_art():
            grad = self.estimator.loss_gradient(x.cpu().numpy(), target.cpu().numpy())
            nan = torch.full((len(x),), float("nan"), device=x.device)
            return nan, torch.as_tensor(grad, device=x.device)
        x = x.detach().requires_grad_(True)
        loss = self.attack_loss(self._forward(x), target)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad

    def attack_target(self, clean_logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The masks (B, K, H, W) the attack moves away from: y, or the clean prediction.

        Args:
            clean_logits: (B, K, H, W) the model's logits on the clean input.
            y: (B, K, H, W) ground-truth masks, or None.
        """
        if self.target == "truth" and y is None:
            raise DefendError("target='truth' needs the ground-truth masks y")
        use_truth = self.target == "truth" or (self.target == "auto" and y is not None)
        target = y.float() if use_truth else (torch.sigmoid(clean_logits) > self.threshold).float()
        if target.shape != clean_logits.shape:
            raise DefendError(
                f"masks are {tuple(target.shape)}, the model predicts {tuple(clean_logits.shape)}"
            )
        return target

    def _step_size(self) -> float:
        """The absolute step: ``step * eps``; default eps (FGSM) or 2.5 eps / max_iter (PGD)."""
        if self.step is not None:
            return self.step * self.eps
        return self.eps if self.max_iter == 1 else 2.5 / self.max_iter * self.eps

    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        lo, hi = clip_range(self.estimator)
        with torch.no_grad():
            clean_logits = self._forward(x).float()
        prediction = (torch.sigmoid(clean_logits) > self.threshold).float()
        target = self.attack_target(clean_logits, y)

        step = self._step_size()
        x_adv = x.clone()
        if self.max_iter > 1:
            noise = rng.rand(x.shape[1:]) * 2 - 1
            x_adv = (x + self.eps * noise).clamp(lo, hi)
        for _ in self.iterations():
            _, grad = self._loss_and_grad(x_adv, target)
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(lo, hi)

        with torch.no_grad():
            adv_logits = self._forward(x_adv).float()
            reference = y.float() if y is not None else prediction
            report = self._scores(clean_logits, adv_logits, reference)
            report["linf"] = (x_adv - x).abs().flatten(1).amax(1)
            report["empty_target"] = (target.flatten(2).sum(-1) == 0).all(1).float()
            if not self._through_art():
                report["loss_clean"] = self.attack_loss(clean_logits, target)
                report["loss_adv"] = self.attack_loss(adv_logits, target)
        return x_adv.detach(), report

    def _scores(
        self, clean: torch.Tensor, adv: torch.Tensor, reference: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Dice / IoU clean and adversarial, mean over labels with a non-empty reference, and
        the foreground predicted on labels whose reference is empty (fraction of pixels)."""
        report = {}
        empty = reference.flatten(2).sum(-1) == 0  # (B, K)
        n_empty = empty.sum(1).float()
        for name, logits in (("clean", clean), ("adv", adv)):
            dice, iou, nonempty = dice_iou(logits, reference, self.threshold)
            count = nonempty.sum(1).float()
            nan = torch.full_like(count, float("nan"))
            report[f"dice_{name}"] = torch.where(count > 0, (dice * nonempty).sum(1) / count, nan)
            report[f"iou_{name}"] = torch.where(count > 0, (iou * nonempty).sum(1) / count, nan)
            foreground = (torch.sigmoid(logits) > self.threshold).float().flatten(2).mean(-1)
            false_fg = (foreground * empty).sum(1) / n_empty.clamp_min(1)
            report[f"false_fg_{name}"] = torch.where(n_empty > 0, false_fg, nan)
        clean_dice = report["dice_clean"]
        report["dice_diff"] = torch.where(
            clean_dice > 0, (clean_dice - report["dice_adv"]) / clean_dice, torch.nan
        )
        return report
