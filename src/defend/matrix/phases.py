"""Where a matrix cell's time goes: seconds per phase, measured as the cell runs.

A cell runs inside :func:`recording`; the work it calls marks itself with ``with
phase(name):``. A phase's seconds are its own: a phase opened inside another is taken out of
the outer one's, so the phases of a cell add up to at most its wall time, and the rest is
``bookkeeping`` (examples and records written, arrays moved). Outside :func:`recording`
:func:`phase` costs nothing and records nothing.

The phases a cell records (:data:`PHASES`):

* ``data``: its samples read from the HDF5 files;
* ``models``: checkpoints loaded (model, denoiser, detector);
* ``attack``: the attacks run, adaptive ones included (an attack read from the cache of
  :mod:`defend.matrix.reuse` costs only its reading);
* ``smoothing``: the smoothed model's Monte Carlo predictions and certificates;
* ``outputs``: the undefended model's outputs of clean and attacked inputs;
* ``detection``: the detector's scores;
* ``judging``: the outcomes measured (quality, hallucination strength, baselines).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

PHASES = ("data", "models", "attack", "smoothing", "outputs", "detection", "judging")
#: the rest of a cell's wall time
REST = "bookkeeping"

_seconds: dict[str, float] | None = None
#: per open phase, the seconds of the phases opened inside it
_inner: list[float] = []

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Record the phases of the work inside: yields ``{phase: seconds}``, filled as it runs
    (every :data:`PHASES` present, 0.0 where unused)."""
    global _seconds
    outer, outer_inner = _seconds, list(_inner)
    _seconds, _inner[:] = dict.fromkeys(PHASES, 0.0), []
    try:
        yield _seconds
    finally:
        _seconds, _inner[:] = outer, outer_inner


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the seconds inside as ``name``'s (less those of phases opened inside)."""
    if _seconds is None:
        yield
        return
    start = time.perf_counter()
    _inner.append(0.0)
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        inner = _inner.pop()
        _seconds[name] = _seconds.get(name, 0.0) + elapsed - inner
        if _inner:
            _inner[-1] += elapsed


def timed(name: str) -> Callable[[F], F]:
    """A decorator: each call of the function counted as phase ``name``."""

    def wrap(function: F) -> F:
        @wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def with_rest(seconds: dict[str, float], wall: float) -> dict[str, float]:
    """``seconds`` rounded to ms, with :data:`REST`: the wall time no phase took."""
    out = {k: round(v, 3) for k, v in seconds.items()}
    out[REST] = round(max(0.0, wall - sum(seconds.values())), 3)
    return out
