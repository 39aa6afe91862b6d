"""The attacks adversarial training runs on each batch, as torch functions of a live model.

Each takes ``(task, model, batch, ...)`` with the batch on the model's device and returns new
inputs of the shape of ``batch["input"]``, detached. They run with whatever mode the model is
in: :mod:`defend.train.objectives` puts it in eval mode first. Random draws come from torch's
global generator, which the training loop seeds per epoch, so a resumed run draws the same.
They are made for the whole global batch and sliced to the batch's rows
(:func:`~defend.train.distributed.global_like`), so under torchrun every process draws what
one process draws for its rows, however the global batch is split.

* :func:`linf_pgd`: l-inf PGD on images in a box (Madry et al.; FGSM-RS is one step of it).
* :func:`kspace_pgd`: PGD on the sampled k-space in the hallucination attack's budget units,
  maximising the reconstruction error to the ground truth.
* :func:`hallucinate`: :class:`~defend.attacks.HallucinationAttack` at random regions and
  contrasts, the attack ``defend attack hallucination`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from defend.attacks.budget import KspaceBudget
from defend.attacks.region import REGIONS, random_regions
from defend.tasks import Batch, Task
from defend.train.distributed import current_share, global_like

#: ``loss(pred, batch) -> (B,)``: what an attack raises (default: the task's training loss)
AttackLoss = Callable[[torch.Tensor, Batch], torch.Tensor]


def linf_pgd(
    task: Task,
    model: nn.Module,
    batch: Batch,
    eps: float,
    steps: int,
    step: float,
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: AttackLoss | None = None,
) -> torch.Tensor:
    """l-inf PGD on ``batch["input"]``, raising ``loss`` (default: the task's training loss).

    Uniform random start in the eps-box, ``steps`` signed-gradient ascent steps of size
    ``step``, each projected onto the eps-box around the clean input and onto ``clip``. One
    step of size ``1.25 eps`` is FGSM with a random start (Wong et al.).

    Args:
        task, model, batch: the task, the model and a batch on its device; ``batch["input"]``
            (B, ...), e.g. images (B, C, H, W) in [0, 1].
        eps: the l-inf budget, in input units (e.g. 8 / 255 of the [0, 1] range).
        steps: ascent steps (>= 1). step: the step size, in input units.
        clip: the valid input range, or None.
        loss: ``(pred, batch) -> (B,)`` per-sample losses to raise.

    Returns:
        The adversarial inputs, detached, shape of ``batch["input"]``.
    """
    loss = loss or task.loss
    clean = batch["input"].detach()
    x = clean + global_like(clean, lambda t: t.uniform_(-eps, eps))
    for _ in range(steps):
        x = x.clamp(*clip) if clip is not None else x
        x.requires_grad_(True)
        value = loss(task.forward(model, {**batch, "input": x}), batch).sum()
        (grad,) = torch.autograd.grad(value, x)
        x = x.detach() + step * grad.sign()
        x = torch.minimum(torch.maximum(x, clean - eps), clean + eps)
    return (x.clamp(*clip) if clip is not None else x).detach()


def sampled(batch: Batch) -> torch.Tensor:
    """The measured columns of a recon batch, (B, 1, 1, W, 1) float 0/1: the batch's masks,
    which hold only columns that were acquired (fastMRI's padding columns are never in them)."""
    mask = batch["mask"]
    return mask.reshape(len(mask), 1, 1, mask.shape[-2], 1).to(batch["input"].dtype)


def kspace_pgd(task: Task, model: nn.Module, batch: Batch, budget: KspaceBudget, steps: int,
               step: float, loss: AttackLoss | None = None) -> torch.Tensor:  # fmt: skip
    """PGD on the sampled k-space raising ``loss`` (default: the reconstruction error to the
    ground truth, the task's loss).

    A uniform random start filling the l-inf box (l2: a random direction at the full
    budget), then ``steps`` ascent steps of ``step * bound`` (sign for l-inf, per-coil
    normalised gradient for l2), each projected onto the budget. Only the sampled entries
    (real parts for ``part="real"``) move, so unsampled k-space stays zero.

    Args:
        task, model, batch: a recon batch: ``input`` (B, coils, H, W, 2), ``mask``.
        budget: eps and its units (:class:`KspaceBudget`, as ``defend attack hallucination``).
        steps: ascent steps (>= 1). step: step size as a fraction of the budget.
        loss: ``(pred, batch) -> (B,)`` per-sample losses to raise.

    Returns:
        Adversarial k-space (B, coils, H, W, 2), detached.
    """
    loss = loss or task.loss
    clean = batch["input"].detach()
    columns = sampled(batch)
    movable = budget.movable(columns).expand_as(clean)
    bound = budget.bound(clean, columns)
    noise = global_like(clean, torch.rand_like if budget.norm == "inf" else torch.randn_like)
    delta = budget.project(budget.random_start(movable, bound, noise), bound)
    for _ in range(steps):
        delta.requires_grad_(True)
        value = loss(task.forward(model, {**batch, "input": clean + delta}), batch).sum()
        (grad,) = torch.autograd.grad(value, delta)
        delta = delta.detach() + step * bound * budget.direction(grad * movable) * movable
        delta = budget.project(delta, bound)
    return (clean + delta).detach()


def hallucination_attack(
    model: nn.Module,
    x: torch.Tensor,
    budget: KspaceBudget,
    steps: int,
    step: float,
    seed: int,
    **options: Any,
) -> Any:
    """The :class:`~defend.attacks.HallucinationAttack` of a live model on a recon batch ``x``
    (B, coils, H, W, 2): ``steps`` iterations without early stopping, no image metrics.

    Args:
        model: the reconstruction model, which masks k-space by the columns that are non-zero
            in ``x`` (the batch's own masks; training masks differ per sample).
        budget: eps and its units, as ``defend attack hallucination``.
        step: step size as a fraction of eps. seed: the attack's seed.
        options: the attack's region and contrast options (default: its centred line, 0.3).
    """
    # ART (through the attack and the estimators): ~3 s, only hallucination training needs it
    from defend.attacks.hallucination import HallucinationAttack
    from defend.estimators import ReconEstimator

    estimator = ReconEstimator(
        model,
        np.ones((1, 1, 1, x.shape[-2], 1), dtype=bool),
        tuple(x.shape[1:]),
        device=x.device,
        loss="l1",
    )
    return HallucinationAttack(
        estimator,
        eps=budget.eps,
        eps_mode=budget.mode,
        norm=budget.norm,
        part=budget.part,
        step=step,
        max_iter=steps,
        patience=0,
        image_metrics=False,
        batch_size=len(x),
        seed=seed,
        **options,
    )


def hallucinate(task: Task, model: nn.Module, batch: Batch, budget: KspaceBudget, steps: int,
                step: float, kinds: tuple[str, ...] = REGIONS,
                alpha: tuple[float, float] = (0.15, 0.6)) -> torch.Tensor:  # fmt: skip
    """:class:`~defend.attacks.HallucinationAttack` on a recon batch, at a random region
    (kind from ``kinds``, random size and position, :func:`random_regions`) and a random
    contrast (uniform in ``alpha``, either sign) per sample.

    Args:
        task, model, batch: a recon batch: ``input`` (B, coils, H, W, 2), ``mask``,
            ``target`` (B, h, w).
        budget: eps and its units, as ``defend attack hallucination``.
        steps: attack iterations (no early stopping). step: step size, fraction of eps.
        kinds: region shapes. alpha: (smallest, largest) absolute target contrast.

    Returns:
        Attacked k-space (B, coils, H, W, 2), detached.
    """
    x = batch["input"].detach()
    share = current_share(len(x))  # draws for the global batch; x holds share.rows of it
    n = share.total
    seed = int(torch.randint(2**62, (1,)))
    generator = torch.Generator().manual_seed(seed)
    regions = random_regions(tuple(batch["target"].shape[-2:]), n, generator, kinds)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    contrast = sign * torch.empty(n).uniform_(*alpha, generator=generator)
    attack = hallucination_attack(
        model,
        x,
        budget,
        steps,
        step,
        seed,
        region_mask=regions[share.rows],
        alpha=contrast[share.rows].numpy(),
    )
    return attack.generate(x, indices=range(share.start, share.stop)).detach()
