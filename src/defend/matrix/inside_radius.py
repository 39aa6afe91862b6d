"""The ``inside-radius`` column: an attack that stays inside each sample's certificate.

A certificate says the smoothed model's answer does not change for any perturbation inside
its radius. An attack outside every radius cannot test that, so a certificate check fed by
the other columns is 0 by construction. This column attacks each smoothing row with ART's
l2 ``ProjectedGradientDescent`` against the smoothed model's EOT estimator (Athalye et al.
2018; Salman et al. 2019), its budget per sample that sample's certified radius
(classification, segmentation: the clean certificate's l2 radius in pixel units;
reconstruction: the largest input radius ``eps_in`` of the centre-smoothing grid with a
finite output bound, in multiples of the noise's k-space unit, spent on the real and
imaginary parts of the sampled entries, the noise's support), and then asks the smoothed
model again. Per sample it records ``covered`` (the sample has a certificate: a class,
certified pixels, a finite bound) and ``violated`` (covered, and the smoothed answer under
the attack breaks the certificate: another class, a certified pixel with another label, an
output that moved further than the bound; an abstention is no answer and breaks nothing);
``certificate_violations`` counts them. With valid certificates ``violated`` stays near 0
(each certificate fails with probability at most ``alpha``); :func:`attack` with ``scale``
> 1 attacks beyond the radius, where the check must fire.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from defend.attacks.art_pgd import art_pgd
from defend.attacks.torch_attack import attack_batch
from defend.matrix.measures import Outputs
from defend.tasks import kind_of

#: PGD steps of eps / 4 each: enough to reach the radius from the clean input
STEPS = 10


def attack(defended: Any, clean: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
           config: dict[str, Any], scale: float = 1.0) -> np.ndarray:  # fmt: skip
    """The inputs attacked inside ``scale`` x each sample's certified radius.

    Args:
        defended: a smoothing row's :class:`~defend.matrix.rows.System`.
        clean: the row's clean certificates (:func:`~defend.matrix.rows.certificates`).
        x: (N, C, H, W) clean images in [0, 1] or recon k-space (N, coils, H, W, 2). y:
            their ground truth (cls labels (N,), seg masks (N, K, H, W), recon (N, h, w)).
        config: the matrix configuration (``smoothing.eot`` draws, ``attack.inside-radius``
            steps, ``run.seed``).
        scale: the budget over the radius (1: inside the certificate).

    Returns:
        the attacked inputs (the shape of ``x``); a sample without a certificate is left
        as it is.
    """

    radius = radii(defended, clean) * scale
    covered = np.flatnonzero(radius > 0)
    x_adv = x.copy()
    if len(covered) == 0:
        return x_adv
    seed = config["run"]["seed"]
    estimator = defended.eot(config["smoothing"]["eot"], seed)
    budget = radius[covered].reshape(-1, *([1] * (x.ndim - 1))).astype(np.float32)
    steps = int(config["attack"].get("inside-radius", {}).get("steps", STEPS))
    batch = attack_batch(estimator, x[covered])
    pgd = art_pgd(estimator, budget, steps, batch, random_init=0, norm=2)
    np.random.seed(seed)
    target = _away_from(defended, clean, y, covered, estimator)
    mask = None
    if kind_of(defended.task) == "recon":  # the noise's support: both parts of the sampled entries
        mask = np.broadcast_to(defended.smooth.noise.scale(torch.as_tensor(x[covered])) > 0,
                               x[covered].shape).astype(np.float32)  # fmt: skip
    x_adv[covered] = pgd.generate(x[covered], y=target, mask=mask)
    return x_adv


def radii(defended: Any, clean: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) each sample's certified l2 radius in the input's units (0: no certificate):
    cls / seg the clean certificate's; recon the largest grid radius with a finite bound,
    times the noise's k-space unit."""
    if kind_of(defended.task) != "recon":
        return np.asarray(clean["radius"], np.float64)
    finite = np.isfinite(clean["eps_out"])
    last = np.where(finite.any(1), finite.shape[1] - 1 - np.argmax(finite[:, ::-1], 1), -1)
    grid = np.asarray(clean["eps_in"], np.float64)
    return np.where(last >= 0, grid[np.maximum(last, 0)], 0.0) * defended.smooth.noise.unit


def _away_from(defended: Any, clean: dict[str, np.ndarray], y: np.ndarray,
               covered: np.ndarray, estimator: Any) -> np.ndarray:  # fmt: skip
    """What the attack moves away from: the certified answer (cls: its one-hot class; seg:
    the certified labels, the ground truth where a pixel has none; recon: the certified
    centre)."""
    if kind_of(defended.task) == "cls":
        return np.eye(estimator.nb_classes, dtype=np.float32)[clean["label"][covered]]
    if kind_of(defended.task) == "recon":
        return clean["center"][covered]
    labels = clean["labels"][covered]
    sure = labels != defended.smooth.ABSTAIN
    return np.where(sure, labels == 1, y[covered]).astype(np.float32)


def outcomes(defended: Any, clean: dict[str, np.ndarray], x: np.ndarray,
             adv_out: Outputs) -> dict[str, np.ndarray]:  # fmt: skip
    """Per sample (N,) ``covered`` and ``violated`` of the smoothed outputs ``adv_out``
    under the inside-radius attack of clean inputs ``x`` (module doc)."""
    task = defended.task
    covered = radii(defended, clean) > 0
    if kind_of(task) == "recon":
        broken = moved(defended, clean, x, adv_out) > _bound(clean)
    elif kind_of(task) == "cls":
        broken = ~adv_out.abstained & (adv_out.values != np.asarray(clean["label"]))
    else:
        labels = clean["labels"]
        sure = labels != defended.smooth.ABSTAIN
        other = adv_out.values != (labels == 1)
        broken = (sure & ~adv_out.abstained & other).reshape(len(labels), -1).any(1)
    return {"covered": covered.astype(np.float64),
            "violated": (covered & broken).astype(np.float64)}  # fmt: skip


def moved(defended: Any, clean: dict[str, np.ndarray], x: np.ndarray,
          out: Outputs) -> np.ndarray:  # fmt: skip
    """(N,) how far smoothed recon outputs ``out`` (images (N, h, w)) moved from the
    certified centres, relative to the norm of the base model's output on ``x`` (the bounds'
    unit); NaN where either abstained."""
    smooth = defended.smooth
    with torch.no_grad():
        xt = torch.as_tensor(x).float().to(smooth.device)
        scale = smooth.forward(xt).flatten(1).norm(dim=1).cpu().numpy()
    distance = np.linalg.norm((out.values - clean["center"]).reshape(len(x), -1), axis=1)
    either = out.abstained | clean["center_abstained"]
    return np.where(either, np.nan, distance / scale)


def _bound(clean: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) the output bound at each sample's largest certified input radius (inf: none)."""
    finite = np.isfinite(clean["eps_out"])
    last = finite.shape[1] - 1 - np.argmax(finite[:, ::-1], 1)
    bound = clean["eps_out"][np.arange(len(finite)), last]
    return np.where(finite.any(1), bound, np.inf)
