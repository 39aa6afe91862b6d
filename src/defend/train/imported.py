"""``defend import``: weights trained elsewhere as a defend checkpoint every command reads.

:func:`import_model` reads a state dict of fastMRI's ``Unet`` / ``VarNet``, an smp segmenter
or a torchvision classifier (:mod:`defend.models.upstream` sizes and builds the defend model),
describes a data folder's train split as ``defend train`` does (the acquisition for recon,
the channels and labels for seg / cls), checks the model runs on one of its samples, measures
the val split's metrics, and writes the checkpoint of an epoch-0 run: what ``defend train
--weights W --epochs 0`` writes, plus ``imported`` (where the weights came from).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from defend.data import Acquisition, load_dataset, task_root
from defend.data.arrays import fingerprint
from defend.data.batching import shape_loader
from defend.device import pick_device
from defend.errors import DefendError
from defend.io import check_writable, load_weights_file, save_checkpoint
from defend.models.upstream import (
    first_conv_channels,
    import_task,
    imported_config,
    imported_model,
    split_options,
)
from defend.tasks import Task, get_task, kind_of
from defend.train.from_folder import _weights_fingerprint, describe_data
from defend.train.loop import TrainConfig, _checkpoint_meta, evaluate, run_config, to_device
from defend.train.objectives import Standard

__all__ = ["import_model"]


def import_model(
    kind: str,
    weights: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    options: Mapping[str, Any] | None = None,
    *,
    acquisition: Acquisition | None = None,
    metrics: bool = True,
    device: str | None = None,
    batch_size: int = 8,
    log: Callable[[str], None] = print,
) -> Path:
    """Turn a state dict trained elsewhere into a defend checkpoint (``defend import``).

    Args:
        kind: ``fastmri-unet``, ``fastmri-varnet``, ``smp`` or ``torchvision``
            (:data:`defend.models.upstream.KINDS`).
        weights: a ``.pt`` state dict (``weights_only=True``; prefixes such as ``module.``
            and a nesting ``state_dict`` key are fine).
        data: a data folder (``defend data synth``'s or real data): its train split gives the
            checkpoint's ``data`` dict as ``defend train`` records it, its val split metrics.
        out: the checkpoint to write (atomically).
        options: ``--set`` pairs: ``name`` (smp ``ARCH/ENCODER``, torchvision name; required
            for those kinds) and the model's options (they override the sizes read from a
            fastMRI state dict; seg / cls ``in_channels`` that of the first convolution).
        acquisition: recon: the k-space sampling of the estimator's evaluation mask and the
            val metrics (default 4x equispaced, 8 % centre); not for seg / cls.
        metrics: measure the val split's metrics (False: the checkpoint holds none).
        device / batch_size: where and in what batches the metrics run (default CUDA, 8).
        log: where progress lines go.

    Returns:
        ``out``. The checkpoint holds ``task``, ``model_config``, ``state_dict``, ``data``,
        ``loss``, ``run``, ``monitor``, ``train_config``, ``optimizer``, ``epoch`` 0, ``metrics``,
        ``history`` and ``imported`` (``kind``, ``file``, ``sha256``, ``bytes``, ``options``).

    Raises:
        DefendError: an unknown kind, missing or bad options, an unusable device or ``out``,
            a file that is no plain state dict, weights that do not fit the model, data the
            model cannot run on; one line, before anything is written.
    """
    task = import_task(kind)
    options = dict(options or {})
    torch_device, state, acquisition, channels = _start(kind, weights, out, options,
                                                        acquisition, device)  # fmt: skip
    source = str(weights)
    train_set, val_set, info = _read_data(task, Path(data), acquisition, channels, metrics, log)
    config = imported_config(kind, state, options, info, source)
    model = imported_model(task, state, config, source).to(torch_device)
    task_spec = get_task(task)
    _check_runs(task_spec, model, train_set, torch_device, source)
    train = TrainConfig(epochs=0, batch_size=batch_size, device=device, progress=False)
    found = {} if val_set is None else evaluate(task_spec, model, val_set, train, torch_device)
    content = _weights_fingerprint(weights)  # {"sha256", "bytes"}
    run = _run(train, content, train_set, val_set, info)
    meta = {"model_config": config, "data": info, "loss": task_spec.loss_name, "run": run}
    origin = {"kind": kind, "file": Path(weights).name, **content, "options": options}
    save_checkpoint(out, _checkpoint(task_spec, model, train, meta, origin, found))
    return Path(out)


def _start(
    kind: str,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    options: dict[str, Any],
    acquisition: Acquisition | None,
    device: str | None,
) -> tuple[torch.device, dict[str, Any], Acquisition | None, int | None]:
    """What is checked before any data is read: the options, the device, ``out`` (not the
    weights file itself), the weights file. Returns the device, the weights, the acquisition
    (recon; the default if None) and the input channels (seg / cls: ``--set in_channels`` or
    the first convolution's, None if unknown)."""
    split_options(kind, options)
    recon = kind_of(import_task(kind)) == "recon"
    if acquisition is not None and not recon:
        raise DefendError(f"import {kind}: an acquisition (mask) is for the fastMRI kinds only")
    torch_device = pick_device(device)
    check_writable(out, "file")
    if Path(out).exists() and Path(out).resolve() == Path(weights).resolve():
        raise DefendError(f"{out}: is the weights file; write the checkpoint beside it")
    state = load_weights_file(weights)
    if recon:
        return torch_device, state, acquisition or Acquisition(), None
    channels = options.get("in_channels") or first_conv_channels(state, str(weights))
    return torch_device, state, None, channels


def _read_data(
    task: str,
    data_dir: Path,
    acquisition: Acquisition | None,
    channels: int | None,
    with_val: bool,
    log: Callable[[str], None],
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """The train split, the val split (None unless ``with_val``) and the checkpoint's data
    dict (:func:`~defend.train.from_folder.describe_data` of the train split, its images read
    with ``channels`` for seg / cls); logs which folder is which."""
    recon = kind_of(task) == "recon"
    extra = {} if recon else {"channels": channels}
    train_set = load_dataset(task, data_dir, "train", acquisition=acquisition, **extra)
    info = describe_data(task, train_set, acquisition)
    splits: list[tuple[str, Dataset]] = [("train", train_set)]
    val_set = None
    if with_val:
        fixed = {} if recon else {"classes": info["classes"], "channels": info["input_shape"][0]}
        val_set = load_dataset(task, data_dir, "val", acquisition=acquisition, **fixed)
        splits.append(("val", val_set))
    for split, dataset in splits:
        log(f"{split}: {task_root(data_dir, task, split)} ({len(dataset)} samples)")
    return train_set, val_set, info


def _run(
    config: TrainConfig,
    weights: dict[str, Any],
    train_set: Dataset,
    val_set: Dataset | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    """What identifies the import as a run (:func:`~defend.train.loop.run_config`, as
    ``defend train --weights W --epochs 0`` records it): the data's fingerprints (val None
    without metrics), the recon acquisition and ``weights``, the weights' content."""
    val = None if val_set is None else fingerprint(val_set)
    prints = {"train": fingerprint(train_set), "val": val}
    return run_config(config, data=prints, acquisition=info.get("acquisition"), weights=weights)


def _check_runs(
    task: Task, model: nn.Module, dataset: Dataset, device: torch.device, source: str
) -> None:
    """Refuse a model that fails on the data's first sample, or whose output is not the
    shape of its target (recon ``(1, h, w)``, seg ``(1, K, H, W)``) or label count (cls
    ``(1, classes)``)."""
    batch = to_device(next(iter(shape_loader(dataset, 1))), device)
    shape = tuple(batch["input"].shape[1:])
    try:
        with torch.no_grad():
            pred = task.forward(model, batch)
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DefendError(f"{source}: the model does not run on the data's inputs {shape}: "
                          f"{first}") from None  # fmt: skip
    target = batch["target"]
    expected = (1, len(dataset.classes)) if task.kind == "cls" else tuple(target.shape)
    if tuple(pred.shape) != expected:
        raise DefendError(f"{source}: the model outputs {tuple(pred.shape[1:])} on the data's "
                          f"inputs {shape}, where its targets are {expected[1:]}")  # fmt: skip


def _checkpoint(
    task: Task,
    model: nn.Module,
    config: TrainConfig,
    meta: dict[str, Any],
    origin: dict[str, Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The checkpoint of an epoch-0 run of ``model`` (as :func:`~defend.train.loop.fit`
    writes one with ``epochs=0``, without a best copy) and ``imported``: ``origin``."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    return {
        "task": task.name,
        **_checkpoint_meta(task, config, Standard(), meta),
        "imported": origin,
        "train_config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": 0,
        "metrics": dict(metrics),
        "history": [{"epoch": 0, **metrics}] if metrics else [],
        "best": None,
        "stopped": None,
    }
