"""Training benchmark: the epoch time of each adversarial-training method over standard training.

``defend bench train`` (:func:`bench_train`) builds, per task, the default model ``defend
train`` builds, takes a fixed set of training batches (the benchmark's *epoch*: ``batches``
batches of ``batch_size``, already on the device) and times the training-step work over them:
what :func:`defend.train.loop.fit` does per batch (``objective.loss`` in the training loop's
autocast, ``.mean()``, backward, AdamW step). Data loading, validation and checkpoint writing
are not timed (the loader's time per batch is measured once and reported beside the ratios).

Each method's epoch (``make_objective(task, method, steps=K)``) and the standard epoch run on
the same batches, every step from the same saved model and optimizer state with the same
seed, after one warm-up epoch of each, interleaved batch by batch (standard and method steps
on each batch back to back, their order alternating); an epoch's time is the sum of its steps,
and the ratio is the median over repeats of method epoch / standard epoch, so that drift in
the machine's load cancels. The process's CPU time is recorded beside the wall clock (on a
shared CPU it counts the work done, and is less sensitive to other jobs). The ideal is
``K + 1`` standard steps (``K`` attack forward/backward passes and one training step); the
goal is a ratio of at most :data:`GOAL` x (K + 1). Where a method inherently does more per
batch (TRADES, hallucination training: :data:`INHERENT`), the row also gives that method's
own ideal, counting its extra no-grad forward passes at the measured forward / standard-step
time ratio.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defend.bench.timing import Log, paired, timed, torch_threads
from defend.cpu_kernels import cpu_kernels
from defend.data import Acquisition, load_dataset
from defend.data.batching import shape_loader
from defend.device import autocast, pick_device, seed_everything
from defend.errors import DefendError
from defend.estimators.torch_estimator import model_mode
from defend.models import build_model, default_model_config
from defend.tasks import Batch, Task, get_task
from defend.train.from_folder import default_schedule, describe_data, model_data_args
from defend.train.loop import TrainConfig, to_device
from defend.train.methods import METHODS, make_objective
from defend.train.objectives import Objective, Standard

#: the benchmark's tasks: ``TASK`` or ``TASK/MODEL`` (the default models of ``defend train``)
TRAIN_BENCH_TASKS = ("recon/unet", "recon/varnet", "seg", "cls")
#: the goal: a method's epoch takes at most this many times (steps + 1) standard epochs
GOAL = 1.1
#: what a method runs per batch beyond ``steps`` attack forward/backward passes and one
#: training step: (extra training steps, extra no-grad forward passes, why)
INHERENT: dict[str, tuple[int, int, str]] = {
    "trades": (
        1,
        1,
        "trades: steps + 2 + 1 forward: its training step runs the clean and the adversarial "
        "batch in two forward passes (2B rows), and its inner attack's reference is one no-grad "
        "clean forward",
    ),
    "hallucination": (
        0,
        2,
        "hallucination: steps + 1 + 2 forwards: HallucinationAttack makes one no-grad forward "
        "for the clean reconstruction its target is built from, and one to score the last "
        "iterate (it keeps each sample's best iterate)",
    ),
}
#: what the timed epochs hold
TIMED = (
    "objective loss + backward + AdamW step per batch, on fixed batches already on the "
    "device; data loading, validation and checkpoints not timed"
)


@dataclass
class _Setup:
    """One task's model, optimizer, fixed batches and the state every timed run starts from."""

    name: str
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[Batch]
    amp: bool
    device: torch.device
    state: dict[str, Any]
    info: dict[str, Any]


def _split_name(name: str) -> tuple[str, str | None]:
    """``"recon/varnet"`` -> ``("recon", "varnet")``; ``"seg"`` -> ``("seg", None)``."""
    task, _, model = name.partition("/")
    return task, model or None


def _check_args(
    data_dir: Path, tasks: Sequence[str], steps: int | None, counts: dict[str, int]
) -> list[str]:
    """The task names, checked; a one-line :class:`DefendError` for bad input.

    Args:
        data_dir: the data folder. tasks: ``TASK`` or ``TASK/MODEL`` names.
        steps: attack steps for every method, or None. counts: ``batches``, ``batch_size``,
            ``repeats`` (each must be >= 1).
    """
    if steps is not None and steps < 1:
        raise DefendError(f"--steps must be >= 1, got {steps}")
    for what, value in counts.items():
        if value < 1:
            raise DefendError(f"--{what.replace('_', '-')} must be >= 1, got {value}")
    names = list(tasks)
    if not names:
        raise DefendError(f"--tasks names no task: choose from {', '.join(TRAIN_BENCH_TASKS)}")
    for name in names:
        if _split_name(name)[0] not in METHODS:
            raise DefendError(
                f"--tasks: unknown task '{name}': choose from {', '.join(TRAIN_BENCH_TASKS)}"
            )
    if not data_dir.is_dir():
        raise DefendError(f"{data_dir}: no such data folder (make one: defend data synth DIR)")
    return names


def _fixed_batches(
    train_set: Any, batches: int, batch_size: int, device: torch.device
) -> tuple[list[Batch], float]:
    """The first ``batches`` shuffled training batches (epoch seed 0) on ``device``, and the
    loader's seconds per batch (one pass, ``num_workers=0``)."""

    if hasattr(train_set, "set_epoch"):  # random k-space masks per sample, as in training
        train_set.set_epoch(0)
    loader = shape_loader(train_set, batch_size, shuffle=True, seed=0)
    seconds, held = timed(lambda: list(islice(loader, batches)), torch.device("cpu"))
    return [to_device(batch, device) for batch in held], seconds / max(len(held), 1)


def _train_split(data_dir: Path, name: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A task's training split (as ``defend train`` reads it), its data dict
    (:func:`~defend.train.from_folder.describe_data`) and its default model config; bad data or a
    bad model name is a one-line :class:`DefendError`."""

    task, model = _split_name(name)
    acquisition = Acquisition() if task == "recon" else None
    train_set = load_dataset(task, data_dir, "train", train=True, acquisition=acquisition)
    data = describe_data(task, train_set, acquisition)
    return train_set, data, default_model_config(task, model, **model_data_args(task, data))


def _prepare(
    name: str,
    split: tuple[Any, dict[str, Any], dict[str, Any]],
    batches: int,
    batch_size: int,
    device: torch.device,
) -> _Setup:
    """Build a task's default model (seed 0: ``defend train``'s initial weights) and optimizer
    (AdamW at the default learning rate), hold its fixed batches, run one standard epoch (so
    that Adam's state exists, as in any later epoch) and save the state every run starts from.

    Args:
        name: ``TASK`` or ``TASK/MODEL``. split: :func:`_train_split`'s result.
    """

    (task_name, model_name), (train_set, data, config) = _split_name(name), split
    seed_everything(0)
    model = build_model(task_name, config).to(device)
    lr = default_schedule(task_name, model_name)[1]
    decay = TrainConfig().weight_decay  # defend train's default
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    held, loader_s = _fixed_batches(train_set, batches, batch_size, device)
    task = get_task(task_name)
    info = {
        "name": name,
        "model": config["name"],
        "input_shape": data["input_shape"],
        "batches": len(held),
        "samples": sum(len(b["input"]) for b in held),
        "loader_s": loader_s,
    }
    setup = _Setup(name, task, model, optimizer, held, task.amp_safe, device, {}, info)
    _train_epoch(setup, Standard())
    setup.state = copy.deepcopy({"model": model.state_dict(), "opt": optimizer.state_dict()})
    return setup


def _reset(setup: _Setup) -> None:
    """Model and optimizer back to the saved state, torch's generator to seed 0."""
    setup.model.load_state_dict(setup.state["model"])
    setup.optimizer.load_state_dict(copy.deepcopy(setup.state["opt"]))
    torch.manual_seed(0)


#: one timed unit of work on one batch
Step = Callable[[Batch], None]


def _train_step(setup: _Setup, objective: Objective, batch: Batch) -> None:
    """The timed work: the training loop's step on one batch (loss, backward, AdamW)."""
    model, optimizer = setup.model, setup.optimizer
    model.train()
    with autocast(setup.device, setup.amp):
        loss = objective.loss(setup.task, model, batch, 0).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if not math.isfinite(float(loss.detach())):
        raise DefendError(f"bench train: {setup.name} {objective.name} diverged (loss {loss})")


def _forward_step(setup: _Setup, batch: Batch) -> None:
    """A no-grad forward pass of one batch in eval mode (as the attacks' extra forwards)."""
    with torch.no_grad(), model_mode(setup.model, training=False):
        setup.task.forward(setup.model, batch)


def _train_epoch(setup: _Setup, objective: Objective) -> None:
    """Training steps over all the fixed batches, the model carried from step to step."""
    for batch in setup.batches:
        _train_step(setup, objective, batch)


def _clocked(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of ``fn()`` (the device synchronised)."""
    cpu = time.process_time()
    wall = timed(fn, device)[0]
    return wall, time.process_time() - cpu


def _interleaved(setup: _Setup, runs: dict[str, Step], repeats: int) -> dict[str, list[float]]:
    """Epoch seconds of each run: a warm-up epoch each, then ``repeats`` epochs each, the
    runs interleaved batch by batch (their order alternating), so that each batch's steps are
    timed back to back; every step starts from the saved state (the reset is not timed).

    Returns:
        ``{name: [wall seconds] * repeats, f"{name}_cpu": [process CPU seconds] * repeats}``,
        each the sum over the batches of one repeat.
    """
    for run in runs.values():
        _reset(setup)
        for batch in setup.batches:
            run(batch)
    times: dict[str, list[float]] = {key: [] for name in runs for key in (name, f"{name}_cpu")}
    names = list(runs)
    for r in range(repeats):
        for key in times:
            times[key].append(0.0)
        for i, batch in enumerate(setup.batches):
            for name in names if (r + i) % 2 == 0 else names[::-1]:
                _reset(setup)
                wall, cpu = _clocked(partial(runs[name], batch), setup.device)
                times[name][-1] += wall
                times[f"{name}_cpu"][-1] += cpu
    return times


def _cpu_ratio(setup: _Setup, times: dict[str, list[float]], first: str, second: str) -> float:
    """Median over repeats of the CPU-time ratio ``first / second`` (CPU devices; else NaN)."""
    if setup.device.type != "cpu":
        return math.nan
    cpu = {k: times[f"{k}_cpu"] for k in (first, second)}
    return paired(cpu, first, second)["ratio"]


def _method_row(
    setup: _Setup, method: str, objective: Objective, times: dict[str, Any], forward: float
) -> dict[str, Any]:
    """One table row: per-batch times, the ratio, the ideal and goal, the method's own ideal."""
    pair = paired(times, "method", "standard")
    steps = int(objective.steps)  # type: ignore[attr-defined]
    ideal = steps + 1
    extra_steps, extra_forwards, note = INHERENT.get(method, (0, 0, ""))
    inherent = ideal + extra_steps + extra_forwards * forward
    n = len(setup.batches)
    return {
        "task": setup.name,
        "method": method,
        "steps": steps,
        "standard_s": pair["standard_s"] / n,
        "method_s": pair["method_s"] / n,
        "ratio": pair["ratio"],
        "cpu_ratio": _cpu_ratio(setup, times, "method", "standard"),
        "ideal": ideal,
        "ratio_over_ideal": pair["ratio"] / ideal,
        "goal": GOAL * ideal,
        "met": bool(pair["ratio"] <= GOAL * ideal),
        "inherent_ideal": inherent,
        "ratio_over_inherent": pair["ratio"] / inherent,
        "note": note,
        "ratios": pair["ratios"],
        **{f"{k}_times": times[k] for k in ("standard", "method", "standard_cpu", "method_cpu")},
    }


def _forward_fraction(setup: _Setup, repeats: int) -> dict[str, Any]:
    """The task's info plus its standard step and no-grad forward times per batch, and the
    forward / standard-step ratio (median over interleaved repeats)."""
    runs: dict[str, Step] = {
        "standard": lambda batch: _train_step(setup, Standard(), batch),
        "forward": lambda batch: _forward_step(setup, batch),
    }
    times = _interleaved(setup, runs, repeats)
    pair = paired(times, "forward", "standard")
    n = len(setup.batches)
    info = {
        **setup.info,
        "standard_s": pair["standard_s"] / n,
        "forward_s": pair["forward_s"] / n,
        "forward_fraction": pair["ratio"],
        "forward_cpu_fraction": _cpu_ratio(setup, times, "forward", "standard"),
    }
    info["loader_fraction"] = info["loader_s"] / info["standard_s"]
    return info


def _bench_task(
    setup: _Setup, steps: int | None, repeats: int, log: Log
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The forward / standard-step ratio of one task, then a row per method of the task."""
    task = setup.task.name
    info = _forward_fraction(setup, repeats)
    rows = []
    for method in METHODS[task]:
        objective = make_objective(task, method, steps=None if method == "fgsm-rs" else steps)
        k = objective.steps  # type: ignore[attr-defined]
        log(f"== {setup.name} {method} ({k} steps) vs standard")
        runs: dict[str, Step] = {
            "standard": lambda batch: _train_step(setup, Standard(), batch),
            "method": lambda batch, objective=objective: _train_step(setup, objective, batch),
        }
        times = _interleaved(setup, runs, repeats)
        rows.append(_method_row(setup, method, objective, times, info["forward_fraction"]))
        log(f"   ratio {rows[-1]['ratio']:.2f} (ideal {rows[-1]['ideal']})")
    return info, rows


def bench_train(
    data_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = TRAIN_BENCH_TASKS,
    steps: int | None = None,
    batches: int = 4,
    batch_size: int = 8,
    repeats: int = 3,
    device: str | None = None,
    threads: int | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Time each adversarial-training method's epoch over the standard epoch, per task.

    Args:
        data_dir: a data folder with a train split (``defend data synth DIR`` or real data).
        tasks: ``TASK`` or ``TASK/MODEL`` names (default :data:`TRAIN_BENCH_TASKS`).
        steps: attack steps per batch for every method (fgsm-rs is always one step); None:
            each method's default (``defend train --adversarial``'s).
        batches: training batches per benchmark epoch, of ``batch_size`` samples each.
        repeats: timed repeats after a warm-up; medians are reported.
        device: torch device (default: CUDA when available).
        threads: torch CPU threads during the run (None: as they are).

    Returns:
        ``{"config": {...}, "tasks": [per-task info], "rows": [per-method rows]}``; times in
        seconds per batch, ratios of epoch times; see :func:`format_train_bench`.
    """
    log = log or (lambda s: None)
    data_dir = Path(data_dir)
    counts = {"batches": batches, "batch_size": batch_size, "repeats": repeats}
    names = _check_args(data_dir, tasks, steps, counts)
    dev = pick_device(device)
    start = time.perf_counter()
    infos, rows = [], []
    with torch_threads(threads):
        splits = [_train_split(data_dir, name) for name in names]  # input errors first
        for name, split in zip(names, splits, strict=True):
            setup = _prepare(name, split, batches, batch_size, dev)
            info, task_rows = _bench_task(setup, steps, repeats, log)
            infos.append(info)
            rows += task_rows
        used_threads = torch.get_num_threads()
    config = {
        "data_dir": str(data_dir),
        **counts,
        "steps": steps,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "threads": used_threads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_kernels": cpu_kernels(),
        "timed": TIMED,
        "goal": GOAL,
        "seconds": time.perf_counter() - start,
    }
    return {"config": config, "tasks": infos, "rows": rows}
