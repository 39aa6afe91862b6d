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

import torch
from fastmri.models import Unet, VarNet
from torch import nn

from defend.kspace import (
    acquired_columns,
    as_crop,
    as_kspace_mask,
    crop_to,
    fit_crop,
    safe_sqrt,
    zero_filled,
)

__all__ = [
    "ReconUnet",
    "ReconVarNet",
    "acquired_columns",
    "as_kspace_mask",
    "fit_crop",
    "zero_filled",
]


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
        self.crop = as_crop(crop)
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
    std = safe_sqrt(image.var(dim=(-2, -1), keepdim=True))  # finite gradient at std 0
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
        self.crop = as_crop(crop)
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
        out = crop_to(self.varnet(masked_kspace * mask, mask, num_low_frequencies=None), self.crop)
        return out if self.refine is None else image_unet(self.refine, out, self.eps, self.clamp)
