"""MRI reconstruction models: fastMRI's U-Net and VarNet behind one interface.

Both models take the (masked) multi-coil k-space and the sampling mask and return a magnitude
image in the units of fastMRI's targets (root-sum-of-squares of the coil images):

    model(masked_kspace (B, coils, H, W, 2), mask (B or 1, 1, 1, W, 1) bool) -> (B, h, w)

They apply the mask themselves before anything else, so k-space that was not sampled never
reaches the network: the gradient of any loss with respect to it is exactly zero. ``h, w`` is
the ``crop`` size if one is given (fastMRI's reconstruction size; :func:`fit_crop` for images
narrower than it), else ``H, W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastmri
import torch
from fastmri.data.transforms import center_crop
from fastmri.models import Unet, VarNet
from torch import nn

__all__ = [
    "ReconUnet",
    "ReconVarNet",
    "acquired_columns",
    "as_kspace_mask",
    "fit_crop",
    "zero_filled",
]


def _as_crop(crop: Sequence[int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    crop = tuple(int(c) for c in crop)
    if len(crop) != 2 or min(crop) <= 0:
        raise ValueError(f"crop must be two positive ints (h, w), got {crop}")
    return crop  # type: ignore[return-value]


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
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
    image = _safe_sqrt(fastmri.ifft2c(masked_kspace).square().sum(dim=(1, -1)))
    return _crop(image, crop)


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


def _crop(image: torch.Tensor, crop: Sequence[int] | None) -> torch.Tensor:
    crop = _as_crop(crop)
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


class ReconUnet(nn.Module):
    """fastMRI's image-domain U-Net on the zero-filled reconstruction.

    As in fastMRI's leaderboard setup: the zero-filled magnitude image is normalised per sample
    (mean / standard deviation over its pixels, as ``normalize_instance`` with eps ``1e-11``),
    clamped to +-6, passed through the U-Net, and scaled back (``out * std + mean``), so the
    output is in the units of the target and scaling the k-space by ``c`` scales the output by
    ``c`` (up to the clamp).

    Args:
        chans: channels of the first U-Net convolution (fastMRI leaderboard: 256).
        num_pool_layers: U-Net down-/up-sampling layers (leaderboard: 4).
        drop_prob: dropout probability.
        crop: ``(h, w)`` centre crop of the image before the U-Net, or ``None``.
    """

    eps = 1e-11
    clamp = 6.0

    def __init__(
        self,
        chans: int = 16,
        num_pool_layers: int = 3,
        drop_prob: float = 0.0,
        crop: Sequence[int] | None = None,
    ):
        super().__init__()
        self.crop = _as_crop(crop)
        self.unet = Unet(1, 1, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob)

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            masked_kspace: k-space, shape ``(B, coils, H, W, 2)``, raw units (it is masked
                again here, so unmasked k-space gives the same result).
            mask: sampling mask, bool, shape ``(B or 1, 1, 1, W, 1)``.

        Returns:
            The reconstruction, shape ``(B, h, w)``, in the units of the target image.
        """
        kspace = masked_kspace * as_kspace_mask(mask, masked_kspace)
        return image_unet(self.unet, zero_filled(kspace, self.crop), self.eps, self.clamp)


def image_unet(unet: nn.Module, image: torch.Tensor, eps: float, clamp: float) -> torch.Tensor:
    """A 1-in, 1-out U-Net on a magnitude image in its own units, as fastMRI's leaderboard
    U-Net runs: normalised per sample (mean / standard deviation over the pixels, ``eps`` added
    to the deviation), clamped to ``+-clamp``, the U-Net, scaled back (``out * std + mean``).

    Args:
        unet: maps (B, 1, h, w) to (B, 1, h, w).
        image: (B, h, w) magnitude images.

    Returns:
        (B, h, w) in the units of ``image``.
    """
    mean = image.mean(dim=(-2, -1), keepdim=True)
    std = _safe_sqrt(image.var(dim=(-2, -1), keepdim=True))  # finite gradient at std 0
    x = ((image - mean) / (std + eps)).clamp(-clamp, clamp)
    return unet(x.unsqueeze(1)).squeeze(1) * std + mean


class ReconVarNet(nn.Module):
    """fastMRI's end-to-end variational network (learned sensitivities + unrolled cascades).

    Args:
        num_cascades: unrolled cascades (fastMRI leaderboard: 12).
        sens_chans: channels of the sensitivity-map U-Net (leaderboard: 8).
        sens_pools: pooling layers of the sensitivity-map U-Net (leaderboard: 4).
        chans: channels of each cascade's U-Net (leaderboard: 18).
        pools: pooling layers of each cascade's U-Net (leaderboard: 4).
        crop: ``(h, w)`` centre crop of the output, or ``None``.
        refine_chans: 0 (fastMRI's VarNet, which ends on a data-consistency step), or the
            channels of an image-domain U-Net run on the cropped output as
            :class:`ReconUnet` runs its own (:func:`image_unet`). That U-Net may depart from
            the measured k-space, which the last data-consistency step otherwise keeps.
        refine_pools: pooling layers of that U-Net.
    """

    eps = ReconUnet.eps
    clamp = ReconUnet.clamp

    def __init__(
        self,
        num_cascades: int = 4,
        sens_chans: int = 4,
        sens_pools: int = 2,
        chans: int = 8,
        pools: int = 2,
        crop: Sequence[int] | None = None,
        refine_chans: int = 0,
        refine_pools: int = 3,
    ):
        super().__init__()
        self.crop = _as_crop(crop)
        if refine_chans < 0 or refine_pools < 0:
            raise ValueError(f"refine_chans and refine_pools must be >= 0, got "
                             f"{refine_chans} and {refine_pools}")  # fmt: skip
        self.refine = (
            Unet(1, 1, chans=refine_chans, num_pool_layers=refine_pools) if refine_chans else None
        )
        self.varnet = VarNet(
            num_cascades=num_cascades,
            sens_chans=sens_chans,
            sens_pools=sens_pools,
            chans=chans,
            pools=pools,
        )

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            masked_kspace: k-space, shape ``(B, coils, H, W, 2)``, raw units (masked again here).
            mask: sampling mask, bool, shape ``(B or 1, 1, 1, W, 1)``; a single mask is
                expanded to the batch (VarNet finds each sample's low frequencies from it).

        Returns:
            The root-sum-of-squares reconstruction, shape ``(B, h, w)``, in the units of the
            target image.
        """
        mask = as_kspace_mask(mask, masked_kspace)
        if mask.shape[0] != masked_kspace.shape[0]:
            mask = mask.expand(masked_kspace.shape[0], -1, -1, -1, -1)
        out = _crop(self.varnet(masked_kspace * mask, mask, num_low_frequencies=None), self.crop)
        return out if self.refine is None else image_unet(self.refine, out, self.eps, self.clamp)
