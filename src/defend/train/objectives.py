"""Training objectives: what one training step minimises, per sample.

The training loop (:func:`defend.train.loop.fit`) is one loop for every kind of training; an
:class:`Objective` is the seam where they differ. Each batch, the loop calls
``objective.loss(task, model, batch, epoch)`` with the model in training mode and minimises the
mean of the returned per-sample losses. An objective may make its own training inputs first
(an attack, run with the model in eval mode as adversarial training requires) and may combine
several forward passes in one loss (TRADES: the clean and the adversarial output).

* :class:`Standard`: the task's loss on the batch as given.
* :class:`OnInputs`: the task's loss on inputs made per batch by ``make_inputs(model, batch)``
  with the model in eval mode (PGD adversarial training plugs in here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from defend.estimators.base import model_mode
from defend.tasks import Batch, Task

#: ``make_inputs(model, batch) -> inputs``: new ``batch["input"]`` of the same shape
MakeInputs = Callable[[nn.Module, Batch], torch.Tensor]


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
    """The task's loss on inputs that ``make_inputs(model, batch)`` makes for each batch.

    ``make_inputs`` runs with the model in eval mode (batch norm statistics frozen, dropout
    off), as adversarial training requires; the loss then runs in training mode.

    Args:
        make_inputs: ``(model, batch) -> inputs`` of the shape of ``batch["input"]``.
        name: the objective's name in the run configuration.
        settings: its other settings there (e.g. eps, steps).
    """

    def __init__(self, make_inputs: MakeInputs, name: str = "inputs", **settings: Any) -> None:
        self.make_inputs = make_inputs
        self.name = name
        self.settings = settings

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        with model_mode(model, training=False):
            inputs = self.make_inputs(model, batch)
        return task.loss(task.forward(model, {**batch, "input": inputs}), batch)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}
