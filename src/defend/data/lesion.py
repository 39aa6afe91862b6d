"""A real finding, acquired: a small lesion-like feature put into the imaged object and
simulated into the measured k-space through the coils and the sampling mask.

A defence that makes reconstructions ignore what an attacker writes into k-space may also
ignore what a patient's anatomy writes there: hardened and smoothed models can erase small
real features, a false negative (Cheng et al. 2020; Calivá et al. 2021). :func:`add_lesion`
builds the probe: the feature ``f`` (N, h, w) (an image-domain bump of known contrast in the
reconstruction's centre crop) becomes ``f * S_c`` in each coil's image, with coil
sensitivities ``S_c`` estimated from the fully sampled centre of the k-space itself
(low-resolution coil images over their root-sum-of-squares, whose ``sum_c |S_c|^2 = 1``: the
root-sum-of-squares image gains about ``f``), and enters k-space as ``fft2c(f * S_c)`` on the
measured entries only, as the scanner would have measured it.
"""

from __future__ import annotations

import fastmri
import torch


def centre_columns(sampled: torch.Tensor) -> torch.Tensor:
    """The contiguous run of measured columns around the k-space centre (the ACS lines).

    Args:
        sampled: (B, 1, 1, W, 1) bool, the measured columns.

    Returns:
        (B, 1, 1, W, 1) bool; a sample whose centre column is not measured keeps all its
        measured columns.
    """
    flat = sampled.reshape(len(sampled), -1)
    width, centre = flat.shape[1], flat.shape[1] // 2
    out = torch.zeros_like(flat)
    for i, row in enumerate(flat):
        if not row[centre]:
            out[i] = row
            continue
        left, right = centre, centre
        while left > 0 and row[left - 1]:
            left -= 1
        while right < width - 1 and row[right + 1]:
            right += 1
        out[i, left : right + 1] = True
    return out.reshape(sampled.shape)


def coil_sensitivities(kspace: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """(B, coils, H, W, 2) sensitivity maps from the centre columns of masked ``kspace``
    (B, coils, H, W, 2): low-resolution coil images over their root-sum-of-squares."""
    low = fastmri.ifft2c(kspace * centre_columns(sampled).to(kspace.dtype))
    rss = fastmri.rss(fastmri.complex_abs(low), dim=1)
    return low / rss.clamp_min(rss.amax((1, 2), keepdim=True) * 1e-6)[:, None, ..., None]


def add_lesion(kspace: torch.Tensor, sampled: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Masked k-space of the same object with ``feature`` added (module doc).

    Args:
        kspace: (B, coils, H, W, 2) masked k-space, raw units.
        sampled: (B, 1, 1, W, 1) bool, the measured columns (only these change).
        feature: (B, h, w) the feature in the units of the reconstruction (fastMRI's
            root-sum-of-squares targets), on its centre crop (h <= H, w <= W).

    Returns:
        (B, coils, H, W, 2) k-space; the root-sum-of-squares of its fully sampled version
        would show about ``image + feature``.
    """
    height, width = kspace.shape[2:4]
    h, w = feature.shape[-2:]
    top, left = (height - h) // 2, (width - w) // 2
    full = torch.zeros(len(feature), height, width, dtype=kspace.dtype, device=kspace.device)
    full[:, top : top + h, left : left + w] = feature.to(kspace)
    coil_feature = coil_sensitivities(kspace, sampled) * full[:, None, :, :, None]
    return kspace + fastmri.fft2c(coil_feature) * sampled.to(kspace.dtype)
