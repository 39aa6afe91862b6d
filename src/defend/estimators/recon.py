"""ART estimator for MRI reconstruction: masked k-space in, magnitude image out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from defend.data.acquisition import Acquisition
from defend.estimators.torch_estimator import TorchEstimator
from defend.kspace import acquired_columns

__all__ = ["ReconEstimator"]

_LOSSES = ("mse", "l1")


class ReconEstimator(TorchEstimator):
    """A reconstruction model under a fixed acquisition (sampling mask), for ART and our attacks.

    ``x`` is k-space ``(B, coils, H, W, 2)`` float32 in raw units (real and imaginary parts in
    the last axis); the model masks it with the estimator's fixed ``mask`` first, so unsampled
    k-space has exactly zero gradient. Columns of ``x`` that are exactly zero (the data set's
    masked k-space there: fastMRI's padding columns, never acquired) are masked out too, so
    each sample's model input is the one the data set gives it (:func:`acquired_columns`).
    The model's input therefore depends on which columns are exactly zero: a perturbation
    written into such a column (any additive noise over all of k-space) makes it count as
    acquired and changes a VarNet's output discontinuously. defend's attacks perturb only
    ``defend.attacks.hallucination.sampled_columns(x, estimator)``; noise-based defences must
    do the same. Gradients at such columns are exactly zero.

    Predictions and targets ``y`` are magnitude images ``(B, h, w)`` in the units of the
    target. There are no ``clip_values``: k-space is unbounded, so choose ``eps`` relative to
    the k-space scale (e.g. a fraction of ``abs(x).max()``).

    Args:
        model: ``model(kspace (B, coils, H, W, 2), mask (1, 1, 1, W, 1) bool) -> (B, h, w)``
            (:class:`defend.models.recon.ReconUnet` / ``ReconVarNet``).
        mask: the fixed sampling mask, bool (or 0/1), shape ``(1, 1, 1, W, 1)`` or a dataset
            sample's ``(1, 1, W, 1)``; numpy or torch.
        input_shape: ``(coils, H, W, 2)``.
        device: torch device (default: CUDA when available).
        loss: ``"mse"`` or ``"l1"`` (per-sample mean over pixels), or a callable
            ``(pred (B, h, w), y (B, h, w)) -> (B,)`` losses or a batch-mean scalar.
        acquisition: the :class:`~defend.data.Acquisition` the mask came from; lets
            :meth:`reshaped` build the mask of another k-space width.
    """

    estimator_params = TorchEstimator.estimator_params + ["mask", "loss_function"]

    def __init__(
        self,
        model: nn.Module,
        mask: np.ndarray | torch.Tensor,
        input_shape: tuple[int, ...],
        device: str | torch.device | None = None,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
        acquisition: Acquisition | None = None,
    ) -> None:
        super().__init__(model, input_shape, device=device, clip_values=None)
        if len(self.input_shape) != 4 or self.input_shape[-1] != 2:
            raise ValueError(f"input_shape must be (coils, H, W, 2), got {self.input_shape}")
        self.mask = mask
        self.loss_function = loss
        self.acquisition = acquisition

    def reshaped(self, input_shape: tuple[int, ...]) -> ReconEstimator:
        """This estimator (same model, loss and device) for k-space of another shape.

        fastMRI data mixes k-space widths and coil counts across volumes; each shape gets the
        acquisition's evaluation mask of its width (the one the data set applied to it).

        Args:
            input_shape: ``(coils, H, W, 2)``.

        Raises:
            ValueError: another width without an ``acquisition`` to build its mask from.
        """
        input_shape = tuple(int(s) for s in input_shape)
        if input_shape == self.input_shape:
            return self
        width = input_shape[2]
        if width == self.input_shape[2]:
            mask = self._mask
        elif self.acquisition is not None:
            mask = self.acquisition.eval_mask(width)
        else:
            raise ValueError(
                f"k-space width {width} differs from the mask's {self.input_shape[2]} and the "
                "estimator has no acquisition to build another mask from"
            )
        return ReconEstimator(
            self._model, mask, input_shape, self._device, self._loss_function, self.acquisition
        )

    @property
    def mask(self) -> torch.Tensor:
        """The fixed sampling mask, bool, shape ``(1, 1, 1, W, 1)``, on :attr:`device`."""
        return self._mask

    @mask.setter
    def mask(self, mask: np.ndarray | torch.Tensor) -> None:
        m = mask if torch.is_tensor(mask) else torch.from_numpy(np.asarray(mask))
        width = self.input_shape[2]
        if m.numel() != width or m.shape[-2] != width:
            raise ValueError(
                f"mask must have shape (1, 1, 1, {width}, 1) or (1, 1, {width}, 1), "
                f"got {tuple(m.shape)}"
            )
        self._mask = (m.reshape(1, 1, 1, width, 1) != 0).to(self._device)

    @property
    def loss_function(self) -> str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss: ``"mse"``, ``"l1"`` or a callable."""
        return self._loss_function

    @loss_function.setter
    def loss_function(self, loss: str | Callable[..., torch.Tensor]) -> None:
        if not callable(loss) and loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES} or a callable, got {loss!r}")
        self._loss_function = loss

    def _to_device(self, device: torch.device) -> None:
        super()._to_device(device)
        self._mask = self._mask.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct k-space ``x`` ``(B, coils, H, W, 2)`` under the fixed mask: ``(B, h, w)``."""
        return self._model(x, self._mask & acquired_columns(x))

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``(B,)`` of reconstructions ``pred`` ``(B, h, w)`` vs images ``y``."""
        if callable(self._loss_function):
            return self._loss_function(pred, y)
        if pred.shape != y.shape:
            raise ValueError(
                f"target y has shape {tuple(y.shape)}, the reconstruction {tuple(pred.shape)}"
            )
        diff = (pred - y).reshape(pred.shape[0], -1)
        return diff.square().mean(dim=1) if self._loss_function == "mse" else diff.abs().mean(dim=1)
