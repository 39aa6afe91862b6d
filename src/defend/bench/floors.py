"""Each attack's wall time over its *floor*: the model time the attack cannot avoid.

* :class:`~defend.attacks.HallucinationAttack` (on a U-Net and a VarNet) and
  :class:`~defend.attacks.SegmentationFGSM` in PGD mode: the floor is ``iterations x`` one
  forward + backward of the same model on the same batch, the input ``requires_grad``, with
  the attack's own loss towards the attack's own target: the weighted MSE to
  :meth:`HallucinationAttack.goal`'s target image, :meth:`SegmentationFGSM.attack_loss` to
  :meth:`SegmentationFGSM.attack_target`. It runs on the attack's output (an iterate of the
  attack: the backward's cost depends a little on the values, e.g. subnormal floats around the
  clean input).
* :class:`~defend.attacks.DGDE`: the same number of classifier forward passes as the attack
  made (its report's ``queries``) in batches of the size it uses (``population x`` images per
  batch), without gradients, on its output images.

The attack and its floor run interleaved after a warm-up
(:func:`defend.bench.timing.interleaved`); a row reports the median over repeats of attack
time / floor time, each pair measured back to back, against :data:`FLOOR_GOAL`. The model is
called the way the attacks call it (:func:`defend.attacks.torch_attack.torch_forward`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from defend.attacks import DGDE, HallucinationAttack, SegmentationFGSM
from defend.attacks.torch_attack import estimator_device, torch_forward
from defend.bench.timing import (
    as_tensor,
    forward_batches,
    interleaved,
    paired,
    timed,
)
from defend.errors import DefendError

#: an attack's wall time over its floor of pure model time, at most
FLOOR_GOAL = 1.15
#: DGDE's settings in the benchmark beyond its own defaults (none: the defaults are benchmarked)
BENCH_DGDE: dict = {}
#: images DGDE attacks together in the benchmark (at most the number of images)
BENCH_DGDE_BATCH = 8

Forward = Callable[[torch.Tensor], torch.Tensor]


def floor_row(
    name: str,
    times: dict[str, list[float]],
    floor: str,
    params: dict[str, Any],
    goal: float = FLOOR_GOAL,
) -> dict[str, Any]:
    """One row of the floor table from interleaved ``times["attack"]`` and ``times["floor"]``.

    Args:
        name: the attack's name in the table.
        times: seconds of each repeat, equally many for both.
        floor: what the floor runs, in words.
        params: the attack's settings.
    """
    row = {"name": name, **paired(times, "attack", "floor")}
    return {
        **row,
        "goal": goal,
        "met": bool(row["ratio"] <= goal),
        "floor": floor,
        "params": params,
    }


def model_forward(estimator: Any) -> Forward:
    """The model as the gradient attacks call it (:func:`torch_forward`): the floor's forward.

    Raises:
        DefendError: the estimator has no torch path to differentiate (a black box).
    """
    forward = torch_forward(estimator)
    if forward is None:
        raise DefendError(f"{type(estimator).__name__}: no torch model to time a floor on")
    return forward


def gradient_floor(
    loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iterations: int
) -> Callable[[], None]:
    """The floor of a gradient attack: ``iterations x`` (per-sample ``loss(x)`` (B,), backward
    to ``x`` (B, ...), which requires grad). Runs one forward + backward now, as a warm-up."""

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(loss(xg).sum(), xg)

    def floor() -> None:
        for _ in range(iterations):
            forward_backward()

    forward_backward()
    return floor


def hallucination_vs_floor(
    estimator: Any,
    x: np.ndarray | torch.Tensor,
    *,
    max_iter: int = 20,
    repeats: int = 3,
    name: str = "hallucination",
    **params: Any,
) -> dict[str, Any]:
    """HallucinationAttack (fixed ``max_iter``, ``patience=0``) against ``max_iter`` fwd+bwd.

    Args:
        estimator: a ``ReconEstimator`` (any ``defend`` k-space -> image estimator).
        x: masked k-space (N, coils, H, W, 2): one batch.
        params: further :class:`HallucinationAttack` arguments.

    Returns:
        a :func:`floor_row` with the attack's mean ``strength``.
    """
    device = estimator_device(estimator)
    xt = as_tensor(x, device)
    params = {"patience": 0, **params, "max_iter": max_iter, "batch_size": len(xt)}
    attack = HallucinationAttack(estimator, **params)
    forward = model_forward(estimator)
    with torch.no_grad():
        _, _, target, weight = attack.goal(forward(xt))
    x_floor = attack.generate(xt).detach()  # warm-up; the floor runs on its output

    def loss(xg: torch.Tensor) -> torch.Tensor:  # the attack's loss: weighted MSE to the target
        return attack.attack_loss(forward(xg), target, weight)

    floor = gradient_floor(loss, x_floor, max_iter)
    times = interleaved({"attack": lambda: attack.generate(xt), "floor": floor}, repeats, device)
    definition = (
        f"{max_iter} x (est.forward(x) + backward of the weighted MSE to the target image, "
        f"x requires_grad) on the same batch of {len(xt)} (at the attack's output)"
    )
    row = floor_row(name, times, definition, {k: getattr(attack, k) for k in params})
    row["strength"] = float(np.mean(attack.report["strength"]))
    return row


def seg_pgd_vs_floor(
    estimator: Any,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor | None = None,
    *,
    max_iter: int = 20,
    repeats: int = 3,
    eps: float = 0.008,
    name: str = "seg-fgsm (PGD)",
) -> dict[str, Any]:
    """SegmentationFGSM in PGD mode (BCE, ``max_iter`` steps) against ``max_iter`` fwd+bwd.

    Args:
        estimator: a ``SegEstimator`` (images (N, C, H, W) -> logits (N, K, H, W)).
        x: images (N, C, H, W): one batch.
        y: masks (N, K, H, W), or None to attack the model's own prediction.
    """
    device = estimator_device(estimator)
    xt = as_tensor(x, device)
    yt = None if y is None else as_tensor(y, device)
    params = {"eps": eps, "loss": "bce", "max_iter": max_iter, "batch_size": len(xt)}
    attack = SegmentationFGSM(estimator, **params)
    forward = model_forward(estimator)
    with torch.no_grad():
        target = attack.attack_target(forward(xt).float(), yt)
    x_floor = attack.generate(xt, yt).detach()  # warm-up; the floor runs on its output
    floor = gradient_floor(lambda xg: attack.attack_loss(forward(xg), target), x_floor, max_iter)
    times = interleaved(
        {"attack": lambda: attack.generate(xt, yt), "floor": floor}, repeats, device
    )
    definition = (
        f"{max_iter} x (est.forward(x) + {attack.loss.upper()} + backward, x requires_grad) on "
        f"the same batch of {len(xt)} (at the attack's output)"
    )
    return floor_row(name, times, definition, params)


def bench_dgde(
    classifier: Any, n: int, dgde_params: dict[str, Any] | None = None
) -> tuple[DGDE, dict[str, Any]]:
    """DGDE with the benchmark's settings: :data:`BENCH_DGDE` (those DGDE still takes), batch
    :data:`BENCH_DGDE_BATCH` (at most ``n``), then ``dgde_params``; DGDE's defaults for the rest.

    Returns:
        ``(attack, the arguments given)``.
    """
    own = {k: v for k, v in BENCH_DGDE.items() if k in DGDE.attack_params}
    params = {**own, "batch_size": BENCH_DGDE_BATCH, **(dgde_params or {})}
    params["batch_size"] = min(int(params["batch_size"]), n)
    return DGDE(classifier, **params), params


@dataclass
class DGDETiming:
    """DGDE timed against its floor one repeat at a time, so that other work can interleave.

    Args:
        attack: the DGDE attack (:func:`bench_dgde`).
        params: the arguments it was built with (reported, and reused for the warm-up).
        x: images (N, C, H, W) on the classifier's device, attacked with ``y=None``.
    """

    attack: DGDE
    params: dict[str, Any]
    x: torch.Tensor
    times: dict[str, list[float]] = field(default_factory=lambda: {"attack": [], "floor": []})
    x_adv: np.ndarray | None = None
    forwards: int = 0
    batches: list[int] = field(default_factory=list)
    report: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def per_batch(self) -> int:
        """Images in one of DGDE's full forward batches: population x images per batch."""
        return self.attack.population * self.attack.batch_size

    @property
    def device(self) -> torch.device:
        return estimator_device(self.attack.estimator)

    @torch.no_grad()
    def _floor(self, batches: list[int], images: torch.Tensor) -> None:
        """One forward pass per entry of ``batches``, of that many rows made of ``images``."""
        forward = self.attack.probabilities  # exactly what DGDE sends a batch through
        most = max(batches, default=1)
        rows = images.repeat((most + len(images) - 1) // len(images), 1, 1, 1)[:most]
        for size in batches:
            forward(rows[:size])

    def warm_up(self) -> None:
        """A short DGDE run (2 generations) and one full floor batch."""
        DGDE(self.attack.estimator, **{**self.params, "max_iter": 2}).generate(self.x)
        self._floor([self.per_batch], self.x)

    def run_attack(self) -> None:
        """Time DGDE once; keep its output, its report and the images it sent to the model."""
        with forward_batches(self.attack.estimator.model) as batches:
            seconds, x_adv = timed(lambda: self.attack.generate(self.x), self.device)
        self.times["attack"].append(seconds)
        self.x_adv = x_adv.cpu().numpy()
        self.forwards = sum(batches)
        self.batches = list(batches)
        self.report = {k: v.copy() for k, v in self.attack.report.items()}

    def run_floor(self) -> None:
        """Time the floor once: the last run's forward passes, batch for batch, on its output."""
        images = torch.as_tensor(self.x_adv, device=self.device)
        self.times["floor"].append(timed(lambda: self._floor(self.batches, images), self.device)[0])

    def repeat(self, r: int) -> None:
        """Repeat ``r``: DGDE then the floor, the order reversed every other repeat (the first
        runs DGDE first: the floor needs its query count, the same in every seeded repeat)."""
        steps = (self.run_attack, self.run_floor)
        for step in steps if r % 2 == 0 else steps[::-1]:
            step()

    def floor_row(self) -> dict[str, Any]:
        """The floor table's row (:func:`floor_row`) over the repeats run so far."""
        n, attack = len(self.x), self.attack
        definition = (
            f"{self.forwards} classifier forward passes (the report's queries, summed over "
            f"the {n} images: {int(self.report['queries'].sum())}) in the {len(self.batches)} "
            "batches of the sizes the attack sent, no grad: pure model time"
        )
        params = {k: getattr(attack, k) for k in self.params}
        return floor_row("dgde", self.times, definition, params)
