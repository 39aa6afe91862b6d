"""The methods of ``defend train --adversarial``, built from their settings.

:func:`make_objective` checks a method against its task (:data:`METHODS`), fills in the
defaults (:data:`DEFAULT_EPS`, :data:`DEFAULT_STEPS`) and builds its
:class:`~defend.train.objectives.Adversarial` objective: :func:`image_objective` for images
(pgd, fgsm-rs, trades on seg and cls), :func:`kspace_objective` for a reconstruction model's
k-space input (pgd, hallucination). A new method is one function and one line there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from defend.attacks.budget import KspaceBudget
from defend.errors import DefendError
from defend.tasks import Batch, Task, kind_of
from defend.train import perturb
from defend.train.objectives import Adversarial, Hallucination, Perturb, step_fraction


def _image_perturb(step: float | None, clip: tuple[float, float] | None, loss: Any) -> Perturb:
    """l-inf PGD on images (:func:`perturb.linf_pgd`), ``loss(task, model, batch)`` giving
    the per-sample loss to raise (None: the task's training loss)."""

    def run(task: Task, model: nn.Module, batch: Batch, eps: float, steps: int) -> torch.Tensor:
        size = step_fraction(step, steps) * eps
        raise_ = loss(task, model, batch) if loss is not None else None
        return perturb.linf_pgd(task, model, batch, eps, steps, size, clip, raise_)

    return run


def _bce(task: Task, model: nn.Module, batch: Batch) -> Callable:
    """Wang & Xu's attack loss on segmentation: binary cross-entropy to the target masks."""
    from defend.losses import seg_loss  # here: defend.losses imports smp, for seg only

    return lambda pred, b: seg_loss("bce", pred.float(), b["target"])


def _divergence_from_clean(task: Task, model: nn.Module, batch: Batch) -> Callable:
    """TRADES' inner loss: the divergence from the clean prediction (fixed, no gradient)."""
    with torch.no_grad():
        clean = task.forward(model, batch)
    return lambda pred, b: task.divergence(pred, clean, b)


#: the seg attack losses of ``--attack-loss`` (``bce``: Wang & Xu's stronger attack)
ATTACK_LOSSES = {"bce": _bce, "training": None}


def image_objective(
    method: str,
    eps: float,
    steps: int,
    step: float | None = None,
    attack_loss: str = "training",
    clip: tuple[float, float] | None = (0.0, 1.0),
    **kwargs: Any,
) -> Adversarial:
    """``pgd`` / ``fgsm-rs`` / ``trades`` on images in [0, 1] (segmentation, classification).

    Args:
        method: ``pgd`` (Madry et al.), ``fgsm-rs`` (Wong et al.; one step, guarded against
            catastrophic overfitting) or ``trades`` (Zhang et al.; ``beta`` default 6).
        eps: l-inf budget on the image range. steps: attack steps per batch.
        step: step size as a fraction of eps (default
            :func:`~defend.train.objectives.step_fraction`).
        attack_loss: the loss PGD / FGSM-RS (and robust validation) raise: ``training`` or
            ``bce`` (segmentation, Wang & Xu's stronger attack).
        clip: the valid input range.
        kwargs: ``mix``, ``warmup_epochs``, ``beta``, ``val_steps`` (:class:`Adversarial`).
    """
    if not 0 < eps <= 1:
        raise DefendError(f"--eps must be in (0, 1] (images are in [0, 1]), got {eps}")
    if method == "fgsm-rs" and steps != 1:
        raise DefendError(f"fgsm-rs takes one step (--steps 1), got --steps {steps}")
    if attack_loss not in ATTACK_LOSSES:
        raise DefendError(f"--attack-loss must be one of {', '.join(ATTACK_LOSSES)}")
    attack = _image_perturb(step, clip, ATTACK_LOSSES[attack_loss])
    settings = {"step": step_fraction(step, steps), "attack_loss": attack_loss}
    if method == "trades":
        kwargs.setdefault("beta", 6.0)
        inner = _image_perturb(step, clip, _divergence_from_clean)
        return Adversarial(inner, method, eps, steps, val_perturb=attack, **kwargs, **settings)
    guard = method == "fgsm-rs"
    return Adversarial(attack, method, eps, steps, guard=guard, **kwargs, **settings)


def kspace_objective(
    method: str,
    eps: float,
    steps: int,
    step: float | None = None,
    norm: str = "inf",
    clean_floor: float | None = None,
    **kwargs: Any,
) -> Adversarial:
    """``pgd`` or ``hallucination`` training of a reconstruction model on its k-space input.

    Args:
        method: ``pgd`` (:func:`perturb.kspace_pgd`: raise the error to the ground truth) or
            ``hallucination`` (:func:`perturb.hallucinate`: random regions and contrasts).
        eps: relative budget, the units of ``defend attack hallucination`` (a fraction of the
            k-space norm). steps: attack steps per batch.
        step: step size as a fraction of eps (default
            :func:`~defend.train.objectives.step_fraction`).
        norm: ``inf`` or ``2`` (per coil).
        clean_floor: hallucination: the best checkpoint's clean-SSIM margin (default
            :data:`~defend.train.objectives.CLEAN_FLOOR`; :class:`Hallucination`).
        kwargs: ``mix``, ``warmup_epochs``, ``beta``, ``val_steps`` (:class:`Adversarial`).
    """
    if clean_floor is not None and method != "hallucination":
        raise DefendError("--clean-floor is for --adversarial hallucination")
    budget = KspaceBudget(eps, norm)
    attack = perturb.kspace_pgd if method == "pgd" else perturb.hallucinate

    def run(task: Task, model: nn.Module, batch: Batch, eps_now: float, n: int) -> torch.Tensor:
        at = replace(budget, eps=eps_now)
        return attack(task, model, batch, at, n, step_fraction(step, n))

    settings = {"step": step_fraction(step, steps), "norm": norm}
    if method == "pgd":
        return Adversarial(run, method, eps, steps, **kwargs, **settings)
    floor = {} if clean_floor is None else {"clean_floor": clean_floor}
    return Hallucination(
        run, budget, name=method, eps=eps, steps=steps, **floor, **kwargs, **settings
    )


#: ``defend train --adversarial`` methods per task
METHODS: dict[str, tuple[str, ...]] = {
    "recon": ("pgd", "hallucination"),
    "seg": ("pgd", "fgsm-rs", "trades"),
    "cls": ("pgd", "fgsm-rs", "trades"),
}
#: default eps per task: that of the matching ``defend attack`` command (recon: the
#: hallucination attack's relative l-inf 0.1; seg: seg-fgsm's 0.008), cls: 8 / 255
DEFAULT_EPS = {"recon": 0.1, "seg": 0.008, "cls": 8 / 255}
#: default attack steps per training batch
DEFAULT_STEPS = {"pgd": 7, "fgsm-rs": 1, "trades": 10, "hallucination": 5}


#: recon hallucination training's default consistency weight: the measured recipe's
#: (docs/hardening.md: fine-tuned from a standard model with ``--beta 4``)
HALLUCINATION_BETA = 4.0


def make_objective(
    task: str,
    method: str,
    eps: float | None = None,
    steps: int | None = None,
    step: float | None = None,
    mix: float = 1.0,
    warmup_epochs: int = 0,
    beta: float | None = None,
    attack_loss: str | None = None,
    norm: str = "inf",
    clean_floor: float | None = None,
) -> Adversarial:
    """The adversarial-training objective of ``defend train TASK --adversarial METHOD``.

    Args:
        task: ``recon``, ``seg`` or ``cls``. method: one of ``METHODS[task]``.
        eps: budget (default :data:`DEFAULT_EPS`, the units of the matching attack command).
        steps: attack steps per training batch (default :data:`DEFAULT_STEPS`; recon pgd 5).
        step: step size as a fraction of eps. mix: attacked fraction of each batch.
        warmup_epochs: linear eps warm-up. beta: TRADES / consistency weight (trades: 6;
            recon hallucination: 4, the recipe docs/hardening.md measured).
        attack_loss: seg ``bce`` (default) or ``training``. norm: recon ``inf`` or ``2``.
        clean_floor: recon hallucination: the best checkpoint's clean-SSIM margin
            (default :data:`~defend.train.objectives.CLEAN_FLOOR`).
    """
    if method not in METHODS.get(kind_of(task), ()):
        fits = [t for t, methods in METHODS.items() if method in methods]
        where = f" (it fits {', '.join(fits)})" if fits else ""
        raise DefendError(
            f"--adversarial {method} does not fit task {task}{where}: choose "
            f"{', '.join(METHODS.get(kind_of(task), ()))}"
        )
    eps = DEFAULT_EPS[kind_of(task)] if eps is None else eps
    steps = (5 if kind_of(task) == "recon" else DEFAULT_STEPS[method]) if steps is None else steps
    if steps < 1:
        raise DefendError(f"--steps must be >= 1, got {steps}")
    settings: dict[str, Any] = {"mix": mix, "warmup_epochs": warmup_epochs}
    if beta is None and method == "hallucination":
        beta = HALLUCINATION_BETA
    if beta is not None:
        settings["beta"] = beta
    if kind_of(task) == "recon":
        if attack_loss is not None:
            raise DefendError("--attack-loss is for seg and cls; recon attacks use their own")
        return kspace_objective(method, eps, steps, step, norm, clean_floor, **settings)
    if clean_floor is not None:
        raise DefendError("--clean-floor is for recon --adversarial hallucination")
    if norm != "inf":
        raise DefendError("--norm is for recon; image attacks are l-inf")
    if attack_loss is None:
        attack_loss = "bce" if kind_of(task) == "seg" else "training"
    elif kind_of(task) == "cls" and attack_loss != "training":
        raise DefendError("--attack-loss bce is for seg; cls attacks raise cross-entropy")
    return image_objective(method, eps, steps, step, attack_loss, **settings)
