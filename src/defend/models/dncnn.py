"""Denoisers for denoised smoothing: a DnCNN, on images or on the image of measured k-space.

* :class:`DnCNN` (Zhang et al. 2017): ``depth`` 3x3 convolutions (batch norm and ReLU between
  them) predicting the noise, subtracted from the input: images (B, C, H, W) -> (B, C, H, W).
* :class:`KspaceDenoiser`: a DnCNN on each coil's zero-filled complex image (real and
  imaginary parts as two channels, scaled by the sample's rms), back to k-space through the
  centred FFT and the sample's own sampling mask: masked k-space (B, coils, H, W, 2) ->
  masked k-space of the same shape, so one denoiser serves every reconstruction model of that
  acquisition (U-Net and VarNet alike).
"""

from __future__ import annotations

from typing import Any

import fastmri
import torch
from torch import nn

from defend.errors import DefendError
from defend.kspace import acquired_columns


class DnCNN(nn.Module):
    """Residual denoiser: ``x - net(x)``.

    Args:
        channels: input (and output) channels.
        depth: convolution layers (>= 2). width: channels of the hidden layers.
    """

    def __init__(self, channels: int = 1, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        if depth < 2 or width < 1 or channels < 1:
            raise DefendError(f"denoiser depth must be >= 2 and width >= 1, got {depth}, {width}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised images (B, C, H, W) of noisy images ``x`` (B, C, H, W)."""
        return x - self.net(x)


class KspaceDenoiser(nn.Module):
    """A :class:`DnCNN` on the coil images of measured k-space, returning measured k-space.

    Each coil's complex image ``ifft2c(k)`` (B * coils, 2, H, W) is divided by the sample's
    root-mean-square over coils and pixels (so raw fastMRI units and unit-scale phantoms look
    alike), denoised, scaled back and returned to k-space by ``fft2c``, then masked by the
    columns the input holds (:func:`acquired_columns`): unmeasured k-space stays zero.

    Args:
        depth, width: of the :class:`DnCNN`.
    """

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        self.dncnn = DnCNN(2, depth, width)

    def forward(self, kspace: torch.Tensor) -> torch.Tensor:
        """Denoised masked k-space (B, coils, H, W, 2) of noisy masked k-space, same shape."""
        if kspace.ndim != 5 or kspace.shape[-1] != 2:
            raise DefendError(f"expected k-space (B, coils, H, W, 2), got {tuple(kspace.shape)}")
        b, coils, h, w, _ = kspace.shape
        columns = acquired_columns(kspace).to(kspace.dtype)
        image = fastmri.ifft2c(kspace)  # (B, coils, H, W, 2)
        scale = image.flatten(1).square().mean(1).sqrt().clamp_min(1e-30).view(b, 1, 1, 1, 1)
        planes = (image / scale).permute(0, 1, 4, 2, 3).reshape(b * coils, 2, h, w)
        denoised = self.dncnn(planes).reshape(b, coils, 2, h, w).permute(0, 1, 3, 4, 2)
        return fastmri.fft2c(denoised.contiguous() * scale) * columns


#: denoiser kinds by the input domain of the base model's task
DENOISERS = {"image": DnCNN, "kspace": KspaceDenoiser}


def build_denoiser(config: dict[str, Any]) -> nn.Module:
    """A denoiser from its checkpoint config: ``{"domain": "image" | "kspace", "depth",
    "width"}`` and, for images, ``"channels"``."""
    config = dict(config)
    domain = config.pop("domain", None)
    if domain not in DENOISERS:
        raise DefendError(f"denoiser domain must be one of {', '.join(DENOISERS)}, got {domain}")
    return DENOISERS[domain](**config)
