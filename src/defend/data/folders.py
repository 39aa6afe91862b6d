"""Image folders for segmentation and classification.

* :class:`SegFolder`: ``root/images/NAME.*`` paired with ``root/masks/NAME.*`` by file stem.
* :class:`ClsFolder`: torchvision ``ImageFolder`` layout, ``root/<class>/NAME.*``, with the
  class map of the training split (``classes``) for every other split.

Images are PNG/TIFF/JPEG/BMP (read with PIL) or NPY, scaled to ``[0, 1]`` float32: uint8 / 255,
uint16 / 65535, bool as 0/1, anything else (float, other integers) min-max per image. Every
problem with a file is a one-line :class:`~defend.errors.DataError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from defend.errors import DataError

PIL_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + (".npy",)
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".npy")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_raw(path: Path) -> np.ndarray:
    """The stored array of an image or mask file: ``(H, W)``, ``(H, W, C)`` (PIL) or as saved
    (NPY). Palette images are expanded to RGB, LA/RGBA lose alpha."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("LA", "PA"):
                im = im.convert("L")
            elif im.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, ValueError, UnidentifiedImageError, EOFError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable file ({_first_line(exc)})") from None


def _read_mask_raw(path: Path) -> np.ndarray:
    """A mask file's array without colour conversion (palette PNGs keep their indices)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, UnidentifiedImageError, EOFError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable file ({_first_line(exc)})") from None


def scale_image(array: np.ndarray, path: Path | str = "") -> np.ndarray:
    """Scale an image array to float32 in ``[0, 1]``.

    uint8 / 255, uint16 / 65535, bool -> 0/1; other dtypes (float, int32, ...) min-max per
    image (a constant image becomes zeros).

    Raises:
        DataError: NaN/Inf values, or a non-numeric dtype.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise DataError(f"{path}: unsupported image dtype {array.dtype}")
    x = array.astype(np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: image holds NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def load_image(path: Path, channels: int | None = None) -> np.ndarray:
    """One image file as float32 ``(C, H, W)`` in ``[0, 1]``.

    PIL images: grayscale gives ``C = 1``, colour ``C = 3``. NPY: ``(H, W)`` -> ``(1, H, W)``,
    ``(C, H, W)`` kept. ``channels`` converts: 1 -> 3 repeats, 3 -> 1 averages (luma weights for
    RGB), other counts must match.

    Raises:
        DataError: unreadable file, wrong ndim, NaN/Inf, channel count that cannot be converted.
    """
    path = Path(path)
    raw = _read_raw(path)
    is_npy = path.suffix.lower() == ".npy"
    if raw.ndim == 2:
        raw = raw[None]
    elif raw.ndim == 3 and not is_npy:
        raw = np.moveaxis(raw, -1, 0)  # PIL (H, W, C) -> (C, H, W)
    elif raw.ndim != 3:
        expected = "(H, W) or (C, H, W)" if is_npy else "a 2-D image"
        raise DataError(f"{path}: image has shape {raw.shape}, expected {expected}")
    x = scale_image(raw, path)
    return _convert_channels(x, channels, path)


def _convert_channels(x: np.ndarray, channels: int | None, path: Path) -> np.ndarray:
    c = x.shape[0]
    if channels is None or c == channels:
        return np.ascontiguousarray(x)
    if c == 1:
        return np.repeat(x, channels, axis=0)
    if channels == 1 and c == 3:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
        return (x * w).sum(axis=0, keepdims=True)
    raise DataError(f"{path}: image has {c} channels, cannot convert to {channels}")


def _labels_from_index_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map ``(H, W)`` from a stored index mask (0/255 binary -> 0/1)."""
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and path.suffix.lower() != ".npy":
        if np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2]):
            raw = raw[..., 0]  # grey saved as RGB
        else:
            raise DataError(f"{path}: colour mask; expected single-channel label indices")
    if raw.ndim != 2:
        raise DataError(f"{path}: mask has shape {raw.shape}, expected (H, W) label indices")
    if raw.dtype == np.bool_:
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: mask holds NaN or Inf")
        if not np.array_equal(raw, np.round(raw)):
            raise DataError(f"{path}: mask holds non-integer values; expected label indices")
    elif raw.dtype.kind not in "iu":
        raise DataError(f"{path}: unsupported mask dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{path}: mask holds negative labels")
    values = np.unique(labels)
    if values[-1] == 255 and set(values.tolist()) <= {0, 255}:
        labels = (labels == 255).astype(np.int64)  # binary mask stored as 0/255
    return labels


def _is_channel_mask(raw: np.ndarray, path: Path) -> bool:
    return path.suffix.lower() == ".npy" and raw.ndim == 3


def mask_classes(path: Path) -> int:
    """Number of label channels one mask file implies (max label, or K of a (K, H, W) NPY)."""
    path = Path(path)
    raw = _read_mask_raw(path)
    if _is_channel_mask(raw, path):
        return int(raw.shape[0])
    labels = _labels_from_index_mask(raw, path)
    return int(labels.max())


def load_mask(path: Path, classes: int) -> np.ndarray:
    """One mask file as float32 ``(K, H, W)`` in {0, 1} with ``K = classes``.

    Label index ``k`` (1..K) goes to channel ``k - 1``; 0 is background (no channel). A
    ``(K, H, W)`` NPY is taken as already one-hot / multi-hot (non-zero = 1).

    Raises:
        DataError: unreadable file, NaN/Inf, a label above ``classes``, a channel count other
            than ``classes``.
    """
    path = Path(path)
    raw = _read_mask_raw(path)
    if _is_channel_mask(raw, path):
        if raw.shape[0] != classes:
            raise DataError(f"{path}: mask has {raw.shape[0]} channels, expected {classes}")
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise DataError(f"{path}: mask holds NaN or Inf")
        return (raw != 0).astype(np.float32)
    labels = _labels_from_index_mask(raw, path)
    top = int(labels.max())
    if top > classes:
        raise DataError(f"{path}: mask holds label {top}, but there are only {classes} classes")
    onehot = labels[None] == np.arange(1, classes + 1)[:, None, None]
    return onehot.astype(np.float32)


def _list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


class SegFolder(Dataset):
    """Image / mask pairs: ``root/images/*`` and ``root/masks/*`` matched by file stem.

    Samples are dicts: ``input`` float32 ``(C, H, W)`` in ``[0, 1]``, ``target`` float32
    ``(K, H, W)`` in {0, 1} (channel ``k - 1`` is label ``k``), ``fname`` (image file name).

    Args:
        root: folder holding ``images/`` and ``masks/``.
        classes: number of labels ``K``; None infers it once over all masks (the largest label
            index, or the channel count of ``(K, H, W)`` NPY masks).
        channels: convert every image to this many channels (1 <-> 3); None keeps them as
            stored.

    Raises:
        DataError: missing folder, no images, an image without a mask (or with two), and on
            access an unreadable file, NaN/Inf, or image and mask sizes that differ.
    """

    def __init__(self, root: Path, classes: int | None = None, channels: int | None = None):
        root = Path(root)
        images_dir, masks_dir = root / "images", root / "masks"
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: no such folder (expected images/ and masks/)")
        images = _list_files(images_dir, IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        masks: dict[str, Path] = {}
        for m in _list_files(masks_dir, MASK_EXTENSIONS):
            if m.stem in masks:
                raise DataError(f"{m}: two masks for '{m.stem}' ({masks[m.stem].name}, {m.name})")
            masks[m.stem] = m
        pairs: list[tuple[Path, Path]] = []
        seen: dict[str, Path] = {}
        for img in images:
            if img.stem in seen:
                raise DataError(f"{img}: two images for '{img.stem}' ({seen[img.stem].name})")
            seen[img.stem] = img
            if img.stem not in masks:
                raise DataError(f"{img}: no mask for it in {masks_dir}")
            pairs.append((img, masks[img.stem]))
        if classes is None:
            classes = max(mask_classes(m) for _, m in pairs)
            classes = max(classes, 1)
        elif classes < 1:
            raise DataError(f"classes must be >= 1, got {classes}")
        self.root = root
        self.pairs = pairs
        self.classes = int(classes)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[index]
        x = load_image(image_path, self.channels)
        y = load_mask(mask_path, self.classes)
        if x.shape[1:] != y.shape[1:]:
            raise DataError(
                f"{image_path}: image is {x.shape[1]}x{x.shape[2]} but its mask "
                f"{mask_path.name} is {y.shape[1]}x{y.shape[2]}"
            )
        return {
            "input": torch.from_numpy(x),
            "target": torch.from_numpy(y),
            "fname": image_path.name,
        }

    def __repr__(self) -> str:
        return f"SegFolder({self.root}, {len(self)} pairs, {self.classes} classes)"


def _is_image_file(path: str) -> bool:
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _peek_channels(path: Path) -> int:
    """Channel count of an image without decoding it (PIL header / NPY shape)."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return 1 if arr.ndim == 2 else int(arr.shape[0])
        with Image.open(path) as im:
            return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    except (OSError, ValueError, UnidentifiedImageError, EOFError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable file ({_first_line(exc)})") from None


def _class_folders(root: Path) -> list[str]:
    """Names of the class folders of ``root``: its sub-folders, hidden ones left out, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_class_names(classes: Sequence[str]) -> list[str]:
    """``classes`` as a list of distinct, non-empty folder names, or a one-line DataError."""
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise DataError(f"classes must be a list of class folder names, got {classes!r}")
    names = list(classes)
    if not names:
        raise DataError("classes must name at least one class folder, got []")
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise DataError(f"classes must be folder names (non-empty strings), got {name!r}")
    if len(set(names)) != len(names):
        raise DataError(f"classes holds a name twice: {names}")
    return names


class ClsFolder(Dataset):
    """Labelled images in torchvision ``ImageFolder`` layout: ``root/<class>/<image>``.

    The class map comes from the training split: pass its ``classes`` (the names in index
    order, e.g. a checkpoint's ``data["classes"]``) when reading any other split, so that a
    split holding only some of the classes keeps their indices. Without ``classes`` the map is
    this folder's own: its sub-folder names in sorted order, as ``ImageFolder`` makes it.
    Samples come in ``ImageFolder`` order (class folder name, then file path) and are dicts:
    ``input`` float32 ``(C, H, W)`` in ``[0, 1]``, ``target`` int64 scalar tensor (the class
    index), ``fname``.

    Args:
        root: the folder of class folders (hidden folders, ``.name``, are ignored).
        classes: the class names, index = position; a class without a folder (or without
            images) here is allowed, a folder not in the list is an error. None: the sorted
            sub-folder names, each of which must hold images.
        channels: 1 or 3 to convert every image; None: 1 if all images are grayscale, else 3.

    Attributes:
        classes: the class names (index order); ``class_to_idx``: name -> index;
        samples: ``(path, index)`` per image; channels: the channel count ``C``.

    Raises:
        DataError: folder missing, no class folders, no images, a class folder not in
            ``classes``, (without ``classes``) a class folder without images; on access, an
            unreadable file or NaN/Inf.
    """

    def __init__(
        self,
        root: Path,
        classes: Sequence[str] | None = None,
        channels: int | None = None,
    ):
        from torchvision.datasets.folder import make_dataset  # torchvision: cls data only

        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        folders = _class_folders(root)
        if classes is None:
            if not folders:
                raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
            names = folders
        else:
            names = _check_class_names(classes)
            unknown = [f for f in folders if f not in names]
            if unknown:
                raise DataError(
                    f"{root / unknown[0]}: class folder '{unknown[0]}' is not one of the known "
                    f"classes {names} (the training split's)"
                )
        class_to_idx = {name: i for i, name in enumerate(names)}
        samples: list[tuple[Path, int]] = []
        for name in folders:  # sorted: ImageFolder's order
            try:
                found = make_dataset(
                    str(root), {name: class_to_idx[name]}, is_valid_file=_is_image_file
                )
            except FileNotFoundError:  # a class folder without images
                if classes is None:
                    raise DataError(
                        f"{root / name}: class folder without images "
                        f"({', '.join(IMAGE_EXTENSIONS)})"
                    ) from None
                continue
            samples.extend((Path(p), int(t)) for p, t in found)
        if not samples:
            raise DataError(f"{root}: no images in class folders")
        if channels is None:
            gray = all(_peek_channels(p) == 1 for p, _ in samples)
            channels = 1 if gray else 3
        elif channels < 1:
            raise DataError(f"channels must be >= 1, got {channels}")
        self.root = root
        self.classes: list[str] = names
        self.class_to_idx: dict[str, int] = class_to_idx
        self.samples: list[tuple[Path, int]] = samples
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        x = load_image(path, self.channels)
        return {
            "input": torch.from_numpy(x),
            "target": torch.tensor(label, dtype=torch.int64),
            "fname": path.name,
        }

    @property
    def targets(self) -> list[int]:
        """Class index of every sample, in dataset order."""
        return [t for _, t in self.samples]

    def __repr__(self) -> str:
        return (
            f"ClsFolder({self.root}, {len(self)} images, classes {self.classes}, "
            f"{self.channels} channel(s))"
        )
