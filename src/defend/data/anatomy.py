"""The head of a phantom slice: random anatomy, one healthy slice, and lesions (numpy only).

A slice is an axial cut through a FLAIR-like head: a bright scalp ring, a dark skull, dark
cerebrospinal fluid (CSF) around a folded cortex, grey matter brighter than white matter, dark
butterfly-shaped lateral ventricles, deep grey nuclei, a dark midline, and bright lesions in
the white matter. The anatomy (ellipse axes, rotation, shift, folding, ventricle size) is random
per volume (:func:`random_anatomy`) and varies smoothly with the axial position ``z``;
:func:`render_slice` draws it, one layer per anatomical part, and :func:`add_lesions` paints
lesions into it. Image magnitudes are at unit scale (max about 1).

Coordinates: images are ``(H, W)`` arrays, rows ``y`` (anterior at the top), columns ``x``;
the normalised grid (:func:`grid`) runs over ``[-1, 1)`` on both axes.

Only :func:`random_anatomy` and :func:`add_lesions` draw random numbers, from the
``numpy.random.Generator`` they are given, so a seeded generator gives a reproducible head.
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


# --------------------------------------------------------------------------- geometry


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(y, x)``, each ``(size, size)`` in ``[-1, 1)``."""
    c = (np.arange(size, dtype=np.float64) - size / 2 + 0.5) / (size / 2)
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth indicator of ``d < 0`` with an edge ``width`` wide (same units as ``d``)."""
    return 0.5 * (1.0 - np.tanh(d / width))


def _rotate(y: np.ndarray, x: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(y, x)`` in axes turned by ``angle`` radians: ``(cos a y - sin a x,
    cos a x + sin a y)``, same shapes as the inputs."""
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


@dataclass(frozen=True)
class _HeadFrame:
    """The pixels of one ``N x N`` slice in the coordinates of the head (normalised units).

    ``yr``, ``xr`` (float64 ``(N, N)``): the grid of :func:`grid` with the head's shift and
    rotation undone (``yr`` anterior-posterior, ``xr`` left-right). ``rho``, ``theta`` (float64
    ``(N, N)``): polar coordinates in which the head outline is the unit circle ``rho = 1``
    (``theta`` in ``(-pi, pi]``).
    """

    yr: np.ndarray
    xr: np.ndarray
    rho: np.ndarray
    theta: np.ndarray
    ha: float  # head semi-axis along x at this slice
    hb: float  # head semi-axis along y at this slice
    mean_axis: float  # (ha + hb) / 2: converts rho units to normalised units
    px: float  # one pixel in normalised units
    e: float  # tissue edge width (0.6 px) in rho units


def _head_frame(anatomy: Anatomy, z: float, size: int) -> _HeadFrame:
    """Shift, rotate and scale the pixel grid into the head of slice ``z``.

    The head shrinks towards the ends of the slab (``z = +-1``) by ``sqrt(1 - 0.45 z^2)`` (at
    least ``sqrt(0.2)``) and is egg-shaped: wider posteriorly by the factor ``1 + egg``.
    """
    a = anatomy
    y, x = grid(size)
    px = 2.0 / size  # one pixel in normalised units
    edge = 0.6 * px
    zs = np.sqrt(max(1.0 - 0.45 * z * z, 0.2))
    yr, xr = _rotate(y - a.shift_y, x - a.shift_x, a.angle)
    ha, hb = a.head_a * zs, a.head_b * zs
    v = yr / hb
    u = xr / (ha * (1.0 + a.egg * np.clip(v, -1.0, 1.0)))  # unit circle = head outline
    mean_axis = 0.5 * (ha + hb)
    return _HeadFrame(
        yr=yr,
        xr=xr,
        rho=np.sqrt(u * u + v * v),
        theta=np.arctan2(v, u),
        ha=ha,
        hb=hb,
        mean_axis=mean_axis,
        px=px,
        e=edge / mean_axis,  # edge width in rho units
    )


def _inner_skull(anatomy: Anatomy) -> float:
    """Radius of the inner skull surface in head-outline units (the outline is ``rho = 1``)."""
    return 1.0 - anatomy.scalp - anatomy.bone


def _sulci_table(anatomy: Anatomy, z: float, table: np.ndarray, half_width: float) -> np.ndarray:
    """Sulcal depth (rho units, ``>= 0``) at the angles ``table``: one Gaussian cleft per sulcus.

    Each sulcus sits at ``sulcus_angle + sulcus_drift * z`` with its ``sulcus_depth``; clefts
    are ``half_width`` radians wide (standard deviation) and overlap by their maximum.
    """
    a = anatomy
    sulci_table = np.zeros_like(table)
    for ang, depth in zip(a.sulcus_angle + a.sulcus_drift * z, a.sulcus_depth, strict=True):
        dtheta = np.angle(np.exp(1j * (table - ang)))
        sulci_table = np.maximum(sulci_table, depth * np.exp(-0.5 * (dtheta / half_width) ** 2))
    return sulci_table


@dataclass(frozen=True)
class _Outlines:
    """The cortical outlines of one slice at each pixel's angle (float64 ``(N, N)``, rho units).

    ``brain``: the brain surface (outer edge of the grey matter); ``sulci``: how deep the
    sulcal clefts reach in from it (``>= 0``); ``white``: the grey/white matter boundary.
    """

    brain: np.ndarray
    sulci: np.ndarray
    white: np.ndarray


def _outlines(anatomy: Anatomy, head: _HeadFrame, z: float) -> _Outlines:
    """Fold the brain and white-matter surfaces and cut the sulci, as functions of the angle.

    The outlines are tabulated at :data:`_TABLE_SIZE` angles and interpolated (periodically) at
    each pixel's ``theta``. Sulci are about a pixel wide (at least 0.012 normalised units).
    """
    a = anatomy
    table = np.linspace(-np.pi, np.pi, _TABLE_SIZE, endpoint=False)
    grey_fold = _fold(table, a.fold_amp[0], a.fold_phase[0] + a.fold_drift[0] * z)
    white_fold = _fold(table, a.fold_amp[1], a.fold_phase[1] + a.fold_drift[1] * z)
    brain_table = _inner_skull(a) - a.sulcal_csf - 0.012 * (1.0 + grey_fold)
    # sulci: narrow CSF clefts reaching in from the surface, about a pixel wide (or more)
    half_width = max(0.012, 0.6 * head.px) / (brain_table.mean() * head.mean_axis)  # radians
    sulci_table = _sulci_table(a, z, table, half_width)
    white_table = np.minimum(
        brain_table - a.cortex + 0.03 * white_fold, brain_table - sulci_table - 0.5 * a.cortex
    )
    return _Outlines(
        brain=np.interp(head.theta, table, brain_table, period=2 * np.pi),
        sulci=np.interp(head.theta, table, sulci_table, period=2 * np.pi),
        white=np.interp(head.theta, table, white_table, period=2 * np.pi),
    )


def _scalp_skull_csf(anatomy: Anatomy, head: _HeadFrame, texture: np.ndarray) -> np.ndarray:
    """The head from the outside in, up to the brain: bright scalp, dark bone, dark CSF.

    Returns float64 ``(N, N)``: :data:`SCALP` (modulated by ``texture``) in the scalp ring,
    :data:`BONE` in the skull, :data:`CSF` inside the inner skull, 0 outside the head.
    """
    rho, e = head.rho, head.e
    img = SCALP * (1.0 + 0.06 * texture) * _soft(rho - 1.0, e)
    img = img + (BONE - img) * _soft(rho - (1.0 - anatomy.scalp), e)
    return img + (CSF - img) * _soft(rho - _inner_skull(anatomy), e)


def _cortex(head: _HeadFrame, outline: _Outlines) -> np.ndarray:
    """Soft indicator ``(N, N)`` in ``[0, 1]`` of the brain inside its surface, sulci cut out."""
    rho, e = head.rho, head.e
    return _soft(rho - outline.brain, e) * (1.0 - _soft(outline.brain - outline.sulci - rho, e))


def _deep_grey(img: np.ndarray, head: _HeadFrame, z: float, t: np.ndarray) -> np.ndarray:
    """Paint the deep grey nuclei (basal ganglia / thalami), two ellipses beside the midline.

    They fade out away from the ventricle level and are absent for ``|z| >= 0.55``. ``t`` is
    the relative tissue intensity ``(N, N)``; returns the painted image ``(N, N)``.
    """
    ha, hb = head.ha, head.hb
    deep = max(0.0, 1.0 - (z / 0.55) ** 2)
    if deep > 0:
        for side in (-1.0, 1.0):
            dx = (head.xr - side * 0.26 * ha) / (0.10 * ha * (0.5 + 0.5 * deep))
            dy = (head.yr - 0.02 * hb) / (0.20 * hb * (0.5 + 0.5 * deep))
            nucleus = _soft(np.sqrt(dx * dx + dy * dy) - 1.0, 0.15) * deep
            img = img + (DEEP_GREY * t - img) * nucleus
    return img


def _ventricles(anatomy: Anatomy, head: _HeadFrame, z: float) -> np.ndarray | None:
    """Soft indicator ``(N, N)`` in ``[0, 1]`` of the lateral ventricles, or None where absent.

    Two elongated lobes diverging anteriorly (a butterfly), each a tear-drop frontal horn plus
    a smaller occipital horn bending outwards behind it. Their size shrinks away from the
    ventricle level; below 5 % of ``vent_size`` (``|z|`` near 0.75 and beyond) there are none.
    """
    a, yr, xr, ha, hb = anatomy, head.yr, head.xr, head.ha, head.hb
    vs = a.vent_size * max(0.0, 1.0 - (z / 0.75) ** 2)
    if vs <= 0.05:
        return None
    vent = np.zeros(head.rho.shape)
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
    return vent


def _falx(anatomy: Anatomy, head: _HeadFrame, brain: np.ndarray) -> np.ndarray:
    """Indicator ``(N, N)`` in ``[0, 1]`` of the interhemispheric fissure along ``xr = 0``.

    A Gaussian line 0.7 px wide (standard deviation) inside the brain surface ``brain`` (rho
    units), anterior and posterior of the ventricles only (zero near ``vent_offset``).
    """
    falx = np.exp(-0.5 * (head.xr / (0.7 * head.px)) ** 2) * _soft(head.rho - brain, head.e)
    falx *= np.clip(np.abs(head.yr / head.hb - anatomy.vent_offset) / 0.35 - 0.4, 0.0, 1.0)
    return falx


def render_slice(
    anatomy: Anatomy,
    z: float,
    size: int,
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The magnitude image of one healthy slice.

    Layers are painted from the outside in, each blending towards its tissue intensity by its
    soft indicator: scalp, skull and CSF, the folded cortex (grey), white matter, the deep grey
    nuclei, the ventricles (CSF) and the midline fissure (CSF). Deterministic: no randomness.

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
    head = _head_frame(anatomy, z, size)
    outline = _outlines(anatomy, head, z)
    t = 1.0 + 0.05 * texture  # relative tissue intensity
    img = _scalp_skull_csf(anatomy, head, texture)
    img = img + (GREY * t - img) * _cortex(head, outline)
    white = _soft(head.rho - outline.white, head.e)
    img = img + (WHITE * t - img) * white
    img = _deep_grey(img, head, z, t)
    vent = _ventricles(anatomy, head, z)
    if vent is not None:
        img = img + (CSF - img) * vent
        white = white * (1.0 - vent)
    falx = _falx(anatomy, head, outline.brain)
    img = img + (CSF - img) * 0.8 * falx
    white = white * (1.0 - falx)
    return np.clip(img, 0.0, None), white


def _white_depth(white: np.ndarray, max_radius: float) -> np.ndarray:
    """How deep each pixel lies inside the white matter, int32 ``(N, N)``.

    ``depth[i, j]`` counts the city-block erosions of ``white > 0.95`` that still hold
    ``(i, j)`` (0 outside), up to ``ceil(max_radius) + 1``; the grid wraps at the borders.
    """
    inside = white > 0.95
    depth = np.zeros(white.shape, dtype=np.int32)
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
    return depth


@dataclass(frozen=True)
class _Lesion:
    """One elliptical lesion in pixel units: centre ``(row, col)``, semi-axes ``radius`` and
    ``radius * aspect`` (the latter along the rotated row axis), rotated by ``angle`` radians."""

    row: float
    col: float
    radius: float
    aspect: float
    angle: float


def _draw_lesion(rng: np.random.Generator, depth: np.ndarray, scale: float) -> _Lesion:
    """Draw one lesion's shape and position (five uniform draws and one choice, in this order:
    radius, centre pixel, row and column jitter, aspect, angle).

    The radius is 2 to 5 pixels times ``scale``; the centre is a pixel at least ``0.6 radius``
    deep in the white matter (or as deep as any, see :func:`_white_depth`), jittered by up to
    half a pixel. ``depth`` must be positive somewhere.
    """
    radius = rng.uniform(2.0, 5.0) * scale
    # centres deep enough that most of the lesion lies in white matter
    need = min(int(np.ceil(0.6 * radius)), int(depth.max()))
    candidates = np.flatnonzero(depth >= need)
    r, c = np.unravel_index(rng.choice(candidates), depth.shape)
    r = r + rng.uniform(-0.5, 0.5)
    c = c + rng.uniform(-0.5, 0.5)
    aspect = rng.uniform(0.65, 1.0)
    angle = rng.uniform(0, np.pi)
    return _Lesion(row=r, col=c, radius=radius, aspect=aspect, angle=angle)


def _lesion_footprint(
    lesion: _Lesion, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of a lesion: ``(inside, weight)``, both ``(N, N)``.

    ``inside`` (bool) holds the pixel centres within the ellipse, at least the nearest one;
    ``weight`` (float64 in ``[0, 1]``) is 1 there and falls off with a soft edge of about half a
    pixel outside. ``rows``, ``cols``: the pixel index grids ``(N, N)``.
    """
    radius, aspect = lesion.radius, lesion.aspect
    dr, dc = _rotate(rows - lesion.row, cols - lesion.col, lesion.angle)
    d = np.sqrt((dr / (radius * aspect)) ** 2 + (dc / radius) ** 2)
    # signed distance to the outline in pixels (approximately), soft edge of ~0.5 px
    dist = (d - 1.0) * radius * aspect
    inside = d <= 1.0
    if not inside.any():  # tiny lesion between pixel centres: take the nearest pixel
        inside.flat[np.argmin(d)] = True
    return inside, np.maximum(_soft(dist, 0.5), inside.astype(np.float64))


def add_lesions(
    rng: np.random.Generator,
    image: np.ndarray,
    white: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``count`` bright elliptical lesions into white matter.

    Radii are 2 to 5 pixels at 64 px, scaled with the image size. The lesion mask is the set of
    pixels inside each lesion's ellipse; the painted intensity follows it with a soft edge of
    about half a pixel, so the mask matches what is visible. Each lesion draws its shape
    (:func:`_draw_lesion`), then its level and its intensity jitter; nothing is drawn when
    ``count <= 0`` or no pixel is white matter.

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
    depth = _white_depth(white, 5.0 * scale)
    if depth.max() == 0:
        return image, mask
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = image.copy()
    for _ in range(count):
        inside, weight = _lesion_footprint(_draw_lesion(rng, depth, scale), rows, cols)
        mask |= inside
        level = LESION * rng.uniform(0.92, 1.0)
        image = image + (level - image) * weight * (1.0 + 0.02 * rng.standard_normal())
    return np.clip(image, 0.0, None), mask
