"""A toy task, added the way docs/design.md's recipe "Add a task" says: lesion screening, a
classification task on the built-in data whose checkpoints are chosen by their sensitivity
(the share of lesion images called lesion) rather than accuracy.

Importing this module registers it; ``DEFEND_PLUGINS=toy_screen`` (with this folder on the
Python path) makes it ``defend train toy-screen`` and a matrix section ``[toy-screen]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from defend.tasks import Batch, ClsTask, register_task


class Screening(ClsTask):
    """Lesion screening: cross-entropy on the built-in ``cls`` data, validated by accuracy
    and sensitivity (recall of class 1, the built-in data's ``lesion``)."""

    name = "toy-screen"
    data_folder = "cls"  # reads DATA/cls/<split>, the classification data
    monitor = "sensitivity"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """``accuracy`` and ``sensitivity`` (NaN without a lesion image) over the batches."""
        predicted, labels = [], []
        for batch in batches:
            predicted.append(self.forward(model, batch).argmax(1).cpu())
            labels.append(batch["target"].cpu())
        p, y = torch.cat(predicted), torch.cat(labels)
        sick = y == 1
        sensitivity = (p[sick] == 1).float().mean() if sick.any() else torch.tensor(float("nan"))
        return {"accuracy": float((p == y).float().mean()), "sensitivity": float(sensitivity)}


register_task(Screening)
