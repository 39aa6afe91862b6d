"""One entry point per task: the dataset of a split, or chosen samples as numpy arrays.

``data_dir`` is laid out as ``defend data synth`` writes it (``data_dir/{train,val,test}/*.h5``,
``data_dir/seg/<split>/{images,masks}``, ``data_dir/cls/<split>/<class>``), or for one task
alone simply ``data_dir/<split>/...``.

What a model saw in training travels in its checkpoint's ``data`` dict (written by
:func:`defend.train.train_model`): the acquisition (recon), the class names (cls) or label
count (seg), and the input shape ``(C, H, W)`` whose ``C`` is the channel count (seg/cls).
Readers of any other split pass ``checkpoint=`` so that they see the data the same way.
"""

from __future__ import annotations

import hashlib
import operator
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from defend.data.acquisition import Acquisition
from defend.data.folders import ClsFolder, SegFolder
from defend.data.recon import ReconDataset
from defend.errors import CheckpointError, DataError, DefendError
from defend.io import load_checkpoint
from defend.tasks import check_task, data_folder, kind_of

#: what ``classes`` may be: a label count (seg) or the class names in index order (cls)
Classes = int | Sequence[str]


#: fastMRI's archive folders, ``{anatomy_}{challenge}_{split}{suffix}`` (e.g.
#: ``multicoil_train``, ``knee_singlecoil_val``, ``brain_multicoil_test_full``)
FASTMRI_PREFIXES = ("", "knee_", "brain_")
FASTMRI_CHALLENGES = ("multicoil", "singlecoil")
FASTMRI_SUFFIXES = ("", "_full")


def fastmri_folders(data_dir: Path, split: str) -> list[Path]:
    """The folders of ``data_dir`` named as fastMRI ships ``split`` (``multicoil_val`` ...)."""
    names = [
        f"{prefix}{challenge}_{split}{suffix}"
        for prefix in FASTMRI_PREFIXES
        for challenge in FASTMRI_CHALLENGES
        for suffix in FASTMRI_SUFFIXES
    ]
    return [Path(data_dir) / name for name in names if (Path(data_dir) / name).is_dir()]


def task_root(data_dir: Path, task: str, split: str) -> Path:
    """The folder holding ``split`` of ``task`` under ``data_dir``.

    recon: ``data_dir/split``, else the one folder named as fastMRI ships the split
    (``multicoil_train``, ``singlecoil_val``, ``knee_multicoil_test_full``, ...); seg:
    ``data_dir/seg/split`` if it exists, else ``data_dir/split``; cls: likewise with ``cls``; a
    registered task: likewise with its :func:`~defend.tasks.data_folder`.

    Raises:
        DataError: (recon) several fastMRI folders fit the split (say which with ``--data``
            pointing at a folder holding one of them).
    """
    check_task(task)
    data_dir = Path(data_dir)
    if kind_of(task) == "recon":
        plain = data_dir / split
        found = [] if plain.is_dir() else fastmri_folders(data_dir, split)
        if len(found) > 1:
            raise DataError(
                f"{data_dir}: several folders hold the {split} split "
                f"({', '.join(p.name for p in found)}); keep one per data folder"
            )
        return found[0] if found else plain
    nested = data_dir / data_folder(task) / split
    return nested if nested.is_dir() else data_dir / split


def dataset_files(dataset: Dataset) -> list[Path]:
    """The files a dataset reads, in a fixed order (recon: its HDF5 files; seg: image and mask
    of each pair; cls: every image)."""
    if isinstance(dataset, ReconDataset):
        return list(dataset.files)
    if isinstance(dataset, SegFolder):
        return [p for pair in dataset.pairs for p in pair]
    if isinstance(dataset, ClsFolder):
        return [p for p, _ in dataset.samples]
    raise DefendError(f"cannot fingerprint a {type(dataset).__name__}")


#: bytes read from each file for its fingerprint: FINGERPRINT_BLOCKS blocks spread over it
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 4, 1 << 16


def _file_sample(path: Path, size: int) -> bytes:
    """:data:`FINGERPRINT_BLOCKS` blocks spread evenly over a file (all of a small one)."""
    with open(path, "rb") as f:
        if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK:
            return f.read()
        step = (size - FINGERPRINT_BLOCK) // (FINGERPRINT_BLOCKS - 1)
        blocks = []
        for i in range(FINGERPRINT_BLOCKS):
            f.seek(i * step)
            blocks.append(f.read(FINGERPRINT_BLOCK))
        return b"".join(blocks)


def fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies a split's data: ``{"files": count, "sha256": ...}`` over each file's
    path below the split folder, its size and four 64 KiB blocks of its bytes (a moved copy of
    the same data keeps its fingerprint; other, added, removed or regenerated files change it,
    without reading whole fastMRI volumes)."""
    root = Path(getattr(dataset, "root", "."))
    digest = hashlib.sha256()
    files = dataset_files(dataset)
    for path in files:
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        size = path.stat().st_size
        digest.update(f"{name}\t{size}\n".encode())
        digest.update(hashlib.sha256(_file_sample(path, size)).digest())
    return {"files": len(files), "sha256": digest.hexdigest()[:16]}


def _check_classes(task: str, classes: Classes | None) -> None:
    if classes is None:
        return
    if kind_of(task) == "recon":
        raise DefendError("classes does not apply to recon data")
    if kind_of(task) == "seg":
        if isinstance(classes, bool) or not isinstance(classes, int | np.integer):
            raise DefendError(f"seg classes must be the number of labels (an int), got {classes!r}")
    elif isinstance(classes, str) or not isinstance(classes, Sequence):
        raise DefendError(f"cls classes must be the list of class names, got {classes!r}")


def load_dataset(
    task: str,
    data_dir: Path,
    split: str,
    *,
    train: bool = False,
    acquisition: Acquisition | None = None,
    classes: Classes | None = None,
    channels: int | None = None,
) -> Dataset:
    """The dataset of one split: :class:`ReconDataset`, :class:`SegFolder` or :class:`ClsFolder`.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        data_dir: data folder (see :func:`task_root`).
        split: ``train``, ``val``, ``test`` (any sub-folder name).
        train: recon only: random masks per sample (True) or the fixed evaluation mask.
        acquisition: recon only: undersampling pattern (default ``Acquisition()``).
        classes: seg: number of labels ``K`` (None: inferred from this split's masks); cls:
            the class names in index order, the training split's (None: this split's sorted
            class folders). Not for recon.
        channels: seg/cls: convert images to this many channels (None: seg as stored, cls 1
            if all images are grayscale else 3). Not for recon.

    Raises:
        DefendError: unknown task, ``classes`` / ``channels`` for recon, ``acquisition`` for
            seg/cls, ``classes`` of the wrong kind.
        DataError: missing or unusable data (a cls class folder not in ``classes``).
    """
    check_task(task)
    _check_classes(task, classes)
    if kind_of(task) == "recon" and channels is not None:
        raise DefendError("channels does not apply to recon data")
    if kind_of(task) != "recon" and acquisition is not None:
        raise DefendError(f"acquisition does not apply to {task} data")
    root = task_root(data_dir, task, split)
    if kind_of(task) == "recon":
        if not root.is_dir():
            raise DataError(
                f"{data_dir}: no {split} split (expected {root} or a folder named as fastMRI "
                f"ships it, e.g. {Path(data_dir) / f'multicoil_{split}'})"
            )
        return ReconDataset(root, acquisition or Acquisition(), train=train)
    if kind_of(task) == "seg":
        return SegFolder(root, classes=classes, channels=channels)  # type: ignore[arg-type]
    return ClsFolder(root, classes=classes, channels=channels)  # type: ignore[arg-type]


def checkpoint_data_args(
    checkpoint: str | os.PathLike | Mapping[str, Any], task: str
) -> dict[str, Any]:
    """The data arguments a checkpoint fixes, from its ``data`` dict.

    Returns:
        recon: ``{"acquisition": Acquisition}``; seg: ``{"classes": K, "channels": C}``;
        cls: ``{"classes": [names], "channels": C}`` (``C`` = ``data["input_shape"][0]``).

    Raises:
        CheckpointError: unreadable file, a checkpoint of another task, or one whose ``data``
            lacks what ``task`` needs.
    """
    if isinstance(checkpoint, Mapping):
        ckpt, source = checkpoint, "checkpoint"
        if ckpt.get("task", task) != task:
            raise CheckpointError(
                f"checkpoint: a '{ckpt.get('task')}' checkpoint, expected '{task}'"
            )
    else:
        ckpt, source = load_checkpoint(checkpoint, task), str(checkpoint)
    data = ckpt.get("data")
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: checkpoint lacks its data dict")
    needed = ("acquisition",) if kind_of(task) == "recon" else ("classes", "input_shape")
    missing = [k for k in needed if k not in data]
    if missing:
        raise CheckpointError(f"{source}: checkpoint data lacks {', '.join(missing)}")
    try:
        if kind_of(task) == "recon":
            return {"acquisition": Acquisition.from_dict(dict(data["acquisition"]))}
        classes = data["classes"]
        if kind_of(task) == "seg":
            classes = int(classes)
        elif isinstance(classes, str) or not isinstance(classes, Sequence):
            raise TypeError(f"classes {classes!r} is not a list of names")
        else:
            classes = [str(c) for c in classes]
        return {"classes": classes, "channels": int(data["input_shape"][0])}
    except (TypeError, ValueError, IndexError, DefendError) as exc:
        raise CheckpointError(f"{source}: unusable checkpoint data ({exc})") from None


def _merge_checkpoint(
    task: str,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    given: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint's data arguments; an explicitly given one that differs is an error."""
    fixed = checkpoint_data_args(checkpoint, task)
    for key, value in given.items():
        if value is None:
            continue
        if key not in fixed:
            raise DefendError(f"{key} does not apply to {task} data")
        mine = fixed[key]
        same = value == mine
        if key == "classes" and kind_of(task) == "cls":
            same = not isinstance(value, str) and list(value) == mine
        if key == "acquisition":
            same = isinstance(value, Acquisition) and value.to_dict() == mine.to_dict()
        if not same:
            raise DefendError(
                f"{key}={value} contradicts the checkpoint, which was trained with {key}={mine}"
            )
    return fixed


def _as_indices(indices: Sequence[int] | np.ndarray, size: int) -> list[int]:
    """``indices`` as a list of ints in ``[0, size)``, or a one-line DefendError."""
    if isinstance(indices, str | bytes) or np.ndim(indices) != 1:
        raise DefendError(f"indices must be a 1-D sequence of dataset positions, got {indices!r}")
    out: list[int] = []
    for i in indices:
        if isinstance(i, bool | np.bool_):
            raise DefendError(f"indices must be integers, got {i!r}")
        try:
            out.append(operator.index(i))
        except TypeError:
            raise DefendError(f"indices must be integers, got {i!r}") from None
    if not out:
        raise DefendError("indices is empty: give at least one dataset position")
    bad = [i for i in out if not 0 <= i < size]
    if bad:
        raise DefendError(
            f"indices out of range for a split of {size} sample(s) (valid 0..{size - 1}): "
            f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}"
        )
    return out


def _where(sample: dict[str, Any], index: int) -> str:
    where = f"#{index}"
    if "fname" in sample:
        where += f" {sample['fname']}"
    if "slice_num" in sample:
        where += f" slice {sample['slice_num']}"
    return where


def load_arrays(
    data_dir: Path,
    task: str,
    split: str = "val",
    n: int | None = 16,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    acquisition: Acquisition | None = None,
    classes: Classes | None = None,
    channels: int | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    return_indices: bool = False,
) -> tuple[np.ndarray, ...]:
    """Samples of a split (the first ``n``, or those at ``indices``) as numpy arrays.

    Args:
        data_dir: data folder (see :func:`task_root`).
        task: ``recon``, ``seg`` or ``cls``.
        split: ``train``, ``val``, ``test`` (any sub-folder name).
        n: the first ``n`` samples in dataset order; None takes all. Fewer come back if the
            split is smaller. Ignored when ``indices`` is given.
        indices: dataset positions (``0 .. len - 1``, repeats allowed): exactly these samples,
            in this order, so that row ``i`` is sample ``indices[i]`` (what a shard of work
            split across processes needs). ``n`` is then ignored.
        acquisition: recon: the undersampling pattern (default ``Acquisition()``).
        classes: seg: the number of labels; cls: the class names in index order (see
            :func:`load_dataset`).
        channels: seg/cls: the channel count images are converted to.
        checkpoint: a ``defend train`` checkpoint (file or loaded dict): its ``data`` dict
            supplies the acquisition (recon) or the classes and channels (seg/cls) the model
            was trained with. Arguments given as well must agree with it.
        return_indices: also return the (N,) int64 dataset positions of the rows (with ``n``,
            skipped samples leave gaps): ``(x, y, positions)``.

    Returns:
        ``(x, y)``, with ``N`` the number of samples:

        * recon: x float32 ``(N, coils, H, W, 2)`` k-space masked with the fixed evaluation
          mask (and fastMRI's padding), y float32 ``(N, h, w)`` targets;
        * seg: x float32 ``(N, C, H, W)`` in ``[0, 1]``, y float32 ``(N, K, H, W)`` in {0, 1};
        * cls: x float32 ``(N, C, H, W)`` in ``[0, 1]``, y int64 ``(N,)`` class indices.

        Samples whose input or target shape differs from the first one's cannot be stacked:
        with ``n`` they are skipped with a warning naming them (e.g. fastMRI volumes of another
        k-space width); with ``indices`` that is a :class:`DataError` naming them, since the
        rows would no longer match the positions asked for. :func:`load_groups` returns every
        sample, one array per shape.

    Raises:
        DefendError: unknown task, ``n < 1``, an empty or out-of-range ``indices``, arguments
            that contradict ``checkpoint``. CheckpointError: an unusable checkpoint.
            DataError: missing or unusable data, samples of another shape at ``indices``.
    """
    dataset = _open_split(
        data_dir, task, split, n, indices, checkpoint, acquisition, classes, channels
    )
    positions, limit, strict = _selection(len(dataset), n, indices)  # type: ignore[arg-type]
    x, y, used = _stack(*_collect(dataset, positions, limit, task, strict=strict), task)
    return (x, y, used) if return_indices else (x, y)


def _selection(
    size: int, n: int | None, indices: Sequence[int] | np.ndarray | None
) -> tuple[Sequence[int], int | None, bool]:
    """What :func:`load_arrays` reads of a split of ``size`` samples: ``(positions, limit,
    strict)`` for :func:`_collect`.

    Without ``indices``: every position in order, keeping the first ``n`` rows (None: all) and
    skipping samples of another shape (the next one is taken). With ``indices``: exactly those
    (checked by :func:`_as_indices`), no limit, and a sample of another shape is an error.
    """
    if indices is None:
        return range(size), n, False
    return _as_indices(indices, size), None, True


def _stack(
    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], used: Sequence[int], task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one shape as the arrays :func:`load_arrays` returns: ``(x, y, positions)``.

    ``x`` float32 ``(N, ...)``; ``y`` int64 ``(N,)`` for cls, else float32 ``(N, ...)``;
    ``positions`` int64 ``(N,)``. ``xs`` and ``ys`` must be non-empty and of one shape each.
    """
    y_dtype = np.int64 if kind_of(task) == "cls" else np.float32
    return (
        np.stack(xs).astype(np.float32, copy=False),
        np.stack(ys).astype(y_dtype, copy=False),
        np.asarray(used, dtype=np.int64),
    )


def split_size(
    data_dir: Path, task: str, split: str, checkpoint: str | os.PathLike | Mapping | None = None
) -> int:
    """The number of samples of a split, as :func:`load_arrays` counts dataset positions."""
    return len(_open_split(data_dir, task, split, None, None, checkpoint, None, None, None))


def every_kth(
    data_dir: Path,
    task: str,
    split: str,
    n: int,
    skip: int,
    checkpoint: str | os.PathLike | Mapping | None = None,
) -> np.ndarray:
    """Dataset positions ``0, skip, 2 skip, ...`` of a split, ``n`` at most (int64), for
    :func:`load_arrays`' ``indices`` (locuslab's ``--skip``)."""
    return np.arange(0, split_size(data_dir, task, split, checkpoint), skip)[:n]


def _open_split(
    data_dir: Path,
    task: str,
    split: str,
    n: int | None,
    indices: Any,
    checkpoint: Any,
    acquisition: Acquisition | None,
    classes: Classes | None,
    channels: int | None,
) -> Dataset:
    """The evaluation dataset of a split, after the checks :func:`load_arrays` makes."""
    check_task(task)
    if indices is None and n is not None and n < 1:
        raise DefendError(f"n must be >= 1 (or None for all), got {n}")
    args: dict[str, Any] = {"acquisition": acquisition, "classes": classes, "channels": channels}
    if checkpoint is not None:
        args = _merge_checkpoint(task, checkpoint, args)
    return load_dataset(task, data_dir, split, train=False, **args)


def load_groups(
    data_dir: Path,
    task: str,
    split: str = "val",
    n: int | None = 16,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    acquisition: Acquisition | None = None,
    classes: Classes | None = None,
    channels: int | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Samples of a split as numpy arrays, one group per shape: none is left out.

    fastMRI data mixes k-space widths and coil counts; a group holds the samples that stack.
    Arguments as :func:`load_arrays`: the first ``n`` samples (all of them with None), or
    exactly those at ``indices``.

    Returns:
        ``[(x, y, positions), ...]``, one tuple per shape in order of first appearance, with
        the arrays of :func:`load_arrays` and ``positions`` the (N_g,) int64 dataset positions
        of the group's rows.
    """
    dataset = _open_split(
        data_dir, task, split, n, indices, checkpoint, acquisition, classes, channels
    )
    size = len(dataset)  # type: ignore[arg-type]
    if indices is None:
        positions = list(range(size if n is None else min(n, size)))
    else:
        positions = _as_indices(indices, size)
    groups: dict[tuple, tuple[list, list, list]] = {}
    for index in positions:
        sample = dataset[index]
        x, y = sample["input"].numpy(), sample["target"].numpy()
        xs, ys, used = groups.setdefault((x.shape, y.shape), ([], [], []))
        xs.append(x)
        ys.append(y)
        used.append(int(index))
    return [_stack(xs, ys, used, task) for xs, ys, used in groups.values()]


def _collect(
    dataset: Dataset, positions: Sequence[int], n: int | None, task: str, strict: bool
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Inputs, targets and dataset positions of up to ``n`` samples of one shape.

    Samples whose shape differs from the first one's are skipped with a warning, or with
    ``strict`` refused with a :class:`DataError` naming them.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    used: list[int] = []
    skipped: list[str] = []
    for index in positions:
        if n is not None and len(xs) >= n:
            break
        sample = dataset[index]
        x = sample["input"].numpy()
        y = sample["target"].numpy()
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            skipped.append(f"{_where(sample, index)} {x.shape}")
            continue
        xs.append(x)
        ys.append(y)
        used.append(int(index))
    if skipped:
        listed = f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}"
        if strict:
            raise DataError(
                f"load_arrays: {len(skipped)} of the {task} samples at indices differ in shape "
                f"from the first {xs[0].shape} and cannot be stacked: {listed}"
            )
        warnings.warn(
            f"load_arrays: skipped {len(skipped)} {task} sample(s) whose shape differs from the "
            f"first {xs[0].shape}: {listed}",
            stacklevel=3,
        )
    return xs, ys, used
