"""The smoothed model as an estimator, for attacks that know it is smoothed (EOT).

Expectation over transformation (Athalye et al. 2018; for smoothed classifiers Salman et al.
2019): each forward pass averages the base model over ``draws`` fresh noisy copies of every
input, so an attack's gradient is a Monte-Carlo estimate of the smoothed model's. The result
is an estimator of the base estimator's own kind (an ART ``PyTorchClassifier``, a
``SegEstimator``, a ``ReconEstimator``) and output format, so every attack that runs on the
base model runs on the smoothed one unchanged:

* classification: the log of the mean softmax (logits of the soft smoothed classifier);
* segmentation: the logit of the mean per-pixel probability;
* reconstruction: the mean reconstruction.

A black-box attack (DGDE) only queries predictions, and fresh noise on every query makes
them random: it keeps a few-pixel change that flipped one noisy estimate and not the
smoothed model. ``frozen_seed`` fixes the ``draws`` noise images once (common random
numbers, the same for every input and query), so the attacker sees one deterministic
Monte-Carlo estimate of the smoothed model and what fools it transfers to the fresh draws
of the smoothed prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from defend.attacks.torch_attack import torch_forward
from defend.errors import DefendError
from defend.estimators import ReconEstimator, SegEstimator
from defend.estimators.cls import make_classifier
from defend.memory import sample_bytes, samples_per_pass
from defend.smooth.noise import ImageNoise, kspace_noise
from defend.tasks import kind_of


def _mean_softmax_logits(out: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.softmax(out.float(), dim=2).mean(1).clamp_min(1e-12))


def _mean_sigmoid_logits(out: torch.Tensor) -> torch.Tensor:
    return torch.logit(torch.sigmoid(out.float()).mean(1), eps=1e-6)


#: how noisy outputs (B, draws, ...) become one output (B, ...), per task
COMBINE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cls": _mean_softmax_logits,
    "seg": _mean_sigmoid_logits,
    "recon": lambda out: out.mean(1),
}


class ExpectedOutput(nn.Module):
    """``combine`` of ``forward(D(x + noise))`` over ``draws`` noisy copies of each input.

    Args:
        forward: the base estimator's torch forward, (N, ...) -> (N, ...).
        base: the base model (a submodule, so that ``.to`` and ``.eval`` reach it).
        noise: :class:`ImageNoise` or :class:`~defend.smooth.core.KspaceNoise`. draws:
            copies per input.
        combine: (B, draws, ...) -> (B, ...) (:data:`COMBINE`).
        denoiser: a module from noisy to clean inputs, or None.
        frozen_seed: None for fresh noise on every call; else the seed of ``draws`` noise
            images (C, H, W), the same on every call and for every input (module doc).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        base: nn.Module,
        noise: Any,
        draws: int,
        combine: Callable[[torch.Tensor], torch.Tensor],
        denoiser: nn.Module | None = None,
        frozen_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.base, self.denoiser = base, denoiser
        self._forward, self.noise, self.draws, self.combine = forward, noise, draws, combine
        self.frozen_seed = frozen_seed
        #: fresh noise comes from the global generator a batch at a time, so an attack's
        #: batch must not follow the memory budget (:func:`defend.attacks.torch_attack.
        #: attack_batch`): the previous fixed default, 16
        self.attack_batch = 16 if frozen_seed is None else None
        self.train(base.training)  # a new module is in training mode; take the base's

    def _draw(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Standard normal noise (B, ...) of draw ``index`` for inputs ``x`` (B, ...): fresh
        from the global generator, or the frozen draw ``index`` (the same for every input)."""
        if self.frozen_seed is None:
            return torch.randn(x.shape, device=x.device, dtype=x.dtype)
        state = np.random.SeedSequence([self.frozen_seed, index]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        draw = torch.randn(x.shape[1:], generator=generator)
        return draw.to(x.device, x.dtype).expand_as(x)

    def _noisy_forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """``forward(D(noisy))`` of a batch of noisy inputs (N, ...)."""
        return self._forward(self.denoiser(noisy) if self.denoiser is not None else noisy)

    def sample_bytes(self, sample: torch.Tensor) -> int:
        """Bytes one input ``sample`` (...) adds to an attack's pass: one noisy copy's
        (:func:`defend.memory.sample_bytes`), since the draws go through in chunks the
        budget holds, recomputed in the backward pass (:meth:`forward`)."""
        return sample_bytes(self._noisy_forward, sample, self)

    def _chunk(self, x: torch.Tensor, first: int, count: int, per_pass: int) -> torch.Tensor:
        """Outputs (B, count, ...) of draws ``first .. first + count - 1`` of inputs (B, ...),
        through the model ``per_pass`` noisy copies at a time (each recomputed in the
        backward pass when there are several)."""
        scale = self.noise.scale(x)
        noisy = torch.stack([x + scale * self._draw(x, first + j) for j in range(count)], 1)
        parts = noisy.flatten(0, 1).split(per_pass)
        if torch.is_grad_enabled() and len(parts) > 1:
            outs = [checkpoint(self._noisy_forward, part, use_reentrant=False) for part in parts]
        else:
            outs = [self._noisy_forward(part) for part in parts]
        return torch.cat(outs).unflatten(0, (len(x), count))

    def forward(self, x: torch.Tensor, *unused: Any) -> torch.Tensor:
        """The expected output (B, ...) of inputs ``x`` (B, ...); a reconstruction model's
        mask argument is unused (the base estimator applies its own).

        The noisy copies go through the model in passes the memory budget holds
        (:func:`defend.memory.samples_per_pass`), draws in chunks of ``per_pass // B``
        (at least one); with gradients each chunk is recomputed in the backward pass
        (``torch.utils.checkpoint``) instead of kept, so memory does not grow with
        ``draws``. Draw ``j`` is the same whatever the chunking."""
        per_pass = samples_per_pass(self._noisy_forward, x[0].detach(), x.device, self)
        size = max(1, min(self.draws, per_pass // len(x)))
        recompute = torch.is_grad_enabled() and size < self.draws
        outs = []
        for first in range(0, self.draws, size):
            args = (x, first, min(size, self.draws - first), per_pass)
            outs.append(checkpoint(self._chunk, *args, use_reentrant=False) if recompute
                        else self._chunk(*args))  # fmt: skip
        return self.combine(torch.cat(outs, 1))


class SmoothedReconEstimator(ReconEstimator):
    """A reconstruction EOT estimator; :meth:`reshaped` smooths the base estimator's reshaped
    copy (fastMRI data mixes k-space widths)."""

    #: (base estimator, sigma, draws, denoiser, frozen_seed, unit)
    smoothing: tuple = ()

    def reshaped(self, input_shape: tuple[int, ...]) -> ReconEstimator:
        if tuple(input_shape) == tuple(self.input_shape):
            return self
        base, sigma, draws, denoiser, frozen_seed, unit = self.smoothing
        return eot_estimator(base.reshaped(input_shape), sigma, draws, denoiser, frozen_seed, unit)


def eot_estimator(
    estimator: Any,
    sigma: float,
    draws: int,
    denoiser: nn.Module | None = None,
    frozen_seed: int | None = None,
    unit: float | None = None,
) -> Any:
    """The smoothed version of ``estimator`` (``defend.load_estimator``'s) for EOT attacks:
    the same kind of estimator, input and output format, around :class:`ExpectedOutput`
    (``frozen_seed``: fixed noise draws, for black-box attacks; module doc). Reconstruction:
    the noise of the smoothed model, :func:`defend.smooth.noise.kspace_noise` (``unit``: the
    k-space unit, :func:`defend.smooth.training_unit`; None takes the denoiser's)."""

    if draws < 1:
        raise DefendError(f"--eot must be >= 1 (noise draws per step), got {draws}")
    forward, base = torch_forward(estimator), estimator.model
    device = estimator.device

    def expected(noise: Any, task: str) -> ExpectedOutput:
        return ExpectedOutput(
            forward, base, noise, draws, COMBINE[kind_of(task)], denoiser, frozen_seed
        )

    if isinstance(estimator, ReconEstimator):
        noise = kspace_noise(sigma, estimator, unit, denoiser)
        model = expected(noise, "recon")
        smoothed = SmoothedReconEstimator(
            model,
            estimator.mask,
            estimator.input_shape,
            device=device,
            loss=estimator.loss_function,
            acquisition=estimator.acquisition,
        )
        smoothed.smoothing = (estimator, sigma, draws, denoiser, frozen_seed, noise.unit)
        return smoothed
    if isinstance(estimator, SegEstimator):
        model = expected(ImageNoise(sigma), "seg")
        loss = estimator.loss_function
        return SegEstimator(model, estimator.input_shape, device=device, loss=loss)
    model = expected(ImageNoise(sigma), "cls")
    return make_classifier(model, estimator.input_shape, estimator.nb_classes, device=device)
