"""The Monte Carlo state of the one sample being certified, on disk, so that a stopped run
continues mid-sample instead of drawing the sample's noise again.

A smoothed model (:class:`defend.smooth.core.Smooth`) reduces the outputs of ``n`` noisy
copies of its input, chunk by chunk, to a state: vote counts (classification), per-pixel
votes (segmentation), candidate outputs or distances (center smoothing). The noise of block
``b`` depends only on ``(seed, phase, b)``, so a state saved after ``k`` blocks and continued
from block ``k`` is exactly the state of an uninterrupted run, whatever the batch size.

The file holds one sample's phases: ``{"key": str, "phases": {"phase:n": {"blocks": k,
"state": tensor}}}``, written atomically (:func:`defend.io.atomic_write`) at most every
``every`` seconds and at the end of each phase, read with ``weights_only=True``. ``key`` names
the run's settings and the sample's seed: a file of another key is ignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from defend.io import atomic_write


class DrawCheckpoint:
    """The saved Monte Carlo state of one sample (module doc).

    Args:
        path: the file (``certificates.sample.pt`` beside certify's partial log).
        every: seconds between two writes within a phase (0: after every chunk).
    """

    def __init__(self, path: str | os.PathLike, every: float = 30.0) -> None:
        self.path, self.every = Path(path), every
        self.key: str | None = None
        self.phases: dict[str, dict[str, Any]] = {}
        self._written = time.monotonic()

    def begin(self, settings: dict[str, Any], seed: int) -> None:
        """Start the sample of ``seed`` under ``settings``: the saved phases if the file
        holds this sample of these settings, none otherwise."""
        self.key = json.dumps({"settings": settings, "seed": seed}, sort_keys=True)
        self.phases = {}
        if self.path.exists():
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if saved.get("key") == self.key:
                self.phases = saved["phases"]
        self._written = time.monotonic()

    def resume(self, phase: int, n: int) -> tuple[int, torch.Tensor | None]:
        """``(blocks done, state)`` of ``phase`` with ``n`` draws; ``(0, None)`` if none."""
        saved = self.phases.get(f"{phase}:{n}")
        return (0, None) if saved is None else (saved["blocks"], saved["state"])

    def save(self, phase: int, n: int, blocks: int, state: torch.Tensor, done: bool) -> None:
        """Record ``state`` after ``blocks`` blocks of ``phase``; write the file when the
        phase is ``done`` or ``every`` seconds have passed since the last write."""
        if self.key is None:
            return
        self.phases[f"{phase}:{n}"] = {"blocks": blocks, "state": state.detach().cpu()}
        if done or time.monotonic() - self._written >= self.every:
            saved = {"key": self.key, "phases": self.phases}
            atomic_write(self.path, lambda p: torch.save(saved, p))
            self._written = time.monotonic()

    def clear(self) -> None:
        """The sample is finished (its row written): forget its phases, remove the file."""
        self.key, self.phases = None, {}
        self.path.unlink(missing_ok=True)
