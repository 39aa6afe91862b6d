"""Training: one loop (:func:`fit`) for all tasks; what a step minimises is an Objective."""

from defend.train.from_folder import default_schedule, train_model
from defend.train.imported import import_model
from defend.train.loop import TrainConfig, best_path, evaluate, fit
from defend.train.methods import METHODS, make_objective
from defend.train.objectives import Adversarial, Objective, Standard

__all__ = [
    "METHODS",
    "Adversarial",
    "Objective",
    "Standard",
    "TrainConfig",
    "best_path",
    "default_schedule",
    "evaluate",
    "fit",
    "import_model",
    "make_objective",
    "train_model",
]
