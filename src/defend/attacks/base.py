"""The attack base shared by every ``defend`` attack.

:class:`TorchAttack` is an ART :class:`~art.attacks.EvasionAttack` that does the
bookkeeping once: numpy <-> torch at the ART boundary only (torch inputs stay on the
estimator's device), batching with an optional progress bar, a seeded generator so the same
seed gives the same result, and a per-sample report (``attack.report``) that the CLI writes
as CSV/JSON. A subclass implements :meth:`TorchAttack._generate_batch` on torch tensors.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from tqdm.auto import tqdm

from defend.errors import DefendError


def estimator_device(estimator: Any) -> torch.device:
    """The torch device an ART estimator computes on (CPU if it does not say)."""
    device = getattr(estimator, "device", None) or getattr(estimator, "_device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def differentiable(estimator: Any) -> bool:
    """Whether an estimator exposes a torch ``forward`` we can differentiate (defend's do)."""
    return hasattr(estimator, "forward") and isinstance(
        getattr(estimator, "model", None), torch.nn.Module
    )


def clip_range(estimator: Any, default: tuple[float, float] | None = None) -> tuple[float, float]:
    """The estimator's valid input range ``(lo, hi)``; ``default`` (or unbounded) if it has none."""
    clip = getattr(estimator, "clip_values", None)
    if clip is None:
        return default or (-float("inf"), float("inf"))
    return float(np.min(clip[0])), float(np.max(clip[1]))


class TorchAttack(EvasionAttack):
    """Base of the toolkit's attacks: batching, devices, seeding and per-sample reports.

    Args:
        estimator: the ART estimator to attack.
        batch_size: samples attacked together (one batched forward/backward per step).
        seed: seed of the attack's random generator; the same seed gives the same result.
        verbose: show a progress bar over batches.
    """

    attack_params = ["batch_size", "seed", "verbose"]

    def __init__(
        self, estimator: Any, batch_size: int = 16, seed: int = 0, verbose: bool = False
    ) -> None:
        super().__init__(estimator=estimator)
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self.report: dict[str, np.ndarray] = {}

    def _check_params(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DefendError(f"batch_size must be a positive integer, got {self.batch_size}")

    @property
    def device(self) -> torch.device:
        return estimator_device(self.estimator)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """Adversarial examples for ``x`` (numpy in, numpy out; torch in, torch out).

        Args:
            x: inputs in the estimator's format, e.g. masked k-space (N, coils, H, W, 2).
            y: per-attack targets (ground truth images, masks or labels); see the subclass.

        After the call, ``self.report`` maps metric names to (N,) arrays, one row a sample.
        """
        as_numpy = not torch.is_tensor(x)
        device = self.device
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if as_numpy else x).to(device)
        yt = None
        if y is not None:
            yt = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).to(device)
            if len(yt) != len(xt):
                raise DefendError(f"x has {len(xt)} samples but y has {len(yt)}")
        if len(xt) == 0:
            raise DefendError("x holds no samples")
        generator = torch.Generator(device=device).manual_seed(self.seed)
        outs: list[torch.Tensor] = []
        reports: list[dict[str, torch.Tensor]] = []
        starts = range(0, len(xt), self.batch_size)
        for start in tqdm(starts, desc=type(self).__name__, disable=not self.verbose):
            sl = slice(start, start + self.batch_size)
            x_adv, report = self._generate_batch(
                xt[sl], None if yt is None else yt[sl], generator, **kwargs
            )
            outs.append(x_adv.detach())
            reports.append({k: torch.as_tensor(v).detach().cpu() for k, v in report.items()})
        self.report = {
            k: torch.cat([r[k].reshape(-1) for r in reports]).numpy() for k in reports[0]
        }
        x_adv = torch.cat(outs)
        return x_adv.cpu().numpy() if as_numpy else x_adv

    def report_rows(self) -> list[dict[str, float]]:
        """``self.report`` as one dict per sample (for CSV / JSON)."""
        keys = list(self.report)
        n = len(next(iter(self.report.values()))) if keys else 0
        return [{k: self.report[k][i].item() for k in keys} for i in range(n)]

    @abc.abstractmethod
    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        generator: torch.Generator,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attack one batch on the estimator's device: ``(x_adv, per-sample report)``."""
