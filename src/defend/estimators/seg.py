"""ART estimator for segmentation: image in, per-pixel logits out."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from defend.estimators.torch_estimator import TorchEstimator
from defend.losses import SEG_LOSSES

__all__ = ["SegEstimator"]

MASK_TARGET_WARNING = (
    "SegEstimator: targets y lie outside [0, 1], so they are not masks; ART attacks called "
    "with y=None pass predict(x), which is logits: pass the ground-truth masks, or "
    "(predict(x) > 0) to attack the model's own thresholded prediction."
)


class SegEstimator(TorchEstimator):
    """A segmentation model for ART and our attacks.

    ``x`` is an image batch ``(B, C, H, W)`` in ``[0, 1]``; predictions are per-pixel logits
    ``(B, K, H, W)`` (one sigmoid channel per label); targets ``y`` are masks ``(B, K, H, W)``
    in ``{0, 1}``.

    Args:
        model: ``model(x (B, C, H, W)) -> logits (B, K, H, W)`` (an smp model).
        input_shape: ``(C, H, W)``.
        device: torch device (default: CUDA when available).
        loss: a name of :data:`defend.losses.SEG_LOSSES` (per-sample ``(B,)``): ``"dicefocal"``
            (the default: Dice + Focal, what ``defend train seg`` minimises), ``"bce"``
            (binary cross-entropy with logits) or ``"dice"``; or a callable
            ``(logits, y) -> losses``: per-sample ``(B,)`` values, or a scalar batch mean
            (smp's ``DiceLoss`` / ``FocalLoss``), which is multiplied by ``B`` so that
            gradients have the same sum-over-samples semantics.
        clip_values: valid input range, which attacks clip to.
    """

    estimator_params = TorchEstimator.estimator_params + ["loss_function"]

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        device: str | torch.device | None = None,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "dicefocal",
        clip_values: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(model, input_shape, device=device, clip_values=clip_values)
        self.loss_function = loss

    @property
    def loss_function(self) -> str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss: a name of :data:`defend.losses.SEG_LOSSES` or a callable."""
        return self._loss_function

    @loss_function.setter
    def loss_function(self, loss: str | Callable[..., torch.Tensor]) -> None:
        if not callable(loss) and loss not in SEG_LOSSES:
            raise ValueError(f"loss must be one of {tuple(SEG_LOSSES)} or a callable, got {loss!r}")
        self._loss_function = loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` for images ``x`` ``(B, C, H, W)``."""
        return self._model(x)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``(B,)`` (or a batch-mean scalar from a callable loss)."""
        if callable(self._loss_function):
            return self._loss_function(pred, y)
        if pred.shape != y.shape:
            raise ValueError(f"target y has shape {tuple(y.shape)}, the logits {tuple(pred.shape)}")
        if bool(((y < 0) | (y > 1)).any()):
            warnings.warn(MASK_TARGET_WARNING, RuntimeWarning, stacklevel=4)
        return SEG_LOSSES[self._loss_function](pred, y)
