"""Training a denoiser in front of a frozen model (``defend train denoiser``), and loading it.

Salman et al. 2020 ("Denoised smoothing"): a denoiser ``D`` is trained so that the frozen base
model ``f`` keeps working on ``D(x + noise)``, which lets a model that never saw noise be
smoothed. Objectives (``--objective``):

* ``mse``: ``||D(x + noise) - x||^2`` (k-space: in units of the noise's unit squared);
* ``stability``: the base task's divergence of ``f(D(x + noise))`` from ``f(x)``
  (classification: KL of the softmaxes; segmentation: per-pixel Bernoulli KL;
  reconstruction: L1 of the images, :meth:`defend.tasks.Task.divergence`);
* ``mse-stability``: ``mse`` for the first half of the epochs, then ``stability``.

Training runs in the one training loop (:func:`defend.train.loop.fit`) with
:class:`Denoising` as its objective, on the base checkpoint's task and data: it resumes,
runs under torchrun, and validates each epoch with the base task's metric on denoised noisy
inputs (e.g. the accuracy of ``f(D(x + noise))``). The checkpoint holds the denoiser alone
(``kind: denoiser``) and the fingerprint of the base model it was trained for; a k-space
denoiser also its noise (``noise: {sigma, unit, noise_std}``: the training split's k-space
unit, :func:`defend.smooth.training_unit`, which smoothing behind it then uses).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defend.data import Acquisition
from defend.data.arrays import fingerprint
from defend.device import seed_everything
from defend.errors import CheckpointError, DefendError
from defend.estimators import load_estimator
from defend.io import check_writable, file_sha256, load_checkpoint
from defend.models.dncnn import build_denoiser
from defend.smooth.noise import ImageNoise, KspaceNoise
from defend.smooth.unit import training_unit
from defend.tasks import Batch, Task, get_task, kind_of
from defend.train import TrainConfig
from defend.train.distributed import unwrap
from defend.train.from_folder import _load_splits
from defend.train.loop import fit, run_config
from defend.train.objectives import Objective

OBJECTIVES = ("mse", "stability", "mse-stability")
#: default DnCNN size (a small one: the built-in data is 32-64 px)
DEFAULT_DEPTH, DEFAULT_WIDTH = 8, 32


class Denoised(nn.Module):
    """``f(D(x + noise))``: a trainable denoiser before a frozen base model.

    The base model is held outside the module tree (its weights are not in this module's
    state dict, so a denoiser checkpoint holds the denoiser alone) but moves with it
    (``.to``), and it stays in eval mode when this module trains.

    Args:
        denoiser: ``D``. base: ``f`` (``f(x)``, or ``f(kspace, mask)`` for reconstruction).
        noise: :class:`ImageNoise` or :class:`KspaceNoise` (its ``scale(x)``).
    """

    def __init__(self, denoiser: nn.Module, base: nn.Module, noise: Any) -> None:
        super().__init__()
        self.denoiser, self.noise = denoiser, noise
        self._base = [base.eval().requires_grad_(False)]

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> Denoised:
        self.base._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> Denoised:
        super().train(mode)
        self.base.eval()
        return self

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x + noise`` (noise from torch's generator, which the training loop seeds)."""
        return x + self.noise.scale(x) * torch.randn_like(x)

    def predict(self, x: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        """The base model's output on ``x`` as it is (B, ...)."""
        return self.base(x, *mask)

    def forward(
        self, x: torch.Tensor, *mask: torch.Tensor, add_noise: bool = True, stage: str = "output"
    ) -> torch.Tensor:
        """``f(D(x + noise))`` of a batch ``x`` (B, ...) (``mask``: a reconstruction model's);
        ``add_noise=False`` takes ``x`` as the noisy input; ``stage="denoised"`` returns
        ``D(...)``, the denoised input."""
        denoised = self.denoiser(self.noisy(x) if add_noise else x)
        return denoised if stage == "denoised" else self.base(denoised, *mask)


def _mask(task: Task, batch: Batch) -> tuple[torch.Tensor, ...]:
    return (batch["mask"],) if task.name == "recon" else ()


class Denoising(Objective):
    """The denoiser's training objective (module doc); ``model`` is a :class:`Denoised`.

    Args:
        sigma: the noise level (stored; the noise itself is the model's).
        objective: ``mse``, ``stability`` or ``mse-stability``.
        epochs: the run's epochs (``mse-stability`` switches at half of them).
    """

    name = "denoiser"

    def __init__(self, sigma: float, objective: str = "mse", epochs: int = 1) -> None:
        if not 0 < sigma < math.inf:
            raise DefendError(f"--sigma must be a finite number > 0, got {sigma}")
        if objective not in OBJECTIVES:
            raise DefendError(
                f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective}"
            )
        self.sigma, self.objective = sigma, objective
        self.switch = epochs // 2 if objective == "mse-stability" else None

    def stage(self, epoch: int) -> str:
        """``mse`` or ``stability``: what 0-based ``epoch`` minimises."""
        if self.objective == "mse-stability":
            return "mse" if epoch < self.switch else "stability"
        return self.objective

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        net = unwrap(model)
        clean, mask = batch["input"], _mask(task, batch)
        noisy = net.noisy(clean)
        if self.stage(epoch) == "mse":
            denoised = model(noisy, *mask, add_noise=False, stage="denoised")
            unit = net.noise.scale(clean).amax(dim=tuple(range(1, clean.ndim)), keepdim=True)
            error = ((denoised - clean) / unit.clamp_min(1e-30) * self.sigma).square()
            return error.flatten(1).mean(1)
        with torch.no_grad():
            reference = net.predict(clean, *mask)
        return task.divergence(model(noisy, *mask, add_noise=False), reference, batch)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "objective": self.objective}


def _base_fingerprint(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What identifies the base model of a denoiser run: its file's content (SHA-256), task
    and model config (a base retrained in place is another base; a renamed copy is not)."""
    return {"sha256": file_sha256(path), "task": ckpt["task"], "model_config": ckpt["model_config"]}


def _check_same_data(base: dict[str, Any], info: dict[str, Any], path: Path) -> None:
    """The data must have the base model's input shape and labels."""
    for key in ("input_shape", "classes"):
        if key in base and base.get(key) != info.get(key):
            raise DefendError(
                f"the data's {key} {info.get(key)} differs from {path.name}'s {base.get(key)}: "
                "train the denoiser on the data the base model was trained on"
            )


def train_denoiser(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    sigma: float,
    *,
    objective: str = "mse",
    depth: int = DEFAULT_DEPTH,
    width: int = DEFAULT_WIDTH,
    config: Any = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train a denoiser for the base model of ``checkpoint`` on ``data_dir`` (module doc).

    Args:
        checkpoint: the frozen base model (``defend train`` checkpoint).
        sigma: the noise std (images: pixel units of [0, 1]; k-space: multiples of the
            training split's k-space unit, :class:`~defend.smooth.noise.KspaceNoise`).
        objective: ``mse``, ``stability`` or ``mse-stability``.
        depth, width: the DnCNN's.
        config: :class:`~defend.train.TrainConfig` (epochs, lr, batch size, seed, device).

    Returns:
        The per-epoch history (validation: the base task's metrics on denoised noisy inputs).
    """
    config = config or TrainConfig()
    check_writable(out, "file")
    path = Path(checkpoint)
    base_ckpt = load_checkpoint(path)
    task = get_task(base_ckpt["task"])
    denoising = Denoising(sigma, objective, config.epochs)
    train_set, val_set, info = _base_data(task, base_ckpt, path, data_dir, log)
    base = load_estimator(base_ckpt, device="cpu").model
    model_config = _model_config(task, info, depth, width)
    noise, extra = _noise(sigma, task.name == "recon", data_dir, base_ckpt)
    seed_everything(config.seed)
    model = Denoised(build_denoiser(model_config), base, noise)
    data = {"train": fingerprint(train_set), "val": fingerprint(val_set)}
    run = run_config(config, data=data, base=_base_fingerprint(path, base_ckpt), **extra)
    meta = {"kind": "denoiser", "model_config": model_config, "data": base_ckpt["data"]}
    meta.update(loss=objective, run=run, base=_base_fingerprint(path, base_ckpt), **extra)
    return fit(
        task,
        model,
        train_set,
        val_set,
        config,
        Path(out),
        meta=meta,
        objective=denoising,
        resume=resume,
        log=log,
    )


def _base_data(
    task: Task,
    base_ckpt: dict[str, Any],
    path: Path,
    data_dir: str | os.PathLike,
    log: Callable[[str], None],
) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_set, val_set, info)`` of ``data_dir`` for the base model of ``base_ckpt``
    (read from ``path``): reconstruction under its acquisition (sampling mask).

    Raises:
        DefendError: the data's input shape or classes are not the base model's.
    """
    acquisition = base_ckpt["data"].get("acquisition")
    acquisition = Acquisition.from_dict(acquisition) if acquisition else None
    train_set, val_set, info = _load_splits(task.name, Path(data_dir), acquisition, log)
    _check_same_data(base_ckpt["data"], info, path)
    return train_set, val_set, info


def _model_config(task: Task, info: dict[str, Any], depth: int, width: int) -> dict[str, Any]:
    """The DnCNN's config: k-space (reconstruction) or images of the data's channels."""
    return denoiser_config(task.name, info["input_shape"], depth, width)


def denoiser_config(
    task: str, input_shape: tuple[int, ...] | list[int], depth: int = DEFAULT_DEPTH,
    width: int = DEFAULT_WIDTH,
) -> dict[str, Any]:  # fmt: skip
    """The config (:func:`~defend.models.dncnn.build_denoiser`'s) of ``task``'s denoiser for
    inputs of ``input_shape``: k-space (reconstruction) or images (C, H, W) of C channels."""
    recon = kind_of(task) == "recon"
    model_config = {"domain": "kspace" if recon else "image", "depth": depth, "width": width}
    if not recon:
        model_config["channels"] = int(input_shape[0])
    return model_config


def _noise(
    sigma: float, recon: bool, data_dir: Any, base_ckpt: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The training noise and what the checkpoint records of it (k-space: ``noise``, the
    unit of the training split, under each sample's random training mask)."""
    if not recon:
        return ImageNoise(sigma), {}
    unit = training_unit(data_dir, base_ckpt)
    noise = KspaceNoise(sigma, unit, None)
    return noise, {"noise": {"sigma": sigma, "unit": unit, "noise_std": noise.noise_std}}


def load_denoiser(
    path: str | os.PathLike, base: str | os.PathLike | dict[str, Any] | None = None
) -> nn.Module:
    """The denoiser of a ``defend train denoiser`` checkpoint, in eval mode, with the
    k-space unit it was trained for as ``kspace_unit`` (None: an image denoiser, or one
    trained before the unit was recorded).

    Args:
        path: the denoiser checkpoint.
        base: the checkpoint of the model it will guard (or its loaded dict): refused with
            a one-line :class:`CheckpointError` when its task or input differs from the
            denoiser's (a denoiser serves every model of its task and data, e.g. a recon
            denoiser both U-Net and VarNet).
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "denoiser":
        raise CheckpointError(f"{path}: not a denoiser checkpoint (defend train denoiser)")
    if base is not None:
        other = base if isinstance(base, dict) else load_checkpoint(base)
        same_input = other["data"].get("input_shape") == ckpt["data"].get("input_shape")
        if other["task"] != ckpt["task"] or not same_input:
            raise CheckpointError(
                f"{path}: a denoiser for {ckpt['task']} inputs {ckpt['data'].get('input_shape')}"
                f", not for this {other['task']} model's {other['data'].get('input_shape')}"
            )
    denoiser = build_denoiser(ckpt["model_config"])
    prefix = "denoiser."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    denoiser.load_state_dict(state)
    denoiser.kspace_unit = (ckpt.get("noise") or {}).get("unit")
    return denoiser.eval()
