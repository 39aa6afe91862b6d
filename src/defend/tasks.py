"""The task registry: what differs between reconstruction, segmentation and classification.

A :class:`Task` holds a task's forward pass, its training loss (per sample, the one
definition used by training, by the estimators and by attacks on "the training loss"), its
validation metrics and its ``kind``: what it outputs (``recon`` an image from k-space,
``seg`` per-pixel masks, ``cls`` a label), which decides how the rest of ``defend`` reads
its data, builds its models and estimators, attacks, smooths and scores it (each asks
:func:`kind_of`). :data:`TASKS` is the one list of tasks: the three built in and those
:func:`register_task` adds (docs/design.md, recipe "Add a task"). Batches are dicts (see
``docs/design.md``): ``batch["input"]`` is what a model and an attack see.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defend.errors import DefendError
from defend.kspace import zero_filled
from defend.plugins import load_plugins

Batch = dict


class Task:
    """Base class: one task's forward pass, loss and validation metrics."""

    name: str = ""
    #: what the task outputs: ``recon``, ``seg`` or ``cls`` (:data:`KINDS`)
    kind: str = ""
    #: the data set's folder below a data folder (``DATA/<folder>/<split>``; recon reads
    #: ``DATA/<split>``); "" for the kind's own (``seg``, ``cls``)
    data_folder: str = ""
    #: validation metric that selects the best checkpoint (higher is better)
    monitor: str = ""
    #: whether bf16 autocast is safe for this task's model (FFTs are not)
    amp_safe: bool = True
    #: the name of the training loss (stored in checkpoints)
    loss_name: str = ""

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["input"])

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample training losses (B,) of a batch's prediction; training minimises the mean."""
        raise NotImplementedError

    def divergence(self, pred: torch.Tensor, reference: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample distance (B,) of a prediction from a reference prediction of the same
        inputs' clean versions (TRADES' consistency term), >= 0 and 0 where they agree."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Validation metrics over batches already on the model's device."""
        raise NotImplementedError


class ReconTask(Task):
    """MRI reconstruction from masked k-space.

    Loss: L1 between prediction and target, both divided by the volume's ``max_value``, so
    that raw fastMRI units (~1e-4) and the synthetic unit-scale data train alike.
    Metrics: fastMRI's SSIM / PSNR / NMSE per volume (``fname``), for the model and for the
    zero-filled baseline.
    """

    name = "recon"
    kind = "recon"
    monitor = "ssim"
    amp_safe = False
    loss_name = "l1"

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["input"], batch["mask"])

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """L1 of pred (B, h, w) against ``batch["target"]`` (B, h, w), both over the volume's
        ``max_value``, mean over pixels: (B,)."""
        scale = batch["max_value"].to(pred.dtype).view(-1, 1, 1)
        error = F.l1_loss(pred / scale, batch["target"] / scale, reduction="none")
        return error.flatten(1).mean(1)

    def divergence(self, pred: torch.Tensor, reference: torch.Tensor, batch: Batch) -> torch.Tensor:
        """L1 between two reconstructions (B, h, w) over the volume's ``max_value``: (B,)."""
        return self.loss(pred, {**batch, "target": reference})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        from defend.metrics import recon_metrics  # fastmri + skimage: ~1 s, recon only

        volumes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for batch in batches:
            pred = self.forward(model, batch).float()
            target = batch["target"]
            zf = zero_filled(batch["input"] * batch["mask"], crop=tuple(target.shape[-2:]))
            for i, fname in enumerate(batch["fname"]):
                vol = volumes[fname]
                vol["slice"].append(int(batch["slice_num"][i]))
                vol["gt"].append(target[i].cpu().numpy())
                vol["pred"].append(pred[i].cpu().numpy())
                vol["zf"].append(zf[i].cpu().numpy())
        scores: dict[str, list[float]] = defaultdict(list)
        for vol in volumes.values():
            order = np.argsort(vol["slice"])
            gt = np.stack(vol["gt"])[order]
            for key, prefix in (("pred", ""), ("zf", "zf_")):
                for metric, value in recon_metrics(gt, np.stack(vol[key])[order]).items():
                    scores[prefix + metric].append(value)
        return {k: float(np.mean(v)) for k, v in scores.items()}


class SegTask(Task):
    """Multi-label segmentation with per-pixel sigmoid outputs.

    Loss: Wang & Xu's training loss, Dice + Focal (:func:`defend.losses.dicefocal_loss`,
    per image). Metrics: Dice and IoU at threshold 0.5 over (image, label) pairs with a
    non-empty ground truth, as Wang & Xu 2024 report them.
    """

    name = "seg"
    kind = "seg"
    monitor = "dice"
    #: the key of :data:`defend.losses.SEG_LOSSES` this task trains with
    loss_name = "dicefocal"

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Dice + Focal of logits (B, K, H, W) against masks ``batch["target"]`` (B, K, H, W):
        (B,)."""
        from defend.losses import seg_loss  # smp: seconds, seg only

        return seg_loss(self.loss_name, pred, batch["target"])

    def divergence(self, pred: torch.Tensor, reference: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-pixel Bernoulli KL(reference || pred) of logits (B, K, H, W), mean: (B,)."""
        p = torch.sigmoid(reference.float())
        kl = F.binary_cross_entropy_with_logits(
            pred.float(), p, reduction="none"
        ) - F.binary_cross_entropy_with_logits(reference.float(), p, reduction="none")
        return kl.flatten(1).mean(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        from defend.metrics import dice_iou  # fastmri + skimage: ~1 s, seg only

        dices, ious, losses = [], [], []
        for batch in batches:
            pred = self.forward(model, batch).float()
            losses.append(float(self.loss(pred, batch).mean()))
            dice, iou, nonempty = dice_iou(pred, batch["target"])
            dices.append(dice[nonempty])
            ious.append(iou[nonempty])
        dice_all, iou_all = torch.cat(dices), torch.cat(ious)
        return {
            "dice": float(dice_all.mean()) if dice_all.numel() else float("nan"),
            "iou": float(iou_all.mean()) if iou_all.numel() else float("nan"),
            "loss": float(np.mean(losses)),
        }


class ClsTask(Task):
    """Image classification. Loss: cross-entropy. Metrics: accuracy and AUROC."""

    name = "cls"
    kind = "cls"
    monitor = "accuracy"
    loss_name = "cross_entropy"

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of logits (B, classes) against labels ``batch["target"]`` (B,): (B,)."""
        return F.cross_entropy(pred.float(), batch["target"], reduction="none")

    def divergence(self, pred: torch.Tensor, reference: torch.Tensor, batch: Batch) -> torch.Tensor:
        """KL(softmax(reference) || softmax(pred)) of logits (B, classes): (B,)."""
        log_p = torch.log_softmax(reference.float(), dim=1)
        log_q = torch.log_softmax(pred.float(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score  # sklearn: ~1 s, cls only

        probs, labels = [], []
        for batch in batches:
            probs.append(torch.softmax(self.forward(model, batch).float(), dim=1).cpu())
            labels.append(batch["target"].cpu())
        p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
        metrics = {"accuracy": float((p.argmax(1) == y).mean())}
        if len(np.unique(y)) > 1:
            if p.shape[1] == 2:
                metrics["auroc"] = float(roc_auc_score(y, p[:, 1]))
            else:
                metrics["auroc"] = float(
                    roc_auc_score(y, p, multi_class="ovr", labels=list(range(p.shape[1])))
                )
        return metrics


#: what a task may output (:attr:`Task.kind`)
KINDS = ("recon", "seg", "cls")
#: the task registry: name -> :class:`Task` (the built-in three and :func:`register_task`'s)
TASKS: dict[str, type[Task]] = {"recon": ReconTask, "seg": SegTask, "cls": ClsTask}


def register_task(task: type[Task]) -> None:
    """Add ``task`` (a :class:`Task` subclass with a new ``name`` and a ``kind`` of
    :data:`KINDS`) to :data:`TASKS`: ``defend train --task NAME``, its checkpoints, the
    attacks and defences of its kind, and a matrix section ``[NAME]`` then take it.

    Raises:
        DefendError: the name is taken by another task, or the kind is not one of KINDS.
    """
    if not (isinstance(task, type) and issubclass(task, Task)) or not task.name:
        raise DefendError(f"register_task: {task!r} is not a named Task subclass")
    if task.kind not in KINDS:
        raise DefendError(f"register_task: kind must be one of {', '.join(KINDS)}, "
                          f"got {task.kind!r}")  # fmt: skip
    known = TASKS.get(task.name)
    if known is not None and known is not task:
        raise DefendError(f"register_task: the name '{task.name}' is taken")
    TASKS[task.name] = task


def check_task(name: str) -> str:
    """``name`` if it is a registered task, else a one-line :class:`DefendError`."""
    if name not in TASKS:
        load_plugins()  # a plugin's task, first asked for in this process
    if name not in TASKS:
        raise DefendError(f"unknown task '{name}': choose one of {', '.join(TASKS)}")
    return name


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name`` (``recon``, ``seg``, ``cls`` or a registered one)."""
    return TASKS[check_task(name)]()


def kind_of(name: str) -> str:
    """What task ``name`` outputs: ``recon``, ``seg`` or ``cls`` (:attr:`Task.kind`)."""
    return TASKS[check_task(name)].kind


def data_folder(name: str) -> str:
    """The folder task ``name``'s data lies in below a data folder (:attr:`Task.data_folder`,
    by default its kind's)."""
    task = TASKS[check_task(name)]
    return task.data_folder or task.kind
