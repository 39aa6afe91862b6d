"""Training: one loop (:func:`fit`) for all tasks, with a per-batch adversary hook."""

from defend.train.build import default_schedule, train_model
from defend.train.loop import Adversary, TrainConfig, best_path, evaluate, fit
from defend.train.tasks import ClsTask, ReconTask, SegTask, Task, get_task

__all__ = [
    "Adversary",
    "ClsTask",
    "ReconTask",
    "SegTask",
    "Task",
    "TrainConfig",
    "best_path",
    "default_schedule",
    "evaluate",
    "fit",
    "get_task",
    "train_model",
]
