"""Device selection, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from defend.errors import DeviceError

#: Device types ``defend`` runs on.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU (``DEFEND_DEVICE`` overrides).

    Raises:
        DeviceError: an unknown device (``foo``), or one this machine does not have (``cuda``
            without CUDA, ``cuda:7`` beyond the GPU count, ``mps`` without Metal).
    """
    source = "--device"
    if not device and os.environ.get("DEFEND_DEVICE"):
        device, source = os.environ["DEFEND_DEVICE"], "DEFEND_DEVICE"
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device, source)


def check_device(device: str | torch.device, source: str = "--device") -> torch.device:
    """``device`` as a :class:`torch.device`, checked against this machine.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (or a ``torch.device``).
        source: where the value came from, named in the message (``--device``,
            ``DEFEND_DEVICE``).

    Raises:
        DeviceError: unknown or absent device (one line naming it).
    """
    spec = str(device).strip()
    try:
        parsed = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        where = "" if source == "--device" else f"{source}: "
        raise DeviceError(f"{where}unknown device '{spec}' (expected cpu, cuda, cuda:N or mps)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{source} {spec}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(
                f"{source} {spec}: this machine has {count} CUDA device(s): cuda:0 to "
                f"cuda:{count - 1}"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{source} {spec}: MPS is not available on this machine")
    return parsed


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``enabled``; a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in training or eval mode for a block, then restore the previous mode of
    each of its submodules (a wrapper in training mode around an eval-mode model, as ART's
    wrappers are, must not leave that model in training mode: ``train(mode)`` recurses)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def free_memory(device: str | torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory
    (``torch.cuda.mem_get_info``), the host's ``MemAvailable`` (Linux) for the CPU; None
    where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_batch_memory(batch: int | None, sample_shape: tuple[int, ...], device: str | torch.device,
                       option: str = "--batch-size", copies: int = 3) -> None:  # fmt: skip
    """Refuse, in one line before any work, a batch of ``batch`` float32 samples of
    ``sample_shape`` whose ``copies`` (e.g. noise, noisy input, output) cannot fit in the
    device's free memory (:func:`free_memory`); a lower bound, activations not counted.
    ``batch`` None (a size derived from the memory budget, :mod:`defend.memory`) passes.

    Raises:
        DeviceError: naming the option, the memory needed and free, and a batch that fits.
    """
    if batch is None:
        return
    free = free_memory(device)
    each = copies * 4 * int(np.prod(sample_shape))
    if free is None or batch * each <= free:
        return
    fits = max(1, free // each)
    gib = 2**30
    raise DeviceError(f"{option} {batch}: {copies} copies of {batch} samples of shape "
                      f"{tuple(sample_shape)} need at least {batch * each / gib:.1f} GiB, "
                      f"{torch.device(device)} has {free / gib:.1f} GiB free: use {option} "
                      f"{fits} or less")  # fmt: skip
