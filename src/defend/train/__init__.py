"""Training: one loop (:func:`fit`) for all tasks, with a per-batch adversary hook."""

from defend.train.build import default_schedule, train_model
from defend.train.loop import Adversary, TrainConfig, best_path, evaluate, fit

__all__ = [
    "Adversary",
    "TrainConfig",
    "best_path",
    "default_schedule",
    "evaluate",
    "fit",
    "train_model",
]
