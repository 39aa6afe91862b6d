"""Pure k-space functions shared by models, tasks, data and attacks (fastMRI conventions).

Masked multi-coil k-space is ``(B, coils, H, W, 2)`` (real and imaginary parts last); a column
mask is ``(B or 1, 1, 1, W, 1)``; images are ``(B, h, w)`` magnitudes, the root-sum-of-squares
of the coil images. Nothing here has weights or knows a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastmri
import torch
from fastmri.data.transforms import center_crop


def as_crop(crop: Sequence[int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    crop = tuple(int(c) for c in crop)
    if len(crop) != 2 or min(crop) <= 0:
        raise ValueError(f"crop must be two positive ints (h, w), got {crop}")
    return crop  # type: ignore[return-value]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 instead of ``inf``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def zero_filled(masked_kspace: torch.Tensor, crop: Sequence[int] | None = None) -> torch.Tensor:
    """Zero-filled reconstruction: centred inverse FFT, magnitude, root-sum-of-squares.

    The values are those of ``fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(k)), dim=1)``;
    the gradient is 0 (not NaN) at pixels whose magnitude is exactly zero.

    Args:
        masked_kspace: k-space with unsampled entries set to zero, shape
            ``(B, coils, H, W, 2)`` (real and imaginary parts in the last dimension), in raw
            k-space units.
        crop: optional ``(h, w)`` centre crop of the image (fastMRI's reconstruction size).

    Returns:
        The magnitude image, shape ``(B, h, w)`` (``(B, H, W)`` without ``crop``), in the
        units of fastMRI's ``reconstruction_rss`` targets.
    """
    if masked_kspace.ndim != 5 or masked_kspace.shape[-1] != 2:
        raise ValueError(
            f"expected k-space of shape (B, coils, H, W, 2), got {tuple(masked_kspace.shape)}"
        )
    # rss(complex_abs(.)) over coils in one square root, with a zero (not NaN) gradient where a
    # pixel is exactly zero (phantoms with symmetric structure have such pixels)
    image = safe_sqrt(fastmri.ifft2c(masked_kspace).square().sum(dim=(1, -1)))
    return crop_to(image, crop)


def fit_crop(image_hw: Sequence[int], crop: Sequence[int]) -> tuple[int, int]:
    """The crop that fits an image of size ``image_hw``, as fastMRI's transforms choose it.

    A volume narrower than the reconstruction size (fastMRI brain FLAIR with k-space width
    ~200 against a 320 x 320 target) is cropped to a ``(W, W)`` square, as fastMRI's
    ``UnetDataTransform`` and ``VarNetModule`` do ("check for FLAIR 203"); no side is ever
    larger than the image.

    Args:
        image_hw: ``(H, W)`` of the image to crop.
        crop: the wanted ``(h, w)``.

    Returns:
        ``(h, w)`` with ``h <= H`` and ``w <= W``.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    h, w = int(crop[0]), int(crop[1])
    if width < w:
        h, w = width, width
    return min(h, height), min(w, width)


def crop_to(image: torch.Tensor, crop: Sequence[int] | None) -> torch.Tensor:
    crop = as_crop(crop)
    if crop is None:
        return image
    crop = fit_crop(image.shape[-2:], crop)
    if tuple(image.shape[-2:]) == crop:
        return image
    return center_crop(image, crop)


def as_kspace_mask(mask: torch.Tensor, kspace: torch.Tensor) -> torch.Tensor:
    """A column mask in the ``(B or 1, 1, 1, W, 1)`` bool layout that broadcasts on k-space.

    Args:
        mask: sampling mask, shape ``(B or 1, 1, 1, W, 1)`` or a dataset sample's
            ``(1, 1, W, 1)`` (any dtype; non-zero means sampled).
        kspace: the k-space it applies to, shape ``(B, coils, H, W, 2)``.

    Returns:
        ``mask`` as a bool tensor of shape ``(B or 1, 1, 1, W, 1)`` on ``kspace``'s device.
    """
    width = kspace.shape[-2]
    if mask.ndim not in (4, 5) or mask.shape[-2] != width or mask.numel() != mask.shape[0] * width:
        raise ValueError(
            f"expected a mask of shape (B, 1, 1, {width}, 1) or (1, 1, {width}, 1), "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.reshape(mask.shape[0], 1, 1, width, 1)
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.to(kspace.device)


def acquired_columns(kspace: torch.Tensor) -> torch.Tensor:
    """Columns of masked k-space that hold data: not exactly zero over every coil and row.

    A data set's masked k-space is exactly zero in the columns its mask left out, including
    fastMRI's padding columns (outside ``[padding_left, padding_right)``), which were never
    acquired; a measured column is never exactly zero.

    Args:
        kspace: (B, coils, H, W, 2) masked k-space.

    Returns:
        bool (B, 1, 1, W, 1).
    """
    return (kspace != 0).any(dim=-1).any(dim=-2).any(dim=1).view(len(kspace), 1, 1, -1, 1)
