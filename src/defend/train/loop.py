"""The one training loop shared by reconstruction, segmentation and classification.

``fit`` trains any model on any :class:`~defend.tasks.Task`, validates every epoch,
and writes an atomic checkpoint after each one, so a run that is interrupted resumes where
it stopped and gives the same numbers as one that was not. What a step minimises is an
:class:`~defend.train.objectives.Objective` (standard training by default; adversarial
training makes its own inputs per batch), so every kind of training is this one loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from defend.data.batching import shape_loader
from defend.device import autocast, pick_device
from defend.errors import CheckpointError, DefendError
from defend.io import load_checkpoint, save_checkpoint
from defend.tasks import Batch, Task
from defend.train.objectives import Objective, Standard


@dataclass
class TrainConfig:
    """Optimisation settings; stored in every checkpoint."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str | None = None
    amp: bool = True
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise DefendError(f"--epochs must be >= 0 (0: evaluate only), got {self.epochs}")
        if self.batch_size < 1:
            raise DefendError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise DefendError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise DefendError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        if self.num_workers < 0:
            raise DefendError(f"--workers must be >= 0, got {self.num_workers}")


def best_path(out: Path) -> Path:
    """Where the best-validation checkpoint beside ``out`` is kept."""
    return out.with_name(f"{out.stem}.best{out.suffix}")


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch's tensors to ``device`` (non-blocking from pinned memory)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine-annealed learning rate at the start of ``epoch`` (0-based), stateless."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _rank(value: float) -> float:
    """A monitored metric for comparison: NaN (e.g. no non-empty mask yet) ranks lowest."""
    return value if math.isfinite(value) else -math.inf


def evaluate(
    task: Task, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``dataset`` (eval mode, no gradients)."""
    loader = shape_loader(
        dataset,
        config.batch_size,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    amp = config.amp and task.amp_safe

    def batches() -> Iterator[Batch]:
        for batch in loader:
            yield to_device(batch, device)

    model.eval()
    with torch.no_grad(), autocast(device, amp):
        return task.evaluate(model, batches())


#: the TrainConfig fields that change a run's numbers (a resume must keep them)
RUN_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "amp")


def run_config(config: TrainConfig, **settings: Any) -> dict[str, Any]:
    """What identifies a run: the optimisation settings that change its numbers, plus
    ``settings`` (data fingerprints, acquisition, weights, adversarial settings ...)."""
    return {**{k: getattr(config, k) for k in RUN_FIELDS}, **settings}


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lr 0.001 -> 0.003", ...]``: the keys whose values differ (nested dicts by key)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in config_differences(a, b)]
        elif a != b:
            out.append(f"{key} {_short(a)} -> {_short(b)}")
    return out


def _resume(
    out: Path,
    task: Task,
    meta: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, list[dict[str, float]], dict[str, float] | None]:
    """Load the run at ``out`` into model and optimizer; refuse one of another configuration.

    Returns:
        ``(epochs done, history, best record)``.
    """
    ckpt = load_checkpoint(out, task.name)
    if ckpt.get("model_config") != meta.get("model_config"):
        changed = config_differences(ckpt.get("model_config") or {}, meta.get("model_config") or {})
        raise CheckpointError(
            f"{out}: holds a run with another model config ({'; '.join(changed)}); "
            "pass --no-resume to start over or choose another --out"
        )
    if "run" not in ckpt:
        raise CheckpointError(
            f"{out}: holds a run without its configuration (an older defend); pass "
            "--no-resume to start over or choose another --out"
        )
    differences = config_differences(ckpt["run"], meta.get("run", {}))
    if differences:
        raise CheckpointError(
            f"{out}: holds a run with other settings ({'; '.join(differences)}); pass "
            "--no-resume to start over, or choose another --out (--weights OLD.pt to start "
            "from its weights)"
        )
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["epoch"], ckpt["history"], ckpt.get("best")


def _train_epoch(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    amp: bool,
    device: torch.device,
    bar: Any,
    epoch: int,
) -> float:
    """One pass over ``loader``; the mean training loss."""
    model.train()
    total, steps = torch.zeros((), device=device), 0
    for batch in bar:
        batch = to_device(batch, device)
        with autocast(device, amp):
            loss = objective.loss(task, model, batch, epoch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        steps += 1
        if steps % 10 == 0 or steps == len(loader):
            mean_loss = float(total) / steps
            if not math.isfinite(mean_loss):
                raise DefendError(
                    f"training diverged in epoch {epoch + 1} (loss {mean_loss}); lower --lr"
                )
            bar.set_postfix(loss=f"{mean_loss:.4f}")
    return float(total) / max(steps, 1)


def _epoch_loader(
    train_set: Dataset, config: TrainConfig, epoch_seed: int, device: torch.device
) -> DataLoader:
    """The shuffled training batches of one epoch (one shape per batch)."""
    if hasattr(train_set, "set_epoch"):  # random k-space masks, per sample
        train_set.set_epoch(epoch_seed)
    return shape_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        seed=epoch_seed,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )


def fit(
    task: Task,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    out: Path | None = None,
    *,
    meta: dict[str, Any] | None = None,
    objective: Objective | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs and return the per-epoch history.

    With ``config.epochs == 0`` the model is only evaluated: the checkpoint holds its
    validation metrics as epoch 0 (how given weights are imported without training).

    Args:
        task: forward pass, loss and metrics of the task.
        model: the model to train (moved to the chosen device).
        train_set / val_set: datasets of sample dicts (``docs/design.md``).
        config: optimisation settings.
        out: checkpoint path, rewritten atomically after every epoch; the best epoch by
            ``task.monitor`` is also kept at :func:`best_path`. ``None`` writes nothing.
        meta: stored in the checkpoint beside the weights: ``model_config`` (to rebuild the
            model), ``data`` (input/target shapes, acquisition, classes) and ``run`` (what
            identifies the run, :func:`run_config`; default: ``config``'s fields).
        objective: what each step minimises (:mod:`defend.train.objectives`; default
            standard training); its :meth:`~Objective.config` joins the run configuration.
        resume: continue from ``out`` if it exists; a run of another model config or
            ``run`` is refused with a one-line :class:`CheckpointError` naming the differences.
        log: where the per-epoch summary lines go.
    """
    objective = objective or Standard()
    meta = {"run": run_config(config), **(meta or {})}
    meta["run"] = {**meta["run"], "objective": objective.config()}
    device = pick_device(config.device)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    start = 0
    if out is not None and out.exists() and resume:
        start, history, best = _resume(out, task, meta, model, optimizer)
        if start >= config.epochs and history:
            log(f"{out}: already trained for {start} epochs; nothing to do")
            return history
        log(f"{out}: resuming after epoch {start}")
    if config.epochs == 0:
        record = {"epoch": 0, **evaluate(task, model, val_set, config, device)}
        _save(out, task, meta, config, model, optimizer, [record], record, True)
        log("epoch 0 (no training)  " + _format(record))
        return [record]

    amp = config.amp and task.amp_safe
    for epoch in range(start, config.epochs):
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)  # dropout, noise: the same with or without resume
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.lr, epoch, config.epochs)
        loader = _epoch_loader(train_set, config, epoch_seed, device)
        desc = f"{task.name} epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(loader, desc=desc, disable=not config.progress, leave=False)
        train_loss = _train_epoch(
            task, model, loader, optimizer, objective, amp, device, bar, epoch
        )
        metrics = evaluate(task, model, val_set, config, device)
        record = {"epoch": epoch + 1, "train_loss": train_loss, **metrics}
        history.append(record)
        improved = best is None or _rank(metrics[task.monitor]) > _rank(best[task.monitor])
        best = record if improved else best
        _save(out, task, meta, config, model, optimizer, history, best, improved)
        log(f"epoch {epoch + 1}/{config.epochs}  " + _format(record))
    return history


def _format(record: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")


def _save(
    out: Path | None,
    task: Task,
    meta: dict[str, Any],
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    best: dict[str, float] | None,
    improved: bool,
) -> None:
    """Write the checkpoint (and the best one, if this epoch improved) atomically."""
    if out is None:
        return
    last = history[-1]
    ckpt = {
        "task": task.name,
        **meta,
        "train_config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": last["epoch"],
        "metrics": {k: v for k, v in last.items() if k not in ("epoch", "train_loss")},
        "history": history,
        "best": best,
    }
    if improved:
        save_checkpoint(best_path(out), ckpt)
    save_checkpoint(out, {**ckpt, "optimizer": optimizer.state_dict()})
