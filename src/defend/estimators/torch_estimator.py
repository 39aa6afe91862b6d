"""An ART estimator for any torch model with a differentiable loss: images, k-space, maps.

ART has no estimator for segmentation or image-to-image models. :class:`TorchEstimator` is the
minimal one ART's white-box evasion attacks (``FastGradientMethod``,
``ProjectedGradientDescent``, ...) and ``AdversarialTrainer`` need: ``predict``,
``loss_gradient``, ``compute_loss`` and ``fit``. It converts between numpy and torch once per
call: numpy in gives numpy out (float32), a tensor in gives a tensor out on the model's device
(never a host copy), so our own attacks use the same object on the GPU.

Losses are per sample and *summed* over the batch for gradients, so a sample's gradient does
not shrink when the batch grows.

ART's trap: for an estimator that is not a classifier, an attack called with ``y=None`` uses
``predict(x)`` as the target. A distance loss (MSE, L1) then has exactly zero gradient at ``x``
and FGM/PGD return ``x`` unchanged. ``loss_gradient`` warns when that happens: pass the ground
truth (or a target) as ``y``.
"""

from __future__ import annotations

import copy
import warnings
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from torch import nn

from defend.device import model_mode, pick_device

__all__ = ["ZERO_GRADIENT_WARNING", "TorchEstimator", "per_sample"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

ZERO_GRADIENT_WARNING = (
    "loss_gradient is exactly zero for the whole batch: the target y equals the model's own "
    "prediction. ART attacks called with y=None use predict(x) as the target, and a distance "
    "loss has zero gradient there, so FGM/PGD return x unchanged; pass the ground truth (or an "
    "attack target) as y."
)


def per_sample(value: torch.Tensor, batch: int) -> torch.Tensor:
    """Turn a loss value into per-sample losses ``(B,)`` whose sum is the batch's total loss.

    Args:
        value: a loss, either per sample ``(B,)`` or ``(B, ...)`` (averaged over the trailing
            dimensions), or a scalar that is already a mean over the batch (smp's ``DiceLoss``,
            ``FocalLoss``): it is expanded to ``(B,)``, so the sum is ``B * value`` and the
            gradient has the same sum semantics as a per-sample loss.
        batch: batch size ``B``.

    Returns:
        Per-sample losses, shape ``(B,)``.
    """
    if value.ndim == 0:
        return value.expand(batch)
    if value.shape[0] != batch:
        raise ValueError(
            f"a loss must return a scalar or per-sample values (B={batch}, ...), "
            f"got shape {tuple(value.shape)}"
        )
    return value.reshape(batch, -1).mean(dim=1) if value.ndim > 1 else value


class TorchEstimator(LossGradientsMixin, BaseEstimator):
    """ART estimator around a torch model, with numpy and torch entry points.

    Subclasses implement :meth:`forward` (input batch -> prediction) and :meth:`loss`
    (prediction, target -> per-sample losses ``(B,)``).

    ART's preprocessing and pre-/post-processing defences are not applied (``preprocessing``
    is ``None``; setting any of them raises): put such steps in the model instead, so that the
    torch path sees them too.

    Args:
        model: the torch model; moved to ``device`` and put in eval mode (every call runs it in
            eval mode unless asked otherwise, and restores the mode it found).
        input_shape: shape of one input sample (without the batch dimension).
        device: torch device (default: :func:`defend.device.pick_device`).
        clip_values: ``(min, max)`` of valid input values, which ART attacks clip to, or
            ``None`` for an unbounded input.
        learning_rate: Adam learning rate used by :meth:`fit`.
    """

    estimator_params = BaseEstimator.estimator_params + ["input_shape", "device", "learning_rate"]

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        device: str | torch.device | None = None,
        clip_values: tuple[float, float] | None = None,
        learning_rate: float = 1e-3,
    ) -> None:
        self._device = pick_device(device)
        super().__init__(
            model=model.to(self._device).eval(),
            clip_values=clip_values,
            preprocessing_defences=None,
            postprocessing_defences=None,
            preprocessing=None,
        )
        self._input_shape = tuple(int(s) for s in input_shape)
        self.learning_rate = float(learning_rate)
        self._optimizer: torch.optim.Optimizer | None = None
        self._check_params()

    # ------------------------------------------------------------------ ART properties

    @property
    def model(self) -> nn.Module:
        """The wrapped torch model (on :attr:`device`)."""
        return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self._model = model.to(self._device)
        self._optimizer = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        return self._input_shape

    @property
    def device(self) -> torch.device:
        """The device holding the model; tensors passed in are moved there."""
        return self._device

    @device.setter
    def device(self, device: str | torch.device) -> None:
        self._device = torch.device(device)
        self._to_device(self._device)

    def _to_device(self, device: torch.device) -> None:
        """Move everything the estimator holds to ``device`` (subclasses extend this)."""
        self._model.to(device)

    def _check_params(self) -> None:
        super()._check_params()
        if self.preprocessing_operations or self.postprocessing_defences:
            raise ValueError(
                f"{type(self).__name__} does not apply ART preprocessing or defences; "
                "put them in the model instead"
            )

    # ------------------------------------------------------------------ to implement

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction for an input batch ``x`` (a tensor on :attr:`device`)."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``(B,)`` of predictions ``pred`` against targets ``y``."""

    # ------------------------------------------------------------------ conversions

    def _as_input(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An input batch as a float32 tensor on :attr:`device` (no copy if it already is)."""
        if torch.is_tensor(x):
            return x.to(device=self._device, dtype=torch.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self._device)

    def _as_target(self, y: Any) -> torch.Tensor:
        """A target batch as a float32 tensor on :attr:`device`."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} needs targets y (ART attacks pass predict(x) when y=None)"
            )
        return self._as_input(y)

    @staticmethod
    def _index(data: Any, index: np.ndarray) -> Any:
        if torch.is_tensor(data):
            return data[torch.as_tensor(index, device=data.device)]
        return data[index]

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample(self.loss(self.forward(x), y), x.shape[0])

    # ------------------------------------------------------------------ ART API

    def predict(
        self,
        x: ArrayOrTensor,
        batch_size: int = 32,
        training_mode: bool = False,
        **kwargs: Any,
    ) -> ArrayOrTensor:
        """Predictions for ``x``, computed in batches without gradients.

        Args:
            x: inputs ``(N, *input_shape)``, numpy or torch.
            batch_size: samples per forward pass.
            training_mode: run the model in training mode (default: eval mode; the model's
                previous mode is restored afterwards).

        Returns:
            Predictions ``(N, ...)``: float32 numpy for numpy ``x``, a tensor on
            :attr:`device` for a tensor ``x``.
        """
        numpy_in = not torch.is_tensor(x)
        xt = self._as_input(x)
        outputs = []
        with model_mode(self._model, training_mode), torch.no_grad():
            for start in range(0, max(len(xt), 1), batch_size):
                outputs.append(self.forward(xt[start : start + batch_size]))
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return out.float().cpu().numpy() if numpy_in else out

    def loss_gradient(
        self,
        x: ArrayOrTensor,
        y: np.ndarray | torch.Tensor,
        training_mode: bool = False,
        **kwargs: Any,
    ) -> ArrayOrTensor:
        """Gradient of the summed per-sample loss with respect to ``x``, in one batched pass.

        Args:
            x: inputs ``(N, *input_shape)``, numpy or torch.
            y: targets (numpy or torch), as :meth:`loss` expects.
            training_mode: run the model in training mode (default: eval mode).

        Returns:
            ``d sum_i loss_i / d x``, same shape as ``x``: float32 numpy for numpy ``x``, a
            tensor on :attr:`device` for a tensor ``x``. Warns (:data:`ZERO_GRADIENT_WARNING`)
            when it is exactly zero for the whole batch.
        """
        numpy_in = not torch.is_tensor(x)
        xt = self._as_input(x).detach().requires_grad_(True)
        yt = self._as_target(y)
        with model_mode(self._model, training_mode), torch.enable_grad():
            total = self._losses(xt, yt).sum()
            (grad,) = torch.autograd.grad(total, xt, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(xt)
        if not bool(grad.any()):
            warnings.warn(ZERO_GRADIENT_WARNING, RuntimeWarning, stacklevel=2)
        return grad.cpu().numpy() if numpy_in else grad

    def compute_loss(
        self,
        x: ArrayOrTensor,
        y: np.ndarray | torch.Tensor,
        reduction: str = "mean",
        batch_size: int = 32,
        **kwargs: Any,
    ) -> ArrayOrTensor:
        """The loss of the model on ``(x, y)``, without gradients, in eval mode.

        Args:
            x: inputs ``(N, *input_shape)``, numpy or torch.
            y: targets, numpy or torch.
            reduction: ``"none"`` (per-sample ``(N,)``), ``"mean"`` or ``"sum"`` over samples.
            batch_size: samples per forward pass.

        Returns:
            float32 numpy for numpy ``x``, a tensor on :attr:`device` for a tensor ``x``.
        """
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        numpy_in = not torch.is_tensor(x)
        xt = self._as_input(x)
        yt = self._as_target(y)
        parts = []
        with model_mode(self._model, False), torch.no_grad():
            for start in range(0, len(xt), batch_size):
                stop = start + batch_size
                parts.append(self._losses(xt[start:stop], yt[start:stop]))
        losses = torch.cat(parts) if parts else torch.zeros(0, device=self._device)
        if reduction == "mean":
            losses = losses.mean()
        elif reduction == "sum":
            losses = losses.sum()
        return losses.float().cpu().numpy() if numpy_in else losses

    def fit(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        batch_size: int = 32,
        nb_epochs: int = 1,
        learning_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Train the model with Adam on ``(x, y)`` (mean of the per-sample losses per batch).

        A plain loop for ART's ``AdversarialTrainer``, which calls it once per batch; the
        optimiser state persists between calls. Real training uses ``defend.train``.

        Args:
            x: inputs ``(N, *input_shape)``, numpy or torch.
            y: targets, numpy or torch.
            batch_size: samples per step.
            nb_epochs: passes over the data (shuffled with numpy's global RNG).
            learning_rate: changes :attr:`learning_rate` if given.
            **kwargs: ignored (ART passes ``verbose``).
        """
        if learning_rate is not None:
            self.learning_rate = float(learning_rate)
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self._model.parameters(), lr=self.learning_rate)
        for group in self._optimizer.param_groups:
            group["lr"] = self.learning_rate
        n = len(x)
        with model_mode(self._model, True):
            for _ in range(nb_epochs):
                order = np.random.permutation(n)
                for start in range(0, n, batch_size):
                    index = order[start : start + batch_size]
                    xb = self._as_input(self._index(x, index))
                    yb = self._as_target(self._index(y, index))
                    loss = self._losses(xb, yb).mean()
                    self._optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self._optimizer.step()

    # ------------------------------------------------------------------ refitting

    def reset(self) -> None:
        """Re-initialise every layer's parameters (``reset_parameters``) for a fresh fit."""

        def _reset(module: nn.Module) -> None:
            reset: Callable[[], None] | None = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

        self._model.apply(_reset)
        self._optimizer = None

    def clone_for_refitting(self) -> TorchEstimator:
        """A deep copy (model, mask, parameters) with re-initialised weights and no optimiser."""
        optimizer, self._optimizer = self._optimizer, None
        try:
            clone = copy.deepcopy(self)
        finally:
            self._optimizer = optimizer
        clone.reset()
        return clone
