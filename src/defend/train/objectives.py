"""Training objectives: what one training step minimises, per sample.

The training loop (:func:`defend.train.loop.fit`) is one loop for every kind of training; an
:class:`Objective` is the seam where they differ. Each batch, the loop calls
``objective.loss(task, model, batch, epoch)`` with the model in training mode and minimises the
mean of the returned per-sample losses. An objective may make its own training inputs first
(an attack, run with the model in eval mode as adversarial training requires) and may combine
several forward passes in one loss (TRADES: the clean and the adversarial output).

* :class:`Standard`: the task's loss on the batch as given.
* :class:`OnInputs`: the task's loss on inputs made per batch by
  ``make_inputs(task, model, batch)`` with the model in eval mode.
* :func:`pgd_objective`: Madry et al.'s PGD adversarial training on inputs in a box
  (images in [0, 1]): l-inf PGD with a random start, maximising the task's training loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from defend.estimators.base import model_mode
from defend.tasks import Batch, Task

#: ``make_inputs(task, model, batch) -> inputs``: new ``batch["input"]`` of the same shape
MakeInputs = Callable[[Task, nn.Module, Batch], torch.Tensor]


class Objective:
    """What a training step minimises; the default is the task's own loss (standard training).

    Subclasses override :meth:`loss` and :meth:`config`.
    """

    name = "standard"

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """Per-sample training losses ``(B,)`` of one batch (the model in training mode).

        Args:
            task: the task (forward pass and loss).
            model: the model being trained.
            batch: the batch on the model's device (``docs/design.md``).
            epoch: the 0-based epoch (for warm-ups).
        """
        return task.loss(task.forward(model, batch), batch)

    def config(self) -> dict[str, Any]:
        """The settings that identify this objective in a checkpoint's run configuration."""
        return {"name": self.name}


class Standard(Objective):
    """Standard training: the task's loss on the batch as given."""


class OnInputs(Objective):
    """The task's loss on inputs that ``make_inputs(task, model, batch)`` makes for each batch.

    ``make_inputs`` runs with the model in eval mode (batch norm statistics frozen, dropout
    off), as adversarial training requires; the loss then runs in training mode.

    Args:
        make_inputs: ``(task, model, batch) -> inputs`` of the shape of ``batch["input"]``.
        name: the objective's name in the run configuration.
        settings: its other settings there (e.g. eps, steps).
    """

    def __init__(self, make_inputs: MakeInputs, name: str = "inputs", **settings: Any) -> None:
        self.make_inputs = make_inputs
        self.name = name
        self.settings = settings

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        with model_mode(model, training=False):
            inputs = self.make_inputs(task, model, batch)
        return task.loss(task.forward(model, {**batch, "input": inputs}), batch)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}


def linf_pgd(
    task: Task,
    model: nn.Module,
    batch: Batch,
    eps: float,
    steps: int,
    step: float,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """l-inf PGD on ``batch["input"]`` maximising the task's per-sample training loss.

    Uniform random start in the eps-box, ``steps`` signed-gradient ascent steps of size
    ``step``, each projected onto the eps-box around the clean input and onto ``clip``.
    Random draws come from torch's global generator, which the training loop seeds per epoch.

    Args:
        task, model, batch: as :meth:`Objective.loss`; ``batch["input"]`` (B, ...) e.g.
            images (B, C, H, W) in [0, 1].
        eps: the l-inf budget, in input units (e.g. 8 / 255 of the [0, 1] range).
        steps: ascent steps (>= 1). step: the step size, in input units.
        clip: the valid input range, or None.

    Returns:
        The adversarial inputs, detached, shape of ``batch["input"]``.
    """
    clean = batch["input"].detach()
    x = clean + torch.empty_like(clean).uniform_(-eps, eps)
    for _ in range(steps):
        x = x.clamp(*clip) if clip is not None else x
        x.requires_grad_(True)
        loss = task.loss(task.forward(model, {**batch, "input": x}), batch).sum()
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach() + step * grad.sign()
        x = torch.minimum(torch.maximum(x, clean - eps), clean + eps)
    return (x.clamp(*clip) if clip is not None else x).detach()


def pgd_objective(
    eps: float,
    steps: int = 7,
    step: float | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> OnInputs:
    """Madry et al. PGD adversarial training: the task's loss on :func:`linf_pgd` inputs.

    Args:
        eps: l-inf budget in input units. steps: PGD steps (Madry: 7-10).
        step: step size (default ``2.5 * eps / steps``, so the walk can cross the box).
        clip: the valid input range.
    """
    if not 0 < eps < float("inf"):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    size = 2.5 * eps / steps if step is None else step

    def make_inputs(task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        return linf_pgd(task, model, batch, eps, steps, size, clip)

    return OnInputs(make_inputs, name="pgd", eps=eps, steps=steps, step=size)
