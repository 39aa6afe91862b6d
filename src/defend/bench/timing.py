"""Timing primitives of the attack benchmark: clocks, interleaving, medians, forward counting.

Every measurement is taken in one process, interleaved (attack, floor, attack, ... with the
order reversed every other repeat, so that drift in the machine's load hits both alike), after
a warm-up, and reported as the median of the repeats. On CUDA the device is synchronised
before each clock read, so a time covers the work queued, not only its launch.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Log = Callable[[str], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``, with the device synchronised before both clock reads."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def interleaved(
    tasks: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Time each task ``repeats`` times, interleaved, the order reversed every other repeat.

    Returns:
        ``{name: [seconds] * repeats}``.
    """
    times: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(tasks[name], device)[0])
    return times


def median(values: Sequence[float]) -> float:
    """Median of the finite values (NaN if none)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else math.nan


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the finite values (NaN if none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def paired(times: dict[str, list[float]], first: str, second: str) -> dict[str, Any]:
    """Two tasks timed back to back in each repeat (:func:`interleaved`), summarised.

    Returns:
        ``{first}_s`` and ``{second}_s`` (medians), ``ratio`` (median over repeats of
        first / second), ``ratios`` (each repeat's), ``{first}_times``, ``{second}_times``.
    """
    each = [a / b for a, b in zip(times[first], times[second], strict=True)]
    return {
        f"{first}_s": median(times[first]),
        f"{second}_s": median(times[second]),
        "ratio": median(each),
        "ratios": each,
        f"{first}_times": times[first],
        f"{second}_times": times[second],
    }


def _entry_module(model: nn.Module) -> nn.Module:
    """The module every forward pass enters (ART's wrapper calls a Sequential's layers singly)."""
    if isinstance(model, nn.Sequential) and len(model):
        return model[0]
    return model


@contextlib.contextmanager
def forward_batches(model: nn.Module) -> Iterator[list[int]]:
    """Record the batch size (rows) of every forward pass through ``model`` inside the block."""
    sizes: list[int] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and torch.is_tensor(args[0]):
            sizes.append(int(args[0].shape[0]))

    handle = _entry_module(model).register_forward_hook(hook)
    try:
        yield sizes
    finally:
        handle.remove()


@contextlib.contextmanager
def count_forward_rows(model: nn.Module) -> Iterator[list[int]]:
    """Count the images (batch rows) sent through ``model`` inside the block: ``counter[0]``
    (set when the block ends)."""
    counter = [0]
    with forward_batches(model) as sizes:
        try:
            yield counter
        finally:
            counter[0] = sum(sizes)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None or 0: as they are)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device`` (numpy arrays as float32)."""
    if not torch.is_tensor(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x.to(device)
