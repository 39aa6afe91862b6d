"""The one training loop shared by reconstruction, segmentation and classification.

``fit`` trains any model on any :class:`~defend.tasks.Task`, validates every epoch,
and writes an atomic checkpoint after each one, so a run that is interrupted resumes where
it stopped and gives the same numbers as one that was not. Adversarial training plugs in as
``adversary(model, batch) -> batch``: a per-batch step that replaces ``batch["input"]``.
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

from defend.device import autocast, pick_device
from defend.errors import CheckpointError, DefendError
from defend.io import load_checkpoint, save_checkpoint
from defend.tasks import Batch, Task

Adversary = Callable[[nn.Module, Batch], Batch]


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
        if self.epochs < 1:
            raise DefendError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise DefendError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise DefendError(f"--lr must be > 0, got {self.lr}")


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
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
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


def fit(
    task: Task,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    out: Path | None = None,
    *,
    meta: dict[str, Any] | None = None,
    adversary: Adversary | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs and return the per-epoch history.

    Args:
        task: forward pass, loss and metrics of the task.
        model: the model to train (moved to the chosen device).
        train_set / val_set: datasets of sample dicts (``docs/design.md``).
        config: optimisation settings.
        out: checkpoint path, rewritten atomically after every epoch; the best epoch by
            ``task.monitor`` is also kept at :func:`best_path`. ``None`` writes nothing.
        meta: stored in the checkpoint beside the weights: ``model_config`` (to rebuild the
            model) and ``data`` (input/target shapes, acquisition, classes).
        adversary: optional per-batch step ``adversary(model, batch) -> batch`` run with the
            model in eval mode before each training step (adversarial training).
        resume: continue from ``out`` if it exists (same task and model config required).
        log: where the per-epoch summary lines go.
    """
    meta = dict(meta or {})
    device = pick_device(config.device)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    start = 0
    if out is not None and out.exists() and resume:
        ckpt = load_checkpoint(out, task.name)
        if ckpt.get("model_config") != meta.get("model_config"):
            raise CheckpointError(
                f"{out}: holds a run with another model config ({ckpt.get('model_config')}); "
                "pass --no-resume to start over or choose another --out"
            )
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, history, best = ckpt["epoch"], ckpt["history"], ckpt.get("best")
        if start >= config.epochs:
            log(f"{out}: already trained for {start} epochs; nothing to do")
            return history
        log(f"{out}: resuming after epoch {start}")

    amp = config.amp and task.amp_safe
    for epoch in range(start, config.epochs):
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)  # masks, dropout, noise: the same with or without resume
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.lr, epoch, config.epochs)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch_seed),
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        model.train()
        total, steps = torch.zeros((), device=device), 0
        bar = tqdm(
            loader,
            desc=f"{task.name} epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
        )
        for batch in bar:
            batch = to_device(batch, device)
            if adversary is not None:
                model.eval()
                batch = adversary(model, batch)
                model.train()
            with autocast(device, amp):
                pred = task.forward(model, batch)
            loss = task.loss(pred, batch).mean()
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
        metrics = evaluate(task, model, val_set, config, device)
        record = {"epoch": epoch + 1, "train_loss": float(total) / max(steps, 1), **metrics}
        history.append(record)
        improved = best is None or _rank(metrics[task.monitor]) > _rank(best[task.monitor])
        if improved:
            best = record
        if out is not None:
            ckpt = {
                "task": task.name,
                **meta,
                "train_config": asdict(config),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "epoch": epoch + 1,
                "metrics": metrics,
                "history": history,
                "best": best,
            }
            if improved:
                save_checkpoint(best_path(out), ckpt)
            save_checkpoint(out, {**ckpt, "optimizer": optimizer.state_dict()})
        log(
            f"epoch {epoch + 1}/{config.epochs}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
        )
    return history
