"""The k-space acquisition: which columns an accelerated scan samples.

An :class:`Acquisition` names a fastMRI mask function (``fastmri.data.subsample``) with one
centre fraction and one acceleration. Training draws a fresh random mask per sample; evaluation
uses one fixed mask per k-space width (:meth:`Acquisition.eval_mask`), so that every model, attack
and defence is compared on the same measurements. The parameters travel in checkpoints as a plain
dict (:meth:`Acquisition.to_dict` / :meth:`Acquisition.from_dict`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type

from defend.errors import DefendError

#: Mask names that ``fastmri.data.subsample.create_mask_for_mask_type`` accepts.
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")


@dataclass(frozen=True)
class Acquisition:
    """A Cartesian undersampling pattern along the phase-encoding (column) axis.

    Attributes:
        mask_type: fastMRI mask name, one of :data:`MASK_TYPES`.
        center_fraction: fraction of the columns at the centre of k-space that are always
            sampled (``0 < center_fraction < 1``; fastMRI uses 0.08 at 4x, 0.04 at 8x).
        acceleration: undersampling factor, roughly ``W / sampled columns`` (>= 1).
        seed: seed of the fixed evaluation mask (:meth:`eval_mask`).

    Raises:
        DefendError: on an unknown mask type or an out-of-range parameter.
    """

    mask_type: str = "equispaced_fraction"
    center_fraction: float = 0.08
    acceleration: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mask_type not in MASK_TYPES:
            raise DefendError(
                f"unknown mask type '{self.mask_type}' (expected one of {', '.join(MASK_TYPES)})"
            )
        acc = self.acceleration
        if isinstance(acc, bool) or not isinstance(acc, numbers.Integral) or acc < 1:
            raise DefendError(f"acceleration must be an integer >= 1, got {acc!r}")
        cf = self.center_fraction
        if isinstance(cf, bool) or not isinstance(cf, numbers.Real) or not 0 < cf < 1:
            raise DefendError(f"center_fraction must be in (0, 1), got {cf!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise DefendError(f"seed must be an integer, got {seed!r}")
        if not 0 <= seed < 2**32:
            raise DefendError(f"seed must be in [0, 2**32), got {seed}")
        # store plain Python numbers (numpy scalars would leak into checkpoints)
        object.__setattr__(self, "acceleration", int(acc))
        object.__setattr__(self, "center_fraction", float(cf))
        object.__setattr__(self, "seed", int(seed))
        if acc > 1 and cf * acc >= 1:
            raise DefendError(
                f"center_fraction {cf} must be below 1/acceleration = {1 / acc:.4g} "
                "(the centre alone would exceed the sampling budget)"
            )

    def mask_func(self) -> MaskFunc:
        """A fresh fastMRI ``MaskFunc`` for this acquisition.

        Call it as ``mask_func(shape, offset, seed)`` with ``shape`` the k-space shape
        ``(..., H, W, 2)``; it returns ``(mask, num_low_frequencies)`` with ``mask`` float32 of
        shape ``(1, ..., 1, W, 1)``.
        """
        return create_mask_for_mask_type(
            self.mask_type, [float(self.center_fraction)], [int(self.acceleration)]
        )

    def eval_mask(self, width: int) -> torch.Tensor:
        """The fixed evaluation mask for k-space with ``width`` columns.

        Deterministic: the same ``(mask_type, center_fraction, acceleration, seed, width)``
        always gives the same columns.

        Args:
            width: number of k-space columns ``W`` (phase-encoding lines).

        Returns:
            bool tensor of shape ``(1, 1, W, 1)``; True where a column is sampled.
        """
        if width < 1:
            raise DefendError(f"k-space width must be >= 1, got {width}")
        try:
            mask, _ = self.mask_func()((1, 1, int(width), 1), seed=self.seed)
        except (ValueError, ZeroDivisionError) as exc:
            raise DefendError(
                f"cannot build a '{self.mask_type}' mask for width {width}: {exc}"
            ) from None
        return mask.to(torch.bool)

    def sampled_fraction(self, width: int) -> float:
        """Fraction of the ``width`` columns that :meth:`eval_mask` samples."""
        return float(self.eval_mask(width).float().mean())

    def num_low_frequencies(self, width: int) -> int:
        """Number of fully sampled centre columns, as fastMRI computes it."""
        return int(round(width * self.center_fraction))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Acquisition:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`DefendError`."""
        if not isinstance(d, dict):
            raise DefendError(f"acquisition must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DefendError(f"unknown acquisition field(s): {', '.join(unknown)}")
        kwargs = dict(d)
        try:
            if "acceleration" in kwargs:
                acc = float(kwargs["acceleration"])
                if not math.isfinite(acc) or acc != int(acc):
                    raise ValueError
                kwargs["acceleration"] = int(acc)
            if "center_fraction" in kwargs:
                kwargs["center_fraction"] = float(kwargs["center_fraction"])
            if "seed" in kwargs:
                kwargs["seed"] = int(kwargs["seed"])
            if "mask_type" in kwargs:
                kwargs["mask_type"] = str(kwargs["mask_type"])
        except (TypeError, ValueError):
            raise DefendError(f"invalid acquisition values: {d}") from None
        return cls(**kwargs)

    def __str__(self) -> str:
        return (
            f"{self.mask_type} {self.acceleration}x, centre {self.center_fraction:g}, "
            f"seed {self.seed}"
        )
