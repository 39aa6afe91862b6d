"""What a hallucination detector sees at deployment: no clean reference, no ground truth.

From the measured k-space ``y`` (the estimator's input) and the guarded model's output ``f``
alone, :func:`detector_inputs` stacks six images (B, 6, h, w):

* the reconstruction ``f``;
* the zero-filled reconstruction ``|H+ y|`` (root-sum-of-squares of the coil images);
* the measurement-space map of Bhadra et al. (2021), the reconstruction's own
  data-consistency error seen in image space: with ``H_c = M F S_c`` (mask, centred FFT,
  coil sensitivity), ``rss_c |H_c+ (H_c f - y_c)|``. A feature that the measurement does not
  support leaves an error here; one written into the measurement (a strong attack) does not;
* the measurement split by its conjugate symmetry (:func:`conjugate_parts`): the images of
  the real and of the imaginary parts of k-space, ``rss_c |F^-1 Re y_c|`` and
  ``rss_c |F^-1 i Im y_c|``, and the log-ratio of their local energies (3 x 3 means). In a
  natural measurement the two carry comparable energy everywhere; a perturbation of the real
  parts only (Buğday et al.'s attack) adds a localised, point-symmetric excess to the first
  where it writes its feature. An attacker who moves both parts removes this cue (reported
  in docs/detection.md), so it is one input among six, not the detector.

The model returns a magnitude image, so the coils' sensitivities (with their phase) are
estimated from the fully sampled centre of k-space (:func:`sensitivities`, the low-resolution
coil images over their root-sum-of-squares, as ESPIRiT's first step). All three images are
divided by one per-sample scale, the zero-filled image's 99th percentile, so the detector
sees the same range at any k-space scaling. Everything is torch on the input's device and
differentiable in ``y`` and ``f``, so a detector-aware attack can follow its gradient.
"""

from __future__ import annotations

from typing import Any

import fastmri
import torch
from fastmri.data.transforms import center_crop

from defend.kspace import as_kspace_mask, safe_sqrt, zero_filled
from defend.memory import samples_per_pass

#: the channels of :func:`detector_inputs`, in order
CHANNELS = ("reconstruction", "zero_filled", "measurement_map", "real_part", "imaginary_part",
            "part_log_ratio")  # fmt: skip


def centre_columns(mask: torch.Tensor) -> torch.Tensor:
    """The fully sampled block at the centre of a column mask (the ACS lines).

    Args:
        mask: (B or 1, 1, 1, W, 1) bool sampling mask.

    Returns:
        (B or 1, 1, 1, W, 1) bool: the contiguous run of sampled columns through ``W // 2``.
    """
    sampled = mask.reshape(len(mask), -1)
    width = sampled.shape[1]
    centre = width // 2
    # a column is in the block if every column between it and the centre is sampled
    left = torch.flip(torch.cumprod(torch.flip(sampled[:, : centre + 1].long(), [1]), 1), [1])
    right = torch.cumprod(sampled[:, centre:].long(), 1)
    block = torch.cat([left, right[:, 1:]], 1).bool()
    return block.view_as(mask)


def sensitivities(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Coil sensitivities from the centre of k-space: the low-resolution coil images over
    their root-sum-of-squares.

    Args:
        kspace: (B, coils, H, W, 2) masked k-space.
        mask: (B or 1, 1, 1, W, 1) its sampling mask.

    Returns:
        (B, coils, H, W, 2) complex maps with ``rss_c |S_c| = 1`` wherever the image has
        signal (0 where the low-resolution image is exactly zero).
    """
    low = fastmri.ifft2c(kspace * centre_columns(as_kspace_mask(mask, kspace)))
    norm = safe_sqrt(low.square().sum(dim=(1, -1), keepdim=True))
    return low / norm.clamp_min(torch.finfo(low.dtype).tiny) * (norm > 0)


def _residual(kspace: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """``M F S_c f - y_c``, (B, coils, H, W, 2), with ``f`` (B, h, w) placed in the middle of
    an H x W image of zeros."""
    height, width = kspace.shape[-3:-1]
    h, w = recon.shape[-2:]
    top, left = (height - h) // 2, (width - w) // 2
    image = torch.nn.functional.pad(recon, (left, width - w - left, top, height - h - top))
    coils = sensitivities(kspace, mask) * image[:, None, :, :, None]
    return fastmri.fft2c(coils) * as_kspace_mask(mask, kspace) - kspace


def kspace_residual(kspace: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The measurement's energy the reconstruction does not explain, (B,):
    ``||M F S f - y||^2 / ||y||^2`` (a reference-free baseline score)."""
    energy = kspace.square().flatten(1).sum(1).clamp_min(1e-30)
    return _residual(kspace, mask, recon).square().flatten(1).sum(1) / energy


def measurement_map(kspace: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Bhadra et al.'s measurement-space map of a reconstruction: ``rss_c |H_c+ (H_c f - y_c)|``.

    Args:
        kspace: (B, coils, H, W, 2) the measured (masked) k-space ``y``.
        mask: (B or 1, 1, 1, W, 1) the sampling mask ``M``.
        recon: (B, h, w) the model's magnitude output ``f`` (h <= H, w <= W: a centre crop,
            placed back in the middle of an H x W image of zeros).

    Returns:
        (B, h, w) the data-consistency error in image space, in the units of ``recon``.
    """
    error = fastmri.ifft2c(_residual(kspace, mask, recon))
    return center_crop(safe_sqrt(error.square().sum(dim=(1, -1))), tuple(recon.shape[-2:]))


def conjugate_parts(kspace: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The root-sum-of-squares images of the real and of the imaginary parts of k-space.

    A real k-space perturbation is, in image space, a conjugate-symmetric one
    (``d(-r) = conj d(r)``): it shows in the first image only.

    Args:
        kspace: (B, coils, H, W, 2) masked k-space. shape: the (h, w) centre crop returned.

    Returns:
        (B, 2, h, w): ``rss_c |F^-1 Re y_c|`` and ``rss_c |F^-1 i Im y_c|``.
    """
    keep = torch.eye(2, device=kspace.device, dtype=kspace.dtype)  # rows: real, imaginary
    images = [fastmri.ifft2c(kspace * keep[i]) for i in range(2)]
    rss = [safe_sqrt(image.square().sum(dim=(1, -1))) for image in images]
    return center_crop(torch.stack(rss, dim=1), shape)


def _log_ratio(parts: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """log of the 3 x 3 mean energy of ``parts[:, 0]`` over that of ``parts[:, 1]``, (B, h, w);
    ``floor`` (B, 1, 1, 1) keeps empty background from dividing by zero."""
    energy = torch.nn.functional.avg_pool2d(parts.square(), 3, 1, padding=1) + floor
    return torch.log(energy[:, 0] / energy[:, 1])


def detector_inputs(kspace: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The detector's input images (module doc): the five images divided by the zero-filled
    image's 99th percentile, and the (scale-free) log-ratio of the two k-space parts.

    Args:
        kspace: (B, coils, H, W, 2) masked k-space. mask: (B or 1, 1, 1, W, 1).
        recon: (B, h, w) the guarded model's output for ``kspace``.

    Returns:
        (B, 6, h, w): :data:`CHANNELS`.
    """
    kspace = kspace * as_kspace_mask(mask, kspace)
    zf = zero_filled(kspace, recon.shape[-2:])
    scale = torch.quantile(zf.detach().flatten(1), 0.99, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    parts = conjugate_parts(kspace, tuple(recon.shape[-2:])) / scale
    images = torch.stack([recon, zf, measurement_map(kspace, mask, recon)], dim=1) / scale
    ratio = _log_ratio(parts, 1e-4 * torch.ones_like(scale))
    return torch.cat([images, parts, ratio[:, None]], dim=1)


def forward_in_passes(
    estimator: Any, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon (N, h, w), detector inputs (N, 3, h, w), k-space residual (N,))`` of k-space
    ``x`` (N, coils, H, W, 2) on the CPU, in passes the memory budget holds
    (:func:`defend.memory.samples_per_pass`)."""
    device, mask = estimator.device, estimator.mask
    size = samples_per_pass(estimator.forward, x[0].to(device), device, estimator.model)
    parts = []
    with torch.no_grad():
        for first in range(0, len(x), size):
            xt = x[first : first + size].to(device)
            recon = estimator.forward(xt)
            inputs = detector_inputs(xt, mask.to(device), recon)
            residual = kspace_residual(xt, mask.to(device), recon)
            parts.append((recon.cpu(), inputs.cpu(), residual.cpu()))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]
