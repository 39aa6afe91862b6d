"""Target regions of hallucination attacks: a line, a square, a disk, a random blob, or any
mask image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from defend.errors import DefendError

#: Buğday et al.'s line at 320 px: 4 px thick, 60 px long; scaled to the image size
PAPER_LINE = (4 / 320, 60 / 320)
PAPER_SQUARE = 50 / 320
#: the region shapes :func:`region_mask` draws
REGIONS = ("line", "square", "disk")
#: the shapes :func:`random_regions` draws: :data:`REGIONS` and ``"blob"`` (:func:`blob_mask`)
RANDOM_REGIONS = (*REGIONS, "blob")


def region_mask(
    shape: tuple[int, int],
    kind: str = "line",
    size: tuple[int, int] | int | None = None,
    center: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A boolean target region in image coordinates.

    Args:
        shape: (h, w) of the reconstructed image.
        kind: ``"line"`` (horizontal bar), ``"square"`` or ``"disk"`` (the ellipse inscribed
            in the size's box).
        size: (height, width) in pixels, or one int for a square. Default: Buğday et al.'s
            60 x 4 px line or 50 x 50 px square at 320 px (a disk: the square's), scaled to
            ``shape`` (at least 1 px).
        center: (row, col) of the region's centre; default the image centre.

    Returns:
        (h, w) bool tensor.

    Raises:
        DefendError: unknown kind, non-positive size, or a region reaching outside the image.
    """
    h, w = shape
    if kind not in REGIONS:
        raise DefendError(
            f"unknown region '{kind}': choose {', '.join(REGIONS)}, or pass a mask image"
        )
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
    if kind == "disk":
        rows = (torch.arange(h) - (top + (rh - 1) / 2)) / (rh / 2)
        cols = (torch.arange(w) - (left + (rw - 1) / 2)) / (rw / 2)
        mask &= rows.view(-1, 1).square() + cols.view(1, -1).square() <= 1
    return mask


def blob_mask(
    shape: tuple[int, int],
    size: tuple[int, int],
    center: tuple[int, int],
    generator: torch.Generator,
) -> torch.Tensor:
    """A random smooth blob, an arbitrary connected-looking region inside a box.

    A 4 x 4 grid of uniform noise, upsampled bicubically to the box, plus a bump in the
    middle, thresholded at its median: about half the box, with a random outline.

    Args:
        shape: (h, w) of the image. size: (height, width) of the box in pixels.
        center: (row, col) of the box's centre. generator: the CPU generator it draws from.

    Returns:
        (h, w) bool, non-empty, inside the box.
    """
    box = region_mask(shape, "square", size, center)
    rows, cols = box.nonzero()[:, 0], box.nonzero()[:, 1]
    top, left = int(rows.min()), int(cols.min())
    rh, rw = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    noise = torch.rand(1, 1, 4, 4, generator=generator)
    field = torch.nn.functional.interpolate(noise, (rh, rw), mode="bicubic", align_corners=True)
    ys = torch.linspace(-1, 1, rh).view(-1, 1)
    xs = torch.linspace(-1, 1, rw).view(1, -1)
    field = field[0, 0] + 0.5 * (1 - ys.square() - xs.square())
    inside = field >= field.median()
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top : top + rh, left : left + rw] = inside
    return mask


def random_regions(
    shape: tuple[int, int],
    n: int,
    generator: torch.Generator,
    kinds: tuple[str, ...] = REGIONS,
    scale: tuple[float, float] = (0.5, 2.0),
) -> torch.Tensor:
    """``n`` random target regions, as hallucination training and detection data draw them.

    Each region's kind is drawn from ``kinds`` (:data:`RANDOM_REGIONS`), its size is the
    kind's default size (:func:`region_mask`; a blob: the square's) times a factor drawn
    log-uniformly from ``scale`` (each side on its own), and its centre is drawn uniformly
    among the positions where it fits.

    Args:
        shape: (h, w) of the reconstruction.
        n: number of regions.
        generator: the CPU generator all draws come from.
        kinds: region shapes to draw from.
        scale: (smallest, largest) size factor.

    Returns:
        (n, h, w) bool regions, on the CPU.
    """
    h, w = shape
    masks = []
    for _ in range(n):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
        if kind not in RANDOM_REGIONS:
            raise DefendError(f"unknown region '{kind}': choose {', '.join(RANDOM_REGIONS)}")
        base = region_mask(shape, "square" if kind == "blob" else kind).nonzero()
        base_h, base_w = (base.amax(0) - base.amin(0) + 1).tolist()
        factor = torch.exp(
            torch.empty(2).uniform_(*np.log(scale).tolist(), generator=generator)
        ).tolist()
        rh = min(h, max(1, round(base_h * factor[0])))
        rw = min(w, max(1, round(base_w * factor[1])))
        cy = rh // 2 + int(torch.randint(h - rh + 1, (1,), generator=generator))
        cx = rw // 2 + int(torch.randint(w - rw + 1, (1,), generator=generator))
        if kind == "blob":
            masks.append(blob_mask(shape, (rh, rw), (cy, cx), generator))
        else:
            masks.append(region_mask(shape, kind, (rh, rw), (cy, cx)))
    return torch.stack(masks)


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


def parse_size(value: str) -> tuple[int, int]:
    """``"60x4"`` (width x height, as on screen) or ``"8"`` -> ``(height, width)`` in px."""
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise DefendError(f"expected WxH or N pixels, got '{value}'") from None
    if len(parts) not in (1, 2):
        raise DefendError(f"expected WxH or N pixels, got '{value}'")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[1], parts[0])


def read_mask(path: str | Path) -> np.ndarray:
    """A region mask from a ``.npy`` array or an image file (non-zero pixels are inside)."""
    from PIL import Image, UnidentifiedImageError  # Pillow: only for an image mask

    path = Path(path)
    if not path.is_file():
        raise DefendError(f"{path}: no such region mask file")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            return np.asarray(image) > 0
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DefendError(f"{path}: unreadable region mask ({exc})") from None
