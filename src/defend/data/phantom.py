"""Brain-like MRI phantoms, lesions, coil sensitivities and multi-coil k-space (numpy only).

A phantom volume is a stack of axial slices through a FLAIR-like head: a bright scalp ring, a
dark skull, dark cerebrospinal fluid (CSF) around a folded cortex, grey matter brighter than
white matter, dark butterfly-shaped lateral ventricles, deep grey nuclei, a dark midline, and
0 to 3 bright lesions per slice. The anatomy (ellipse axes, rotation, shift, folding, ventricle
size, tissue texture) is random per volume and varies smoothly from slice to slice. Image
magnitudes are at unit scale (max about 1).

Coordinates: images are ``(H, W)`` arrays, rows ``y`` (anterior at the top), columns ``x``;
the normalised grid runs over ``[-1, 1)`` on both axes. k-space follows fastMRI: a centred,
orthonormal 2-D FFT over the last two axes (:func:`fft2c`), columns are phase-encoding lines.

Every function draws its randomness from the ``numpy.random.Generator`` it is given, so a
seeded generator gives a reproducible phantom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FLAIR-like tissue intensities (unit scale)
SCALP = 0.9
BONE = 0.05
CSF = 0.07
GREY = 0.64
WHITE = 0.43
DEEP_GREY = 0.56
LESION = 1.0


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


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(y, x)``, each ``(size, size)`` in ``[-1, 1)``."""
    c = (np.arange(size, dtype=np.float64) - size / 2 + 0.5) / (size / 2)
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


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


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth indicator of ``d < 0`` with an edge ``width`` wide (same units as ``d``)."""
    return 0.5 * (1.0 - np.tanh(d / width))


def _rotate(y: np.ndarray, x: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return -s * x + c * y, c * x + s * y


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """Random per-volume anatomy parameters (normalised units; see :func:`random_anatomy`)."""

    head_a: float  # head semi-axis along x (left-right)
    head_b: float  # head semi-axis along y (anterior-posterior)
    angle: float  # in-plane rotation (radians)
    shift_x: float
    shift_y: float
    scalp: float  # scalp thickness, fraction of the head radius
    bone: float  # skull thickness, fraction of the head radius
    sulcal_csf: float  # CSF gap between skull and brain
    egg: float  # head wider posteriorly than anteriorly
    cortex: float  # cortical thickness
    fold_amp: np.ndarray  # (2, K) harmonic amplitudes of the grey (0) and white (1) outlines
    fold_phase: np.ndarray  # (2, K) phases
    fold_drift: np.ndarray  # (2, K) phase change per unit of slice position
    sulcus_angle: np.ndarray  # (M,) angles of the sulci
    sulcus_depth: np.ndarray  # (M,) depths
    sulcus_drift: np.ndarray  # (M,) angle change per unit of slice position
    vent_size: float  # ventricle scale
    vent_spread: float  # angle of the frontal horns away from the midline (radians)
    vent_offset: float  # anterior-posterior position of the ventricles
    z_offset: float  # where the slab sits in the head


_FOLD_HARMONICS = (3, 30)
_TABLE_SIZE = 1024


def _fold(theta: np.ndarray, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """A smooth random periodic function of 1-D ``theta`` (sum of harmonics), about unit scale."""
    k = np.arange(_FOLD_HARMONICS[0], _FOLD_HARMONICS[1] + 1, dtype=np.float64)
    waves = np.sin(k[:, None] * theta[None, :] + phase[:, None])
    return (amp @ waves) / np.sqrt(np.sum(amp**2))


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw the anatomy of one head."""
    k = np.arange(_FOLD_HARMONICS[0], _FOLD_HARMONICS[1] + 1, dtype=np.float64)
    n_sulci = int(rng.integers(18, 28))
    return Anatomy(
        head_a=rng.uniform(0.66, 0.76),
        head_b=rng.uniform(0.80, 0.90),
        angle=rng.uniform(-0.18, 0.18),
        shift_x=rng.uniform(-0.05, 0.05),
        shift_y=rng.uniform(-0.05, 0.05),
        scalp=rng.uniform(0.05, 0.08),
        bone=rng.uniform(0.04, 0.06),
        sulcal_csf=rng.uniform(0.015, 0.03),
        egg=rng.uniform(0.02, 0.09),
        cortex=rng.uniform(0.08, 0.11),
        fold_amp=rng.standard_normal((2, k.size)) * k**-0.8,
        fold_phase=rng.uniform(0, 2 * np.pi, size=(2, k.size)),
        fold_drift=rng.uniform(-3, 3, size=(2, k.size)),
        sulcus_angle=np.sort(rng.uniform(0, 2 * np.pi, size=n_sulci)),
        sulcus_depth=rng.uniform(0.03, 0.09, size=n_sulci),
        sulcus_drift=rng.uniform(-0.3, 0.3, size=n_sulci),
        vent_size=rng.uniform(0.8, 1.25),
        vent_spread=rng.uniform(0.25, 0.5),
        vent_offset=rng.uniform(-0.06, 0.04),
        z_offset=rng.uniform(-0.1, 0.1),
    )


def _slice_positions(slices: int, z_offset: float) -> np.ndarray:
    """Axial positions in ``[-1, 1]`` of ``slices`` adjacent slices (0 = the ventricle level)."""
    if slices == 1:
        return np.array([z_offset])
    return np.linspace(-0.6, 0.6, slices) + z_offset


def render_slice(
    anatomy: Anatomy,
    z: float,
    size: int,
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The magnitude image of one healthy slice.

    Args:
        anatomy: the head, from :func:`random_anatomy`.
        z: axial position in ``[-1, 1]``; the head shrinks and the ventricles vanish towards
            the ends.
        size: image size ``N`` (the image is ``N x N``).
        texture: unit-variance smooth noise ``(N, N)`` modulating tissue intensity.

    Returns:
        ``(image, white)``: float64 ``(N, N)`` magnitude in about ``[0, 1]`` and the soft
        white-matter indicator ``(N, N)`` in ``[0, 1]`` (where lesions may be placed).
    """
    a = anatomy
    y, x = grid(size)
    px = 2.0 / size  # one pixel in normalised units
    edge = 0.6 * px

    # head coordinates: shift, rotate, scale with the slice position
    zs = np.sqrt(max(1.0 - 0.45 * z * z, 0.2))
    yr, xr = _rotate(y - a.shift_y, x - a.shift_x, a.angle)
    ha, hb = a.head_a * zs, a.head_b * zs
    v = yr / hb
    u = xr / (ha * (1.0 + a.egg * np.clip(v, -1.0, 1.0)))  # unit circle = head outline
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    mean_axis = 0.5 * (ha + hb)
    e = edge / mean_axis  # edge width in rho units

    inner_skull = 1.0 - a.scalp - a.bone
    # outlines as functions of the angle, tabulated once and interpolated
    table = np.linspace(-np.pi, np.pi, _TABLE_SIZE, endpoint=False)
    grey_fold = _fold(table, a.fold_amp[0], a.fold_phase[0] + a.fold_drift[0] * z)
    white_fold = _fold(table, a.fold_amp[1], a.fold_phase[1] + a.fold_drift[1] * z)
    brain_table = inner_skull - a.sulcal_csf - 0.012 * (1.0 + grey_fold)
    # sulci: narrow CSF clefts reaching in from the surface, about a pixel wide (or more)
    half_width = max(0.012, 0.6 * px) / (brain_table.mean() * mean_axis)  # in radians
    sulci_table = np.zeros_like(table)
    for ang, depth in zip(a.sulcus_angle + a.sulcus_drift * z, a.sulcus_depth, strict=True):
        dtheta = np.angle(np.exp(1j * (table - ang)))
        sulci_table = np.maximum(sulci_table, depth * np.exp(-0.5 * (dtheta / half_width) ** 2))
    white_table = np.minimum(
        brain_table - a.cortex + 0.03 * white_fold, brain_table - sulci_table - 0.5 * a.cortex
    )
    brain_edge = np.interp(theta, table, brain_table, period=2 * np.pi)
    sulci = np.interp(theta, table, sulci_table, period=2 * np.pi)
    white_edge = np.interp(theta, table, white_table, period=2 * np.pi)

    t = 1.0 + 0.05 * texture
    img = SCALP * (1.0 + 0.06 * texture) * _soft(rho - 1.0, e)
    img = img + (BONE - img) * _soft(rho - (1.0 - a.scalp), e)
    img = img + (CSF - img) * _soft(rho - inner_skull, e)
    grey = _soft(rho - brain_edge, e) * (1.0 - _soft(brain_edge - sulci - rho, e))
    img = img + (GREY * t - img) * grey
    white = _soft(rho - white_edge, e)
    img = img + (WHITE * t - img) * white

    # deep grey nuclei (basal ganglia / thalami), only near the ventricle level
    deep = max(0.0, 1.0 - (z / 0.55) ** 2)
    if deep > 0:
        for side in (-1.0, 1.0):
            dx = (xr - side * 0.26 * ha) / (0.10 * ha * (0.5 + 0.5 * deep))
            dy = (yr - 0.02 * hb) / (0.20 * hb * (0.5 + 0.5 * deep))
            nucleus = _soft(np.sqrt(dx * dx + dy * dy) - 1.0, 0.15) * deep
            img = img + (DEEP_GREY * t - img) * nucleus

    # lateral ventricles: two elongated lobes diverging anteriorly (a butterfly)
    vs = a.vent_size * max(0.0, 1.0 - (z / 0.75) ** 2)
    if vs > 0.05:
        vent = np.zeros_like(img)
        for side in (-1.0, 1.0):
            cy, cx = (a.vent_offset - 0.05) * hb, side * 0.10 * ha * vs
            ry, rx = _rotate(yr - cy, xr - cx, -side * a.vent_spread)
            # frontal horn: a tear drop, wide anteriorly (negative y), narrow posteriorly
            width = 0.075 * ha * vs * (1.0 - 0.45 * np.clip(ry / (0.3 * hb * vs), -1, 1))
            d = np.sqrt((rx / width) ** 2 + (ry / (0.30 * hb * vs)) ** 2)
            vent = np.maximum(vent, _soft(d - 1.0, 0.08))
            # occipital horn: a smaller lobe behind, bending outwards
            cy2, cx2 = cy + 0.34 * hb * vs, side * 0.2 * ha * vs
            ry2, rx2 = _rotate(yr - cy2, xr - cx2, side * 0.5)
            d2 = np.sqrt((rx2 / (0.05 * ha * vs)) ** 2 + (ry2 / (0.13 * hb * vs)) ** 2)
            vent = np.maximum(vent, _soft(d2 - 1.0, 0.1))
        img = img + (CSF - img) * vent
        white = white * (1.0 - vent)

    # dark interhemispheric fissure (falx), anterior and posterior of the ventricles
    falx = np.exp(-0.5 * (xr / (0.7 * px)) ** 2) * _soft(rho - brain_edge, e)
    falx *= np.clip(np.abs(yr / hb - a.vent_offset) / 0.35 - 0.4, 0.0, 1.0)
    img = img + (CSF - img) * 0.8 * falx
    white = white * (1.0 - falx)
    return np.clip(img, 0.0, None), white


def add_lesions(
    rng: np.random.Generator,
    image: np.ndarray,
    white: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``count`` bright elliptical lesions into white matter.

    Radii are 2 to 5 pixels at 64 px, scaled with the image size. The lesion mask is the set of
    pixels inside each lesion's ellipse; the painted intensity follows it with a soft edge of
    about half a pixel, so the mask matches what is visible.

    Args:
        rng: random generator.
        image: magnitude image ``(N, N)``.
        white: white-matter indicator ``(N, N)`` in ``[0, 1]`` (lesion centres are drawn where it
            is above 0.95, away from the ventricles).
        count: number of lesions (0 returns the image unchanged and an empty mask).

    Returns:
        ``(image, mask)``: float64 ``(N, N)`` image and bool ``(N, N)`` lesion mask.
    """
    size = image.shape[-1]
    mask = np.zeros(image.shape, dtype=bool)
    if count <= 0:
        return image, mask
    scale = size / 64.0
    max_radius = 5.0 * scale
    # depth[i, j]: how many pixels (city-block) (i, j) lies inside the white matter
    inside = white > 0.95
    depth = np.zeros(image.shape, dtype=np.int32)
    for _ in range(int(np.ceil(max_radius)) + 1):
        if not inside.any():
            break
        depth += inside
        inside = (
            inside
            & np.roll(inside, 1, 0)
            & np.roll(inside, -1, 0)
            & np.roll(inside, 1, 1)
            & np.roll(inside, -1, 1)
        )
    if depth.max() == 0:
        return image, mask
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = image.copy()
    for _ in range(count):
        radius = rng.uniform(2.0, 5.0) * scale
        # centres deep enough that most of the lesion lies in white matter
        need = min(int(np.ceil(0.6 * radius)), int(depth.max()))
        candidates = np.flatnonzero(depth >= need)
        r, c = np.unravel_index(rng.choice(candidates), image.shape)
        r = r + rng.uniform(-0.5, 0.5)
        c = c + rng.uniform(-0.5, 0.5)
        aspect = rng.uniform(0.65, 1.0)
        ang = rng.uniform(0, np.pi)
        dr, dc = _rotate(rows - r, cols - c, ang)
        d = np.sqrt((dr / (radius * aspect)) ** 2 + (dc / radius) ** 2)
        # signed distance to the outline in pixels (approximately), soft edge of ~0.5 px
        dist = (d - 1.0) * radius * aspect
        inside = d <= 1.0
        if not inside.any():  # tiny lesion between pixel centres: take the nearest pixel
            inside.flat[np.argmin(d)] = True
        mask |= inside
        weight = np.maximum(_soft(dist, 0.5), inside.astype(np.float64))
        level = LESION * rng.uniform(0.92, 1.0)
        image = image + (level - image) * weight * (1.0 + 0.02 * rng.standard_normal())
    return np.clip(image, 0.0, None), mask


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
