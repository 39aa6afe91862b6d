"""Brain-like MRI phantom volumes, coil sensitivities and multi-coil k-space (numpy only).

A phantom volume is a stack of adjacent axial slices through one random FLAIR-like head, drawn
by :mod:`defend.data.anatomy`, with 0 to 3 bright lesions per slice and a smooth random tissue
texture. Image magnitudes are at unit scale (max about 1).

Coordinates: images are ``(H, W)`` arrays, rows ``y`` (anterior at the top), columns ``x``;
the normalised grid runs over ``[-1, 1)`` on both axes. k-space follows fastMRI: a centred,
orthonormal 2-D FFT over the last two axes (:func:`fft2c`), columns are phase-encoding lines.

Every function draws its randomness from the ``numpy.random.Generator`` it is given, so a
seeded generator gives a reproducible phantom.
"""

from __future__ import annotations

import numpy as np

from defend.data.anatomy import add_lesions, grid, random_anatomy, render_slice

# --------------------------------------------------------------------------- FFT helpers


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes (same convention as ``fastmri.fft2c``).

    Args:
        x: complex image(s) of shape ``(..., H, W)``.

    Returns:
        complex k-space of shape ``(..., H, W)``, DC at ``(H // 2, W // 2)``.
    """
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c`: ``(..., H, W)`` centred k-space -> complex image(s)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def rss(coil_images: np.ndarray, axis: int = -3) -> np.ndarray:
    """Root sum of squares of complex coil images along ``axis`` (the coil axis).

    Args:
        coil_images: complex array ``(..., coils, H, W)``.

    Returns:
        real magnitude image ``(..., H, W)``.
    """
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=axis))


# --------------------------------------------------------------------------- random fields


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float | tuple[float, ...]
) -> np.ndarray:
    """Low-pass filtered Gaussian noise with zero mean and unit standard deviation.

    Args:
        rng: random generator.
        shape: output shape, e.g. ``(slices, H, W)``.
        scale: correlation length in pixels (per axis, or one for all axes); the noise is
            filtered with a Gaussian of this standard deviation.

    Returns:
        float64 array of ``shape``.
    """
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (len(shape),))
    noise = rng.standard_normal(shape)
    spectrum = np.fft.fftn(noise)
    for axis, (n, s) in enumerate(zip(shape, scales, strict=True)):
        f = np.fft.fftfreq(n)
        g = np.exp(-2.0 * (np.pi * f * s) ** 2)  # Fourier transform of a Gaussian, std s
        spectrum *= g.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    out = np.fft.ifftn(spectrum).real
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


# --------------------------------------------------------------------------- volumes


def _slice_positions(slices: int, z_offset: float) -> np.ndarray:
    """Axial positions in ``[-1, 1]`` of ``slices`` adjacent slices (0 = the ventricle level)."""
    if slices == 1:
        return np.array([z_offset])
    return np.linspace(-0.6, 0.6, slices) + z_offset


def brain_volume(
    rng: np.random.Generator,
    size: int = 64,
    slices: int = 8,
    lesion_prob: float = 0.5,
    max_lesions: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """A phantom head volume of adjacent axial slices.

    Each slice independently holds lesions with probability ``lesion_prob`` (then 1 to
    ``max_lesions`` of them, uniformly), so about that fraction of slices is "lesion".

    Args:
        rng: random generator.
        size: image size ``N``.
        slices: number of slices ``S``.
        lesion_prob: probability that a slice holds lesions.
        max_lesions: maximum lesions per slice.

    Returns:
        ``(image, lesion_mask)``: float32 ``(S, N, N)`` magnitude with max about 1, and bool
        ``(S, N, N)``.
    """
    anatomy = random_anatomy(rng)
    texture = smooth_noise(rng, (slices, size, size), (1.5, 1.8 * size / 64, 1.8 * size / 64))
    images = np.empty((slices, size, size), dtype=np.float32)
    masks = np.zeros((slices, size, size), dtype=bool)
    for s, z in enumerate(_slice_positions(slices, anatomy.z_offset)):
        img, white = render_slice(anatomy, float(z), size, texture[s])
        count = int(rng.integers(1, max_lesions + 1)) if rng.random() < lesion_prob else 0
        img, mask = add_lesions(rng, img, white, count)
        images[s] = img
        masks[s] = mask
    return images, masks


# --------------------------------------------------------------------------- coils, k-space


def smooth_phase(
    rng: np.random.Generator, shape: tuple[int, ...], amplitude: float = 1.0
) -> np.ndarray:
    """A smooth random phase map (radians) for images of ``shape`` ``(..., N, N)``.

    A random plane (linear in x and y) plus low-pass noise, slowly varying across the leading
    (slice) axis; values are within about ``+-amplitude * pi``.
    """
    size = shape[-1]
    y, x = grid(size)
    ay, ax = rng.uniform(-0.5, 0.5, size=2)
    noise = smooth_noise(rng, tuple(shape), (2.0,) * (len(shape) - 2) + (size / 5, size / 5))
    return amplitude * np.pi * (0.5 * (ay * y + ax * x) + 0.25 * noise)


def coil_maps(rng: np.random.Generator, size: int, coils: int) -> np.ndarray:
    """Simulated receive-coil sensitivities of a head array.

    Coils sit on a ring around the field of view; each map decays smoothly with the distance
    to its coil (Biot-Savart-like ``1 / (1 + (d / d0)^2)^{3/2}``) and carries a smooth phase
    that rotates around the coil. Maps are normalised so that ``sum_c |S_c|^2 = 1`` at every
    pixel, so the root-sum-of-squares of the coil images equals the object magnitude.

    Args:
        rng: random generator.
        size: image size ``N``.
        coils: number of coils ``C`` (1 gives a uniform-magnitude map with a smooth phase).

    Returns:
        complex64 ``(C, N, N)``.
    """
    y, x = grid(size)
    start = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(1.15, 1.35)
    maps = np.empty((coils, size, size), dtype=np.complex128)
    for c in range(coils):
        ang = start + 2 * np.pi * c / coils + rng.uniform(-0.1, 0.1)
        cy, cx = radius * np.sin(ang), radius * np.cos(ang)
        d2 = (y - cy) ** 2 + (x - cx) ** 2
        d0 = rng.uniform(0.7, 0.9)
        mag = (1.0 + d2 / d0**2) ** -1.5
        phase = rng.uniform(0, 2 * np.pi) + 0.8 * np.arctan2(y - cy, x - cx) - 0.8 * ang
        maps[c] = mag * np.exp(1j * phase)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)


def multicoil_kspace(
    rng: np.random.Generator,
    image: np.ndarray,
    maps: np.ndarray,
    noise: float = 0.004,
    phase_amplitude: float = 1.0,
) -> np.ndarray:
    """Fully sampled multi-coil k-space of a magnitude volume.

    The image gets a smooth random phase, is weighted by each coil map and transformed with
    :func:`fft2c`; complex white Gaussian noise of standard deviation ``noise`` per real and
    imaginary part is added in k-space (orthonormal FFT: the same level in image space).

    Args:
        rng: random generator.
        image: magnitude ``(S, N, N)`` (or ``(N, N)``).
        maps: coil sensitivities ``(C, N, N)``.
        noise: k-space noise standard deviation (image intensity units).
        phase_amplitude: scale of the smooth image phase (0: real, non-negative image).

    Returns:
        complex64 ``(S, C, N, N)`` (``(C, N, N)`` for a 2-D image).
    """
    phase = smooth_phase(rng, image.shape, phase_amplitude) if phase_amplitude else 0.0
    obj = image * np.exp(1j * phase)
    coil_images = obj[..., None, :, :] * maps
    kspace = fft2c(coil_images)
    if noise > 0:
        kspace = kspace + noise * (
            rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
        )
    return kspace.astype(np.complex64)
