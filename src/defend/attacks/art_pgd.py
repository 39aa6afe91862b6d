"""ART's own PGD, the outside attack beside the project's (Carlini et al. 2019): the same budget
units as the project's attacks, ART's code doing the attacking."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def art_pgd(estimator: Any, eps: Any, steps: int, batch: int, random_init: int = 1,
            norm: float = np.inf) -> Any:  # fmt: skip
    """ART's ``ProjectedGradientDescent`` in ``norm`` (l-inf by default, or 2), step eps / 4
    (``eps``: a number or an array broadcasting on the input, per sample for l2; ART starts
    at random only for classifiers)."""
    # ART (~3 s) on first use: detect.examples imports this module for callers without it
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        estimator,
        norm=norm,
        eps=eps,
        eps_step=eps / 4,
        max_iter=steps,
        num_random_init=random_init,
        batch_size=batch,
        verbose=False,
    )


def kspace_pgd(
    estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | np.ndarray, steps: int = 10
) -> np.ndarray:
    """ART's PGD on the real parts of the sampled k-space, raising the reconstruction's loss
    to ``y``, at the hallucination attack's relative l-inf budget.

    Args:
        estimator: a reconstruction estimator (``defend.load_estimator``'s).
        x: (N, coils, H, W, 2) masked k-space. y: (N, h, w) the images to move away from.
        eps: relative l-inf budget (:class:`~defend.attacks.HallucinationAttack`'s units),
            one for all or one per sample (N,).
        steps: PGD iterations (no random start).

    Returns:
        (N, coils, H, W, 2) the attacked k-space.
    """
    # ART (~3 s) on first use, as above
    from defend.attacks import HallucinationAttack
    from defend.attacks.hallucination import sampled_columns
    from defend.attacks.torch_attack import attack_batch

    xt = torch.as_tensor(x)
    columns = sampled_columns(xt, estimator).float()
    unit = HallucinationAttack(estimator, eps=1.0).budget.bound(xt, columns).numpy()
    bound = unit * np.asarray(eps, np.float32).reshape(-1, 1, 1, 1, 1)
    bound = bound * np.ones((1, 1, 1, 1, 1), np.float32)
    mask = (columns * torch.tensor([1.0, 0.0])).expand_as(xt).numpy()
    batch = attack_batch(estimator, x)
    return art_pgd(estimator, bound, steps, batch, random_init=0).generate(x, y=y, mask=mask)
