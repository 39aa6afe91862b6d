"""Atomic writes and checkpoint files.

Everything the toolkit writes goes to a temporary file in the target folder first and is
then renamed over the target, so an interrupted run never leaves a half-written result.
Checkpoints are plain dicts of tensors and primitives and load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.errors import CheckpointError, OutputError

CHECKPOINT_FORMAT = "defend-checkpoint-v1"
#: How ``torch.save``'s legacy (non-zip) format starts: protocol 2 and its magic number.
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
#: Pickle opcodes that import or call Python objects (what ``weights_only=True`` refuses).
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a broken symbolic link counts)."""
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def check_writable(path: str | os.PathLike, kind: str = "file") -> Path:
    """Refuse, before any work, an output path that cannot be written; leave nothing.

    Walks up from ``path`` to its first existing ancestor, which must be a writable folder
    (a file is written there and removed);
    ``path`` itself may exist as a folder (``kind="dir"``) or as a file (``kind="file"``).

    Args:
        path: a file to write (checkpoint, JSON) or a folder to write into.
        kind: ``"file"`` or ``"dir"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: one line naming ``path`` and what is in the way.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    if os.path.lexists(path):
        if kind == "file" and path.is_dir():
            raise OutputError(f"{path}: is a folder, expected a file name to write")
        if kind == "dir" and not path.is_dir():
            raise OutputError(f"{path}: is a file, not a folder")
        folder = path if kind == "dir" else path.parent
    else:
        folder = _first_existing(path.parent)
    if not folder.is_dir():
        what = "a broken link" if not folder.exists() else "a file, not a folder"
        raise OutputError(f"{path}: cannot be written: {folder} is {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be written: no write permission in {folder}")
    _probe(path, folder)
    return path


def _probe(path: Path, folder: Path) -> None:
    """Write and remove a file in ``folder`` (what permission bits cannot tell: a read-only
    or virtual file system, e.g. /proc, a full disk)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".defend-probe-", dir=folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(
            f"{path}: cannot be written: no file can be created in {folder} ({reason.lower()})"
        ) from None
    os.close(fd)
    os.unlink(probe)


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


def write_csv(
    path: str | os.PathLike, rows: list[dict[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    """Write dict rows as CSV, atomically; the columns are ``columns`` or the first row's
    keys (no rows and ``columns``: the header alone)."""

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays as one compressed ``.npz``, atomically (through a file object:
    ``np.savez`` given a name would append ``.npz`` to the temporary one)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, 16 hex digits: what a result derived from a checkpoint or
    weights file is keyed on (a file retrained in place under the same name changes it, a copy
    or a rename does not)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically, tagged with :data:`CHECKPOINT_FORMAT`."""
    checkpoint = {"format": CHECKPOINT_FORMAT, **checkpoint}
    return atomic_write(path, lambda p: torch.save(checkpoint, p))


def _pickle_globals(path: Path) -> list[str] | None:
    """The Python objects a raw pickle file would import, or ``None`` if it is no pickle.

    Parses opcodes only (:func:`pickletools.genops`): nothing is executed.
    """
    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]
                if op.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                    found.append(".".join(strings))
                elif op.name in _CODE_OPCODES and not found:
                    found.append(op.name)
    except Exception:  # any parse failure means: not a pickle
        return None
    return found


def _sniff(path: Path) -> str:
    """``"torch"`` (a torch.save file), ``"pickle"`` (a raw pickle) or ``"other"``."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"  # a damaged zip: let torch.load name what is wrong
        return "torch" if any(n.endswith("/data.pkl") for n in names) else "other"
    if head[:1] == b"\x80" and _pickle_globals(path) is not None:
        return "pickle"
    return "other"


def _refused_objects(exc: BaseException) -> str:
    """The object ``weights_only=True`` refused, from torch's many-line message."""
    for line in str(exc).splitlines():
        if "Unsupported global:" in line:
            words = line.split("Unsupported global:", 1)[1].split()
            return words[1] if len(words) > 1 and words[0] == "GLOBAL" else words[0]
    return "objects other than tensors and primitives"


def _refuse_pickle(path: Path, objects: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a plain state dict: it holds pickled Python objects ({objects}) that "
        "could run code, so torch.load(weights_only=True) refuses it"
    )


def load_weights_file(path: str | os.PathLike, *, what: str = "weights") -> dict[str, Any]:
    """Load any ``.pt`` file safely (``weights_only=True``) as a dict.

    Args:
        path: the file.
        what: ``"weights"`` or ``"checkpoint"``: the kind of file named in messages.

    Raises:
        CheckpointError: the file is missing, not a PyTorch file (random bytes, text, another
            zip, empty), truncated, or holds pickled objects other than tensors and primitives
            (not a plain state dict: loading it could run code).
    """
    path = Path(path)
    noun = "checkpoint file" if what == "checkpoint" else "weight file"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {noun}")
    kind = _sniff(path)
    if kind == "pickle":
        objects = list(dict.fromkeys(_pickle_globals(path) or []))
        if objects:
            more = f" and {len(objects) - 1} more" if len(objects) > 1 else ""
            raise _refuse_pickle(path, objects[0] + more)
    if kind != "torch":
        raise CheckpointError(
            f"{path}: not a defend checkpoint (not a PyTorch file)"
            if what == "checkpoint"
            else f"{path}: not a PyTorch weight file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refuse_pickle(path, _refused_objects(exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable {noun} ({first})") from None
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
    ckpt = load_weights_file(path, what="checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a defend checkpoint (a raw state dict? pass it as --weights instead)"
        )
    if task is not None and ckpt.get("task") != task:
        raise CheckpointError(f"{path}: a '{ckpt.get('task')}' checkpoint, expected '{task}'")
    return ckpt


#: checkpoints ``defend train`` writes that guard a model rather than being one
HELPERS = {"detector": ("a hallucination detector", "defend detect eval / evade"),
           "input-detector": ("an input detector", "defend detect inputs"),
           "denoiser": ("a denoiser", "--denoiser beside the model it guards")}  # fmt: skip


def check_model_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``ckpt`` if it is a task's model (``defend train recon|seg|cls``'s), else a one-line
    :class:`CheckpointError` naming what it is and where it goes."""
    kind = ckpt.get("kind")
    if kind in HELPERS:
        what, where = HELPERS[kind]
        raise CheckpointError(f"{path}: {what} checkpoint, not a model (pass it to {where}; "
                              "here give a model trained by defend train)")  # fmt: skip
    return ckpt
