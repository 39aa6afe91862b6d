"""Target regions of hallucination attacks: a line, a square, or any mask image."""

from __future__ import annotations

import numpy as np
import torch

from defend.errors import DefendError

#: the seed paper's line at 320 px: 4 px thick, 60 px long; scaled to the image size
PAPER_LINE = (4 / 320, 60 / 320)
PAPER_SQUARE = 50 / 320


def region_mask(
    shape: tuple[int, int],
    kind: str = "line",
    size: tuple[int, int] | int | None = None,
    center: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A boolean target region in image coordinates.

    Args:
        shape: (h, w) of the reconstructed image.
        kind: ``"line"`` (horizontal bar) or ``"square"``.
        size: (height, width) in pixels, or one int for a square. Default: the seed paper's
            60 x 4 px line or 50 x 50 px square at 320 px, scaled to ``shape`` (at least 1 px).
        center: (row, col) of the region's centre; default the image centre.

    Returns:
        (h, w) bool tensor.

    Raises:
        DefendError: unknown kind, non-positive size, or a region reaching outside the image.
    """
    h, w = shape
    if kind not in ("line", "square"):
        raise DefendError(f"unknown region '{kind}': choose line, square, or pass a mask image")
    if size is None:
        if kind == "line":
            size = (max(1, round(PAPER_LINE[0] * h)), max(1, round(PAPER_LINE[1] * w)))
        else:
            size = max(1, round(PAPER_SQUARE * min(h, w)))
    if isinstance(size, int):
        size = (size, size)
    rh, rw = size
    if rh < 1 or rw < 1:
        raise DefendError(f"region size must be positive, got {rh} x {rw}")
    cy, cx = center if center is not None else (h // 2, w // 2)
    top, left = cy - rh // 2, cx - rw // 2
    if top < 0 or left < 0 or top + rh > h or left + rw > w:
        raise DefendError(
            f"region {rh} x {rw} at centre ({cy}, {cx}) reaches outside the {h} x {w} image"
        )
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + rh, left : left + rw] = True
    return mask


def as_region(region: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Validate a user-given region mask: (h, w) or (N, h, w), non-empty, the image's size."""
    region = torch.as_tensor(np.asarray(region) if not torch.is_tensor(region) else region)
    region = region > 0.5 if region.dtype.is_floating_point else region.bool()
    if tuple(region.shape[-2:]) != tuple(shape):
        raise DefendError(
            f"region mask is {tuple(region.shape[-2:])}, the reconstruction is {tuple(shape)}"
        )
    if region.ndim not in (2, 3):
        raise DefendError(f"region mask must be (h, w) or (N, h, w), got {tuple(region.shape)}")
    if not bool(region.flatten(-2).any(-1).all()):
        raise DefendError("region mask is empty")
    return region
