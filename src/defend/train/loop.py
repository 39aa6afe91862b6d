"""The one training loop shared by reconstruction, segmentation and classification.

``fit`` trains any model on any :class:`~defend.tasks.Task`, validates every epoch,
and writes an atomic checkpoint after each one, so a run that is interrupted resumes where
it stopped and gives the same numbers as one that was not. What a step minimises is an
:class:`~defend.train.objectives.Objective` (standard training by default; adversarial
training makes its own inputs per batch), so every kind of training is this one loop.
Under ``torchrun`` the same loop trains in several processes with the numbers of one
(:mod:`defend.train.distributed`). What a resume must keep is :func:`run_config`
(:mod:`defend.train.resume` compares it); the guards that stop a run or keep an epoch from
being the best are :mod:`defend.train.guards`.
"""

from __future__ import annotations

import copy
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
from defend.device import autocast
from defend.errors import DefendError
from defend.io import save_checkpoint
from defend.tasks import Batch, Task
from defend.train import distributed
from defend.train.distributed import Share, World
from defend.train.guards import above_floor, collapse
from defend.train.objectives import Objective, Standard
from defend.train.resume import load_run


@dataclass
class TrainConfig:
    """Optimisation settings; stored in every checkpoint.

    ``amp``: bfloat16 autocast of the training steps on CUDA (for tasks whose models allow
    it, ``Task.amp_safe``), the training attacks included, as Wong et al. 2020 ("Fast is
    better than free") train in mixed precision; validation, robust validation included, is
    always in full precision (:func:`evaluate`).
    """

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
    task: Task,
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    objective: Objective | None = None,
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``dataset`` (eval mode, no gradients), and the
    ``objective``'s metrics under attack (``robust_*``; attacks take their own gradients).

    Always in full precision, whatever ``config.amp``: autocast is for training speed, and
    an attack under it follows bfloat16 gradients and is weaker (Carlini et al. 2019, "On
    Evaluating Adversarial Robustness": evaluate against the strongest attack), so the
    robust metrics that pick the best checkpoint would overstate robustness; the clean
    metrics are computed at the same precision as the robust ones beside them.
    """
    loader = shape_loader(
        dataset,
        config.batch_size,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )

    def batches() -> Iterator[Batch]:
        for batch in loader:
            yield to_device(batch, device)

    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, batches())
        if objective is not None:
            metrics.update(objective.robust_metrics(task, model, batches()))
    return metrics


#: the TrainConfig fields that change a run's numbers (a resume must keep them)
RUN_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "amp")


def run_config(config: TrainConfig, **settings: Any) -> dict[str, Any]:
    """What identifies a run: the optimisation settings that change its numbers, plus
    ``settings`` (data fingerprints, acquisition, weights, adversarial settings ...)."""
    return {**{k: getattr(config, k) for k in RUN_FIELDS}, **settings}


def _step_loss(losses: torch.Tensor, share: Share, world: World) -> torch.Tensor:
    """What one process minimises for its per-sample losses ``(n,)`` of a global batch:
    ``sum * world.size / total``, so that DistributedDataParallel's gradient average is
    the mean over the global batch (also for uneven shares); the mean for one process."""
    if world.size == 1:
        return losses.mean()
    return losses.sum() * (world.size / share.total)


def _train_epoch(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    amp: bool,
    world: World,
    bar: Any,
    epoch: int,
) -> float:
    """One pass over ``loader`` (this process's shares of the global batches; ``model`` the
    DistributedDataParallel wrapper for several processes); the mean training loss of the
    global batches."""
    model.train()
    device = world.device
    total, steps = torch.zeros((), device=device), 0
    shares = [Share.of(g, world) for g in loader.batch_sampler.global_sizes()]
    for batch, share in zip(bar, shares, strict=True):
        batch = to_device(batch, device)
        with distributed.batch_share(share), autocast(device, amp):
            loss = _step_loss(objective.loss(task, model, batch, epoch), share, world)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        steps += 1
        if steps % 10 == 0 or steps == len(loader):
            mean_loss = float(distributed.all_sum(total, world)) / world.size / steps
            if not math.isfinite(mean_loss):
                raise DefendError(
                    f"training diverged in epoch {epoch + 1} (loss {mean_loss}); lower --lr"
                )
            bar.set_postfix(loss=f"{mean_loss:.4f}")
    return float(distributed.all_sum(total, world)) / world.size / max(steps, 1)


def _epoch_loader(
    train_set: Dataset, config: TrainConfig, epoch_seed: int, world: World
) -> DataLoader:
    """This process's shuffled training batches of one epoch (one shape per batch; its
    share of each global batch of ``config.batch_size`` rows)."""
    if hasattr(train_set, "set_epoch"):  # random k-space masks, per sample
        train_set.set_epoch(epoch_seed)
    return shape_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        seed=epoch_seed,
        num_workers=config.num_workers,
        pin_memory=world.device.type == "cuda",
        rank=world.rank,
        world=world.size,
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
            ``objective.monitor`` (the task's metric, or its robust version for adversarial
            training) is also kept at :func:`best_path`, among the epochs above the
            objective's clean floor if it has one (:meth:`_Run.improved`). ``None`` writes
            nothing.
        meta: stored in the checkpoint beside the weights: ``model_config`` (to rebuild the
            model), ``data`` (input/target shapes, acquisition, classes) and ``run`` (what
            identifies the run, :func:`run_config`; default: ``config``'s fields).
        objective: what each step minimises and how the model is validated
            (:mod:`defend.train.objectives`; default standard training); its
            :meth:`~Objective.config` joins the run configuration. An objective with a guard
            (FGSM-RS) stops the run, rolled back one epoch, when its probe collapses.
        resume: continue from ``out`` if it exists; a run of another model config or
            ``run`` is refused with a one-line :class:`CheckpointError` naming the differences.
        log: where the per-epoch summary lines go.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs ``fit`` on the same
    arguments (:mod:`defend.train.distributed`): ``config.batch_size`` is the global batch,
    each process trains on its share of it through DistributedDataParallel with the
    gradients of one process, and process 0 alone validates, logs and writes ``out``
    (a resume loads it in every process). The model is then moved to ``cuda:LOCAL_RANK``
    (or stays on the CPU), with SyncBatchNorm layers on CUDA.
    """
    objective = objective or Standard()
    meta = _checkpoint_meta(task, config, objective, meta)
    with distributed.process_group(config.device) as world:
        log = log if world.main else _quiet
        run = _start(task, model, objective, config, out, meta, world)
        if out is not None and out.exists() and resume and _resumed_finished(run, log):
            return run.history
        if config.epochs == 0:
            run.record(0, None, run.validate(val_set, None))
            log("epoch 0 (no training)  " + _format(run.history[-1]))
        else:
            _epochs(run, train_set, val_set, log)
        return run.history


def _checkpoint_meta(
    task: Task, config: TrainConfig, objective: Objective, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """``meta`` as the checkpoint stores it: ``run`` (default :func:`run_config` of
    ``config``) with the objective's settings, and ``monitor``: the metric that picks the best
    epoch, its direction and the objective's clean floor (if it has one)."""
    meta = {"run": run_config(config), **(meta or {})}
    meta["run"] = {**meta["run"], "objective": objective.config()}
    metric, higher = objective.monitor(task)
    meta["monitor"] = {"metric": metric, "higher_is_better": higher}
    floor = objective.floor(task)
    if floor is not None:
        meta["monitor"]["clean_floor"] = {"metric": floor[0], "margin": floor[1]}
    return meta


def _start(
    task: Task,
    model: nn.Module,
    objective: Objective,
    config: TrainConfig,
    out: Path | None,
    meta: dict[str, Any],
    world: World,
) -> _Run:
    """A new run in this process of ``world``: ``model`` on its device (SyncBatchNorm
    layers on CUDA under torchrun) and a fresh AdamW optimizer; epoch 0, no history."""
    if config.batch_size < world.size:
        raise DefendError(
            f"--batch-size {config.batch_size} is the global batch and must be >= the "
            f"number of processes ({world.size})"
        )
    model = distributed.prepare(model, world)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    return _Run(task, model, optimizer, objective, config, out, meta, world)


def _resumed_finished(run: _Run, log: Callable[[str], None]) -> bool:
    """Load the run at ``run.out`` (in every process; :meth:`_Run.resume`) and say whether
    it has nothing left to do (all its epochs trained, or stopped early)."""
    run.resume()
    if run.finished():
        done = run.stopped or f"already trained for {run.start} epochs"
        log(f"{run.out}: {done}; nothing to do")
        return True
    log(f"{run.out}: resuming after epoch {run.start}")
    return False


def _quiet(line: str) -> None:
    """The log of processes other than process 0: nothing."""


def _epochs(run: _Run, train_set: Dataset, val_set: Dataset, log: Callable[[str], None]) -> None:
    """Train from ``run.start`` to the last epoch (or an early stop), validating and
    recording each epoch."""
    task, config, world, optimizer = run.task, run.config, run.world, run.optimizer
    net = distributed.wrap(run.model, world)
    probe = _probe_batch(train_set, config, world.device) if run.objective.guard else None
    amp = config.amp and task.amp_safe
    for epoch in range(run.start, config.epochs):
        before = run.snapshot() if probe is not None else None
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)  # dropout, noise, attacks: the same after a resume
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.lr, epoch, config.epochs)
        loader = _epoch_loader(train_set, config, epoch_seed, world)
        skipped = loader.batch_sampler.skipped
        if epoch == run.start and skipped:
            log(
                f"skipping {skipped} global batch(es) per epoch: fewer samples than the "
                f"{world.size} processes"
            )
        desc = f"{task.name} epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(loader, desc=desc, disable=not (config.progress and world.main), leave=False)
        train_loss = _train_epoch(
            task, net, loader, optimizer, run.objective, amp, world, bar, epoch
        )
        metrics = run.validate(val_set, probe)
        run.check_collapse(epoch, metrics, before)
        if run.stopped:
            log(run.stopped)
            break
        run.record(epoch + 1, train_loss, metrics)
        log(f"epoch {epoch + 1}/{config.epochs}  " + _format(run.history[-1]))


def _probe_batch(train_set: Dataset, config: TrainConfig, device: torch.device) -> Batch | None:
    """The first training batch in file order: where a guard checks robustness each epoch."""
    return to_device(next(iter(shape_loader(train_set, config.batch_size))), device)


class _Run:
    """The state of one training run: history, best record, checkpoints, early stop."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        config: TrainConfig,
        out: Path | None,
        meta: dict[str, Any],
        world: World | None = None,
    ) -> None:
        self.task, self.model, self.optimizer = task, model, optimizer
        self.objective, self.config, self.out, self.meta = objective, config, out, meta
        self.world = world or World()
        self.metric, self.higher = objective.monitor(task)
        self.floor = objective.floor(task)
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.start = 0
        self.stopped: str | None = None

    def resume(self) -> None:
        """Continue the run at ``out`` (:func:`~defend.train.resume.load_run`)."""
        assert self.out is not None
        self.start, self.history, self.best, self.stopped = load_run(
            self.out, self.task, self.meta, self.model, self.optimizer
        )

    def finished(self) -> bool:
        return bool(self.stopped) or (self.start >= self.config.epochs and bool(self.history))

    def improved(self, metrics: dict[str, float]) -> bool:
        """Whether the epoch just added to the history (``metrics``) becomes the best.

        Under a clean floor (:func:`above_floor`) only an epoch above it can; it replaces a
        kept best that has fallen below it (the highest clean value rose: that is this epoch,
        so it is above), else it must beat the kept best's monitor. So the kept best is always
        above the floor of the run so far.
        """
        if not above_floor(self.history, metrics, self.floor):
            return False
        if self.best is None or not above_floor(self.history, self.best, self.floor):
            return True
        sign = 1 if self.higher else -1
        return _rank(sign * metrics[self.metric]) > _rank(sign * self.best[self.metric])

    def record(self, epoch: int, train_loss: float | None, metrics: dict[str, float]) -> None:
        """Add an epoch's record and write the checkpoint (and the best one if it improved)."""
        loss = {} if train_loss is None else {"train_loss": train_loss}
        record = {"epoch": epoch, **loss, **metrics}
        self.history.append(record)
        improved = self.improved(metrics)
        self.best = record if improved else self.best
        self._save(improved)

    def snapshot(self) -> dict[str, Any]:
        """Model and optimizer state, to roll an epoch back."""
        return copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        )

    def validate(self, val_set: Dataset, probe: Batch | None) -> dict[str, float]:
        """Validation metrics, and the objective's guard on ``probe``
        (``probe_robust_<monitor>``): computed by process 0, sent to every process."""

        def compute() -> dict[str, float]:
            device = self.world.device
            metrics = evaluate(self.task, self.model, val_set, self.config, device, self.objective)
            values = None if probe is None else self.objective.probe(self.task, self.model, probe)
            if values is not None:
                metrics[f"probe_robust_{self.task.monitor}"] = values[0]
                metrics[f"probe_{self.task.monitor}"] = values[1]
            return metrics

        return distributed.on_main(self.world, compute)

    def check_collapse(
        self, epoch: int, metrics: dict[str, float], before: dict[str, Any] | None
    ) -> None:
        """If the guard's probe in ``metrics`` collapsed (:func:`collapse`), restore
        ``before`` and stop the run."""
        why = collapse(self.history, metrics, self.task.monitor)
        if why is None or before is None:
            return
        self.model.load_state_dict(before["model"])
        self.optimizer.load_state_dict(before["optimizer"])
        self.stopped = (
            f"stopped: catastrophic overfitting in epoch {epoch + 1} ({why}); kept epoch {epoch}"
        )
        if self.history:
            self._save(False)

    def _save(self, improved: bool) -> None:
        """Write the checkpoint (and the best one, if this epoch improved) atomically; only
        process 0 writes."""
        if self.out is None or not self.world.main:
            return
        last = self.history[-1]
        ckpt = {
            "task": self.task.name,
            **self.meta,
            "train_config": asdict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "epoch": last["epoch"],
            "metrics": {k: v for k, v in last.items() if k not in ("epoch", "train_loss")},
            "history": self.history,
            "best": self.best,
            "stopped": self.stopped,
        }
        if improved:
            save_checkpoint(best_path(self.out), ckpt)
        save_checkpoint(self.out, {**ckpt, "optimizer": self.optimizer.state_dict()})


def _format(record: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
