"""Perturbation budgets on measured k-space, in units that mean the same at every image size.

One :class:`KspaceBudget` is what the hallucination attack, k-space PGD adversarial training
and hallucination training share: which entries may move, how large the budget is, how a step
is taken and how a perturbation is projected back.

Relative budgets (the default) are fractions of the measured k-space's scale: l2 per coil, a
fraction of the coil's sampled k-space norm (Morshuis et al.); l-inf, ``eps`` times the sample's
k-space unit (:func:`kspace_unit`) on every component that may move. Absolute budgets are raw
k-space units.

The k-space unit is one definition shared by the attacks, the smoothing noise and the
certified radii (:class:`defend.smooth.noise.KspaceNoise`): the root-mean-square magnitude of
the sampled complex entries, ``||k sampled||_2 / sqrt(#sampled entries)``, an entry being one
complex number (coil, row, sampled column), so both its real and imaginary parts enter the
norm. With ``part="real"`` (Buğday et al.'s) the l-inf box has exactly as many components as
there are entries, and a perturbation filling it has l2 norm ``eps`` times the sampled k-space
norm; with ``part="complex"`` twice as many components move, each within the same box
(``sqrt(2) eps`` times the norm). An attack's budget is relative to each sample's own unit (its
threat model); the smoothing noise uses the unit of the training split, fixed before any input
is seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defend.errors import DefendError


def kspace_unit(x: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """The k-space unit of each sample: the root-mean-square magnitude of its sampled complex
    entries, ``sqrt(sum |k|^2 / #entries)`` over coils x rows x sampled columns.

    Args:
        x: (B, coils, H, W, 2) k-space (real and imaginary parts in the last axis).
        sampled: (B or 1, 1, 1, W, 1) 0/1, the sampled columns.

    Returns:
        (B, 1, 1, 1, 1), in the units of ``x``; 0 for a sample without sampled energy.
    """
    entries = sampled.flatten(1).sum(1) * x.shape[1] * x.shape[2]
    norm = (x * sampled).flatten(1).norm(dim=1)
    return (norm / entries.clamp_min(1).sqrt()).view(-1, 1, 1, 1, 1)


@dataclass(frozen=True)
class KspaceBudget:
    """An l-inf or l2 budget on the sampled entries of k-space ``(B, coils, H, W, 2)``.

    Args:
        eps: the budget (relative: at most 1; absolute: raw units).
        norm: ``"inf"`` (per moved component, in k-space units) or ``"2"`` (per coil).
        mode: ``"relative"`` or ``"absolute"``.
        part: ``"real"`` (only real parts move, as Buğday et al.) or ``"complex"``.
    """

    eps: float
    norm: str = "inf"
    mode: str = "relative"
    part: str = "real"

    def __post_init__(self) -> None:
        if self.mode not in ("relative", "absolute"):
            raise DefendError(f"eps_mode must be relative or absolute, got '{self.mode}'")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise DefendError(f"eps must be a finite number > 0, got {self.eps}")
        if self.mode == "relative" and self.eps > 1:
            raise DefendError(
                f"eps {self.eps:g} is relative to the k-space norm and must be <= 1 (1 is a "
                "perturbation as large as the measurement); use eps_mode absolute for raw units"
            )
        if self.norm not in ("inf", "2"):
            raise DefendError(f"norm must be inf or 2, got '{self.norm}'")
        if self.part not in ("real", "complex"):
            raise DefendError(f"part must be real or complex, got '{self.part}'")

    def movable(self, sampled: torch.Tensor) -> torch.Tensor:
        """The entries that may move: sampled columns (B, 1, 1, W, 1) 0/1 -> (B, 1, 1, W, 2),
        real parts only for ``part="real"``."""
        if self.part == "complex":
            return sampled.expand(*sampled.shape[:-1], 2)
        return sampled * torch.tensor([1.0, 0.0], device=sampled.device, dtype=sampled.dtype)

    def unit(self, x: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """What relative l-inf eps is a fraction of: the k-space unit of each sample
        (:func:`kspace_unit`, whichever ``part`` moves), (B, 1, 1, 1, 1).

        Args:
            x: (B, coils, H, W, 2) masked k-space; sampled: its (B, 1, 1, W, 1) 0/1 columns.
        """
        return kspace_unit(x, sampled)

    def bound(self, x: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """The absolute budget per sample (l-inf: (B, 1, 1, 1, 1)) or per coil (l2:
        (B, coils, 1, 1, 1)), for the ``x`` (B, coils, H, W, 2) it is measured on."""
        if self.mode == "absolute":
            shape = (len(x), 1 if self.norm == "inf" else x.shape[1], 1, 1, 1)
            return torch.full(shape, float(self.eps), device=x.device)
        if self.norm == "inf":
            return self.eps * self.unit(x, sampled)
        return self.eps * (x * sampled).flatten(2).norm(dim=2).view(len(x), -1, 1, 1, 1)

    def project(self, delta: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """``delta`` (B, coils, H, W, 2) moved into the budget ``bound`` (from :meth:`bound`)."""
        if self.norm == "inf":
            return torch.maximum(torch.minimum(delta, bound), -bound)
        norms = delta.flatten(2).norm(dim=2).view_as(bound).clamp_min(1e-30)
        return delta * (bound / norms).clamp(max=1.0)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of a unit step: the sign (l-inf) or the gradient
        normalised per coil (l2), same shape as ``grad`` (B, coils, H, W, 2)."""
        if self.norm == "inf":
            return grad.sign()
        norms = grad.flatten(2).norm(dim=2).view(len(grad), -1, 1, 1, 1).clamp_min(1e-30)
        return grad / norms

    def random_start(
        self, movable: torch.Tensor, step: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """A random start of one step's size inside the budget, zero outside ``movable``.

        Args:
            movable: (B, coils, H, W, 2) 0/1 entries that may move.
            step: absolute step, shaped like :meth:`bound`.
            noise: (B, coils, H, W, 2) uniform [0, 1) draws (l-inf) or standard normal (l2).
        """
        if self.norm == "inf":
            return (noise * 2 - 1) * step * movable
        return self.direction(noise * movable) * step
