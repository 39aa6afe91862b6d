"""The ``inside-radius`` column: an attack that stays inside each sample's certificate.

A certificate says the smoothed model's answer does not change for any perturbation inside
its radius. An attack outside every radius cannot test that, so a certificate check fed by
the other columns is 0 by construction. This column attacks each smoothing row with ART's
l2 ``ProjectedGradientDescent`` against the smoothed model's EOT estimator (Athalye et al.
2018; Salman et al. 2019), its budget per sample that sample's certified radius
(classification, segmentation: the clean certificate's l2 radius in pixel units), and then
asks the smoothed model again. Per sample it records ``covered`` (the sample has a
certificate: a class, certified pixels) and ``violated`` (covered, and the smoothed answer
under the attack breaks the certificate: another class, a certified pixel with another
label; an abstention is no answer and breaks nothing); ``certificate_violations`` counts
them. With valid certificates ``violated`` stays near 0 (each certificate fails with
probability at most ``alpha``); :func:`attack` with ``scale`` > 1 attacks beyond the radius,
where the check must fire.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: PGD steps of eps / 4 each: enough to reach the radius from the clean input
STEPS = 10


def attack(defended: Any, clean: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
           config: dict[str, Any], scale: float = 1.0) -> np.ndarray:  # fmt: skip
    """The inputs attacked inside ``scale`` x each sample's certified radius.

    Args:
        defended: a smoothing row's :class:`~defend.matrix.defences.System`.
        clean: the row's clean certificates (:func:`~defend.matrix.defences.certificates`).
        x: (N, C, H, W) clean images in [0, 1]. y: their ground truth (cls labels (N,),
            seg masks (N, K, H, W)).
        config: the matrix configuration (``smoothing.eot`` draws, ``attack.inside-radius``
            steps, ``run.seed``).
        scale: the budget over the radius (1: inside the certificate).

    Returns:
        (N, C, H, W) attacked images; a sample without a certificate is left as it is.
    """
    from defend.attacks.art_pgd import art_pgd

    radius = np.asarray(clean["radius"], np.float32) * scale
    covered = np.flatnonzero(radius > 0)
    x_adv = x.copy()
    if len(covered) == 0:
        return x_adv
    seed = config["run"]["seed"]
    estimator = defended.eot(config["smoothing"]["eot"], seed)
    budget = radius[covered].reshape(-1, *([1] * (x.ndim - 1)))
    steps = int(config["attack"].get("inside-radius", {}).get("steps", STEPS))
    pgd = art_pgd(estimator, budget, steps, len(covered), random_init=0, norm=2)
    np.random.seed(seed)
    target = _away_from(defended.task, clean, y, covered, estimator)
    x_adv[covered] = pgd.generate(x[covered], y=target)
    return x_adv


def _away_from(task: str, clean: dict[str, np.ndarray], y: np.ndarray, covered: np.ndarray,
               estimator: Any) -> np.ndarray:  # fmt: skip
    """What the attack moves away from: the certified answer (cls: its one-hot class; seg:
    the certified labels, the ground truth where a pixel has none)."""
    if task == "cls":
        return np.eye(estimator.nb_classes, dtype=np.float32)[clean["label"][covered]]
    labels = clean["labels"][covered]
    return np.where(labels == 255, y[covered], labels == 1).astype(np.float32)


def outcomes(task: str, clean: dict[str, np.ndarray], adv_out: np.ndarray,
             scale: float = 1.0) -> dict[str, np.ndarray]:  # fmt: skip
    """Per sample (N,) ``covered`` and ``violated`` of the smoothed outputs ``adv_out``
    under the inside-radius attack (module doc; outputs as
    :mod:`defend.matrix.measures` formats them)."""
    covered = np.asarray(clean["radius"]) > 0
    if task == "cls":
        label = np.asarray(clean["label"])
        broken = (adv_out != -1) & (adv_out != label)
    else:
        labels = clean["labels"]
        sure, answered = labels != 255, ~np.isnan(adv_out)
        other = (np.nan_to_num(adv_out) > 0) != (labels == 1)
        broken = (sure & answered & other).reshape(len(labels), -1).any(1)
    return {"covered": covered.astype(np.float64),
            "violated": (covered & broken).astype(np.float64)}  # fmt: skip
