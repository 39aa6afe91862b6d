"""Perturbation budgets on measured k-space, in units that mean the same at every image size.

One :class:`KspaceBudget` is what the hallucination attack, k-space PGD adversarial training
and hallucination training share: which entries may move, how large the budget is, how a step
is taken and how a perturbation is projected back.

Relative budgets (the default) are fractions of the measured k-space's norm: l2 per coil, a
fraction of the coil's sampled k-space norm (Morshuis et al.); l-inf, a fraction of the
root-mean-square of the entries that may move, ``eps * ||k|| / sqrt(#movable)``, so that a
perturbation filling the box has l2 norm ``eps`` times the k-space norm. Absolute budgets are
raw k-space units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defend.errors import DefendError


@dataclass(frozen=True)
class KspaceBudget:
    """An l-inf or l2 budget on the sampled entries of k-space ``(B, coils, H, W, 2)``.

    Args:
        eps: the budget (relative: at most 1; absolute: raw units).
        norm: ``"inf"`` (per real component) or ``"2"`` (per coil).
        mode: ``"relative"`` or ``"absolute"``.
        part: ``"real"`` (only real parts move, as the seed paper) or ``"complex"``.
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
        """What relative l-inf eps is a fraction of: ``||k sampled|| / sqrt(#movable)``,
        per sample, (B, 1, 1, 1, 1).

        Args:
            x: (B, coils, H, W, 2) masked k-space; sampled: its (B, 1, 1, W, 1) 0/1 columns.
        """
        parts = 1 if self.part == "real" else 2
        movable = sampled.flatten(1).sum(1) * x.shape[1] * x.shape[2] * parts
        norm = (x * sampled).flatten(1).norm(dim=1)
        return (norm / movable.clamp_min(1).sqrt()).view(-1, 1, 1, 1, 1)

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
