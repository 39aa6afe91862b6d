"""The smoothing noise, one distribution per input kind, fixed before any input is seen.

* :class:`ImageNoise`: std ``sigma`` on every pixel of images in [0, 1] (``unit = 1``).
* :class:`KspaceNoise`: std ``noise_std = sigma * unit`` on the real and imaginary parts of
  the k-space entries the acquisition samples, ``unit`` an absolute k-space amplitude.

Both give ``noise_std`` and ``scale(x)``, the noise std of each entry of a batch ``x``, which
:class:`defend.smooth.core.Smooth` multiplies with its seeded standard normal draws. The scale
depends on ``x``'s shape only (the certificates' shift argument needs one distribution for
every input), but for a :class:`KspaceNoise` without a mask, a denoiser's training noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from defend.errors import DefendError
from defend.kspace import acquired_columns


class ImageNoise:
    """Gaussian noise of std ``sigma`` on every pixel of images in [0, 1] (not clipped).

    The radii's unit is one pixel value (``unit = 1``), so ``noise_std = sigma``."""

    unit = 1.0

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    @property
    def noise_std(self) -> float:
        """The noise std of every pixel."""
        return self.sigma

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The noise std of each entry of images ``x`` (B, C, H, W)."""
        return torch.full_like(x, self.sigma)


class KspaceNoise:
    """Gaussian noise of one fixed std on the k-space entries the acquisition samples.

    Every real and every imaginary part of every sampled entry (all coils and rows of the
    columns in ``mask``) gets independent ``N(0, noise_std^2)`` noise, ``noise_std = sigma *
    unit``; the other entries get none. ``unit`` is an absolute k-space amplitude fixed before
    any input is seen: the k-space unit (:func:`defend.attacks.budget.kspace_unit`, the
    root-mean-square magnitude of the sampled complex entries, the unit of the attacks'
    relative l-inf budgets) of the training split (:func:`defend.smooth.training_unit`).
    ``mask`` is the acquisition's sampling mask (the estimator's), not the input's non-zero
    columns. The distribution is therefore the same for every input, and the certificates
    of :class:`CenterSmoothing` hold for perturbations ``delta`` of the real and imaginary
    parts of the sampled entries (zero elsewhere) with ``||delta||_2 <= eps_in * unit``, the
    l2 norm over all those components: radii ``eps_in`` are in multiples of ``unit``
    (``noise_std / sigma``).

    Args:
        sigma: the noise std in units of ``unit``.
        unit: the k-space unit, raw k-space units (> 0).
        mask: the sampled columns, bool (1, 1, 1, W, 1) or (1, 1, W, 1); None only for
            training a denoiser under random training masks (noise on each input's acquired
            columns, :func:`defend.kspace.acquired_columns`): no certificate rests on
            that mode.
    """

    def __init__(self, sigma: float, unit: float, mask: torch.Tensor | None) -> None:
        if not (0 < sigma < math.inf and 0 < unit < math.inf):
            raise DefendError(f"k-space noise needs sigma and unit > 0, got {sigma}, {unit}")
        self.sigma, self.unit = float(sigma), float(unit)
        self.mask = None if mask is None else torch.as_tensor(mask).reshape(1, 1, 1, -1, 1) != 0

    @property
    def noise_std(self) -> float:
        """The std of each noisy component (raw k-space units): ``sigma * unit``."""
        return self.sigma * self.unit

    def support(self, x: torch.Tensor) -> torch.Tensor:
        """The columns that get noise for k-space ``x`` (B, coils, H, W, 2), bool
        (1 or B, 1, 1, W, 1): the mask (the same for every ``x``)."""
        if self.mask is None:
            return acquired_columns(x)
        if self.mask.shape[-2] != x.shape[-2]:
            raise DefendError(
                f"the noise's mask has {self.mask.shape[-2]} columns, the k-space {x.shape[-2]}"
            )
        return self.mask.to(x.device)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The noise std of each entry of ``x`` (B, coils, H, W, 2): ``noise_std`` on the
        sampled columns, 0 elsewhere; it depends on ``x``'s shape only."""
        return (self.noise_std * self.support(x).to(x.dtype)).expand_as(x)


def kspace_noise(
    sigma: float, estimator: Any, unit: float | None = None, denoiser: Any = None
) -> KspaceNoise:
    """The smoothing noise of a reconstruction estimator: :class:`KspaceNoise` on its mask.

    Args:
        unit: the k-space unit (:func:`defend.smooth.training_unit`); None: the unit a
            denoiser was trained with (its ``kspace_unit``, :func:`defend.smooth.denoiser.
            load_denoiser`).

    Raises:
        DefendError: no unit at all, or a unit other than the denoiser's (other data).
    """
    stored = getattr(denoiser, "kspace_unit", None)
    if unit is None:
        unit = stored
    if unit is None:
        raise DefendError(
            "reconstruction smoothing needs its k-space unit, fixed before any input is seen: "
            "pass unit= (defend.smooth.training_unit(data, checkpoint)) or a denoiser trained "
            "with one"
        )
    if stored is not None and not math.isclose(stored, unit, rel_tol=1e-6):
        raise DefendError(
            f"the denoiser was trained for noise of k-space unit {stored:.6g}, this smoothing "
            f"uses {unit:.6g}: other training data"
        )
    return KspaceNoise(sigma, unit, estimator.mask)
