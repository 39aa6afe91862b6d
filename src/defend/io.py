"""Atomic writes and checkpoint files.

Everything the toolkit writes goes to a temporary file in the target folder first and is
then renamed over the target, so an interrupted run never leaves a half-written result.
Checkpoints are plain dicts of tensors and primitives and load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.errors import CheckpointError

CHECKPOINT_FORMAT = "defend-checkpoint-v1"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and then rename ``tmp_path`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; honour the umask instead
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (NaN and infinities become ``null``), atomically."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return write_text(path, text + "\n")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: numpy / torch values as Python ones, paths as strings,
    NaN and infinities as None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically, tagged with :data:`CHECKPOINT_FORMAT`."""
    checkpoint = {"format": CHECKPOINT_FORMAT, **checkpoint}
    return atomic_write(path, lambda p: torch.save(checkpoint, p))


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load any ``.pt`` file safely (``weights_only=True``) as a dict.

    Raises:
        CheckpointError: the file is missing, truncated, or holds pickled objects other than
            tensors and primitives (not a plain state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: not a plain state dict (refused by torch.load(weights_only=True): {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def load_checkpoint(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by ``defend train``.

    Args:
        path: checkpoint file.
        task: if given, the task the checkpoint must belong to (``recon``, ``seg``, ``cls``).

    Raises:
        CheckpointError: not a defend checkpoint, or one of another task.
    """
    ckpt = load_weights_file(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a defend checkpoint (a raw state dict? pass it as --weights instead)"
        )
    if task is not None and ckpt.get("task") != task:
        raise CheckpointError(f"{path}: a '{ckpt.get('task')}' checkpoint, expected '{task}'")
    return ckpt
