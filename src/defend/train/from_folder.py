"""From a data folder and a model name to a trained checkpoint: what ``defend train`` runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from defend.data import Acquisition, load_dataset, task_root
from defend.data.arrays import fingerprint
from defend.data.recon import recon_size
from defend.device import pick_device, seed_everything
from defend.errors import DefendError
from defend.io import check_writable, file_sha256, load_weights_file
from defend.models import build_model, default_model_config, load_weights
from defend.tasks import get_task, kind_of
from defend.train.distributed import main_only
from defend.train.loop import TrainConfig, fit, run_config
from defend.train.objectives import Objective

#: (epochs, learning rate) that train each default model on the built-in 64 px data within
#: a few CPU minutes; VarNet's cascades start slowly and want more steps at a higher rate.
SCHEDULES: dict[str, tuple[int, float]] = {
    "recon": (8, 1e-3),
    "recon/varnet": (20, 3e-3),
    "seg": (10, 3e-3),
    "cls": (8, 1e-3),
}


def default_schedule(task: str, model: str | None = None) -> tuple[int, float]:
    """Default ``(epochs, lr)`` of ``task`` (and model name, where it differs)."""
    kind = kind_of(task)
    return SCHEDULES.get(f"{kind}/{model}", SCHEDULES.get(kind, (10, 1e-3)))


def describe_data(task: str, dataset: Dataset, acquisition: Acquisition | None) -> dict[str, Any]:
    """Shapes and labels a checkpoint needs to rebuild its estimator, from the training split.

    Returns:
        The checkpoint's ``data`` dict: ``input_shape`` (recon ``(coils, H, W, 2)``, seg/cls
        ``(C, H, W)`` with ``C`` the channel count every later reader converts to); recon
        ``target_shape`` ``(h, w)`` and ``acquisition`` (:meth:`Acquisition.to_dict`); seg
        ``classes`` the label count ``K``; cls ``classes`` the class names in index order (the
        map every later split is read with, :class:`defend.data.ClsFolder`).
    """
    sample = dataset[0]
    info: dict[str, Any] = {"input_shape": list(sample["input"].shape)}
    if kind_of(task) == "recon":
        # the reconstruction size, not a narrow (FLAIR) first sample's crop of it
        info["target_shape"] = list(recon_size(dataset) or sample["target"].shape)
        info["acquisition"] = (acquisition or Acquisition()).to_dict()
    elif kind_of(task) == "seg":
        info["classes"] = int(sample["target"].shape[0])
    else:
        info["classes"] = list(dataset.classes)
    return info


def model_data_args(task: str, info: dict[str, Any]) -> dict[str, Any]:
    """The data-dependent arguments of :func:`defend.models.default_model_config`."""
    if kind_of(task) == "recon":
        return {"input_shape": info["input_shape"], "target_shape": info["target_shape"]}
    if kind_of(task) == "seg":
        return {"in_channels": info["input_shape"][0], "classes": info["classes"]}
    return {"in_channels": info["input_shape"][0], "num_classes": len(info["classes"])}


def _weights_fingerprint(weights: str | os.PathLike | None) -> dict[str, Any] | None:
    """The starting weights' content (SHA-256) and size, for the run configuration: other
    weights under the same file name are another run."""
    if weights is None:
        return None
    return {"sha256": file_sha256(weights), "bytes": Path(weights).stat().st_size}


def _load_splits(
    task: str,
    data_dir: Path,
    acquisition: Acquisition | None,
    log: Callable[[str], None],
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """The train and val datasets, and the checkpoint's data dict; logs which folder is which."""
    train_set = load_dataset(task, data_dir, "train", train=True, acquisition=acquisition)
    info = describe_data(task, train_set, acquisition)
    # the training split fixes the label map and channels: val (and, via the checkpoint's
    # data dict, every later reader) uses the same, even where it lacks some classes
    val_set = load_dataset(
        task,
        data_dir,
        "val",
        acquisition=acquisition,
        classes=info["classes"] if kind_of(task) != "recon" else None,
        channels=info["input_shape"][0] if kind_of(task) != "recon" else None,
    )
    for split, dataset in (("train", train_set), ("val", val_set)):
        log(f"{split}: {task_root(data_dir, task, split)} ({len(dataset)} samples)")
    return train_set, val_set, info


def train_model(
    task: str,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    model_options: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    acquisition: Acquisition | None = None,
    weights: str | os.PathLike | None = None,
    objective: Objective | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train a ``task`` model on ``data_dir``'s train split, validating on its val split.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        data_dir: a folder of ``defend data synth`` or real data (see :mod:`defend.data`;
            fastMRI's ``multicoil_train`` / ``multicoil_val`` folders are found by name).
        out: checkpoint path (the best epoch goes beside it as ``NAME.best.pt``).
        model: model name (recon ``unet`` / ``varnet``; seg ``ARCH/ENCODER``; cls
            ``resnet18`` / ``resnet50``); ``None`` for the task's default.
        model_options: overrides of the model config (e.g. ``{"chans": 32}``).
        config: optimisation settings; ``epochs=0`` with ``weights`` evaluates the weights and
            writes a checkpoint without training.
        acquisition: k-space sampling for recon (default: 4x equispaced, 8 % centre).
        weights: a local weight file to start from (e.g. a fastMRI leaderboard state dict).
        objective: what training minimises (default standard training; adversarial training:
            :func:`defend.train.make_objective`).
        resume: continue an interrupted run found at ``out`` (refused, naming the
            differences, if it was started with other settings or data).
        log: where progress lines go (under torchrun: process 0's only).

    Returns:
        The per-epoch history of training loss and validation metrics.
    """
    config = config or TrainConfig()
    log = main_only(log)
    _check_start(config, out, weights)
    acquisition = acquisition or Acquisition() if kind_of(task) == "recon" else None
    task_spec = get_task(task)
    train_set, val_set, info = _load_splits(task, Path(data_dir), acquisition, log)
    net, model_config = _initial_model(task, model, model_options, info, config.seed, weights)
    run = _run_identity(config, train_set, val_set, info, weights)
    meta = {"model_config": model_config, "data": info, "loss": task_spec.loss_name, "run": run}
    return fit(
        task_spec,
        net,
        train_set,
        val_set,
        config,
        Path(out),
        meta=meta,
        objective=objective,
        resume=resume,
        log=log,
    )


def _check_start(
    config: TrainConfig, out: str | os.PathLike, weights: str | os.PathLike | None
) -> None:
    """Refuse, before any data is read, a run that cannot go: ``--epochs 0`` without
    weights, a device that is not there, an ``out`` that cannot be written."""
    if config.epochs == 0 and weights is None:
        raise DefendError("--epochs 0 evaluates given weights: pass --weights FILE")
    pick_device(config.device)
    check_writable(out, "file")


def _initial_model(
    task: str,
    model: str | None,
    model_options: dict[str, Any] | None,
    info: dict[str, Any],
    seed: int,
    weights: str | os.PathLike | None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model before training and its config: the default config of ``model`` for the
    data described by ``info`` (:func:`describe_data`), updated by ``model_options``; the
    weights initialised from ``seed`` alone (the global generators are seeded first), then
    replaced by those of the file ``weights`` if one is named."""
    model_config = default_model_config(task, model, **model_data_args(task, info))
    model_config.update(model_options or {})
    seed_everything(seed)  # the initial weights depend on the seed alone
    net = build_model(task, model_config)
    if weights is not None:
        load_weights(net, load_weights_file(weights), str(weights))
    return net, model_config


def _run_identity(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset,
    info: dict[str, Any],
    weights: str | os.PathLike | None,
) -> dict[str, Any]:
    """What identifies the run (:func:`~defend.train.loop.run_config`; a resume must keep
    it): the optimisation settings, the train and val data's fingerprints, the recon
    acquisition and the starting weights' content."""
    return run_config(
        config,
        data={"train": fingerprint(train_set), "val": fingerprint(val_set)},
        acquisition=info.get("acquisition"),
        weights=_weights_fingerprint(weights),
    )
