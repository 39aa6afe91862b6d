"""Training: one loop (:func:`fit`) for all tasks; what a step minimises is an Objective."""

from defend.train.build import default_schedule, train_model
from defend.train.loop import TrainConfig, best_path, evaluate, fit
from defend.train.objectives import Objective, OnInputs, Standard, linf_pgd, pgd_objective

__all__ = [
    "TrainConfig",
    "best_path",
    "default_schedule",
    "evaluate",
    "fit",
    "linf_pgd",
    "pgd_objective",
    "Objective",
    "OnInputs",
    "Standard",
    "train_model",
]
