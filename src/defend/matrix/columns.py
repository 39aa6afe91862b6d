"""The matrix's attack columns: one function per attack, one line in :data:`ATTACKS`.

Each takes ``(estimator, x, y, eps, params, positions, seed)`` and returns the attacked inputs
(the shape of ``x``). ``estimator`` is what the attacker sees: the base model's ART estimator,
or for an adaptive column the smoothed model's EOT estimator or the detector-aware attack's
settings in ``params`` (``ATTACK+evade``: the attack with the detector's score in its
loss). ``eps`` is in the units of the task's ``defend attack`` command (recon:
relative l-inf in k-space; seg and cls: l-inf in pixel units of [0, 1]); ``positions`` (N,)
seed each sample, so that the numbers do not depend on how samples are grouped.

* ``hallucination``, ``seg-fgsm``, ``dgde``: the three seed attacks (``defend attack``'s);
* ``seg-pgd``: seg-fgsm iterated (``max_iter``), the iterative twin of FGSM;
* ``art-pgd``: ART's own ``ProjectedGradientDescent``, the outside attack;
* ``noise``: random signs at the same l-inf budget (uniform on the budget's corners), the
  check that the white-box attacks beat chance;
* ``real-feature`` (recon, no eps): not an attack but a real finding, the hallucination
  attack's feature put into the imaged object and acquired through the coils and the mask
  (:mod:`defend.data.lesion`), the check that a defence still shows what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from defend.adaptive.evading_hallucination import EvadingHallucination
from defend.adaptive.evading_pgd import EvadingPGD
from defend.attacks import registered_attacks
from defend.attacks.apply import attack_arrays
from defend.attacks.art_pgd import art_pgd, kspace_pgd
from defend.attacks.dgde import DGDE
from defend.attacks.hallucination import HallucinationAttack, sampled_columns
from defend.attacks.params import Param, by_name
from defend.attacks.seg_fgsm import SegmentationFGSM
from defend.attacks.torch_attack import attack_batch
from defend.data.lesion import add_lesion
from defend.errors import DefendError
from defend.matrix.measures import Hallucination
from defend.plugins import load_plugins


def _seed_attack(name: str) -> Callable[..., np.ndarray]:
    def run(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
            params: dict[str, Any], positions: np.ndarray, seed: int) -> np.ndarray:  # fmt: skip
        given = dict(params) if eps is None else {**params, "eps": eps}
        x_adv, _ = attack_arrays(estimator, name, x, y, given, seed=seed, indices=positions)
        return x_adv

    return run


def _evading(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
             params: dict[str, Any], positions: np.ndarray, seed: int) -> np.ndarray:  # fmt: skip
    """The hallucination attack with the detector's logit in its loss (``params``:
    ``detector``, ``weight``, and the hallucination attack's)."""
    given = {k: v for k, v in params.items() if k != "weight"}
    given["evade_weight"] = params.get("weight", 1.0)
    attack = EvadingHallucination(estimator, **given, **({} if eps is None else {"eps": eps}))
    x_adv, _ = attack_arrays(estimator, attack, x, y, seed=seed, indices=positions)
    return x_adv


def _evading_pgd(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
                 params: dict[str, Any], positions: np.ndarray,
                 seed: int) -> np.ndarray:  # fmt: skip
    """PGD with the input detector's margin in its loss (``params``: ``detector``,
    ``weight``, and the steps of the attack it adapts: ``max_iter`` or ART PGD's ``steps``)."""
    steps = int(params.get("max_iter", params.get("steps", 10)))
    attack = EvadingPGD(estimator, detector=params["detector"], eps=eps, max_iter=steps,
                        evade_weight=params.get("weight", 1.0), seed=seed)  # fmt: skip
    x_adv, _ = attack_arrays(estimator, attack, x, y, seed=seed, indices=positions)
    return x_adv


def _art_pgd(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
             params: dict[str, Any], positions: np.ndarray, seed: int) -> np.ndarray:  # fmt: skip
    """ART's PGD raising the task's loss: recon on the real parts of the sampled k-space
    (:func:`~defend.attacks.art_pgd.kspace_pgd`), images from one random start (ART starts
    at random only for classifiers: seg starts from the clean image)."""

    steps = int(params.get("steps", 10))
    np.random.seed(seed)  # ART's random start draws from numpy's global generator
    if x.ndim == 5:
        return kspace_pgd(estimator, x, y, eps, steps=steps)
    target = y
    if y.ndim == 1:  # class labels -> one-hot, as ART's classifiers take them
        target = np.eye(estimator.nb_classes, dtype=np.float32)[y]
    random_init = 1 if y.ndim == 1 else 0
    batch = attack_batch(estimator, x)
    return art_pgd(estimator, eps, steps, batch, random_init).generate(x, y=target)


def _noise(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
           params: dict[str, Any], positions: np.ndarray, seed: int) -> np.ndarray:  # fmt: skip
    """Random signs at the l-inf budget: on the real parts of the sampled k-space (recon,
    the hallucination attack's relative units) or on the pixels (clipped to [0, 1])."""
    signs = np.stack([np.random.default_rng([seed, int(p)]).choice([-1.0, 1.0], x.shape[1:])
                      for p in positions]).astype(np.float32)  # fmt: skip
    if x.ndim == 5:
        xt = torch.as_tensor(x)
        columns = sampled_columns(xt, estimator).float()
        bound = HallucinationAttack(estimator, eps=1.0).budget.bound(xt, columns).numpy()
        real = (columns * torch.tensor([1.0, 0.0])).expand_as(xt).numpy()
        return (x + signs * eps * bound * real).astype(np.float32)
    return np.clip(x + eps * signs, 0.0, 1.0).astype(np.float32)


def _real_feature(estimator: Any, x: np.ndarray, y: np.ndarray, eps: float | None,
                  params: dict[str, Any], positions: np.ndarray,
                  seed: int) -> np.ndarray:  # fmt: skip
    """k-space of the same slices with a real feature acquired in them: the hallucination
    attack's region (``params``: its region settings) at ``alpha`` x the range of the
    ground truth ``y`` (N, h, w), through the coils and the measured columns."""

    feature = torch.as_tensor(Hallucination(estimator, params).feature(y))
    xt = torch.as_tensor(x).float()
    return add_lesion(xt, sampled_columns(xt, estimator), feature).numpy()


@dataclass(frozen=True)
class Column:
    """An attack column: ``run(estimator, x, y, eps, params, positions, seed) -> x_adv``
    (module doc) and whether it ``takes_eps`` (one cell per eps of the grid) or not."""

    run: Callable[..., np.ndarray]
    takes_eps: bool


#: attack column name -> :class:`Column`
ATTACKS: dict[str, Column] = {
    "hallucination": Column(_seed_attack("hallucination"), True),
    "hallucination+evade": Column(_evading, True),
    "seg-pgd+evade": Column(_evading_pgd, True),
    "art-pgd+evade": Column(_evading_pgd, True),
    "seg-fgsm": Column(_seed_attack("seg-fgsm"), True),
    "seg-pgd": Column(_seed_attack("seg-fgsm"), True),  # with the configured max_iter
    "dgde": Column(_seed_attack("dgde"), False),
    "art-pgd": Column(_art_pgd, True),
    "noise": Column(_noise, True),
    "real-feature": Column(_real_feature, False),
}
STEPS = Param("steps", 10, "ART PGD's iterations", int, "steps", low=1)
#: the parameters of each ``[attack.NAME]`` section of a matrix configuration (the grid sets
#: each cell's eps and seed, so a section may not)
SECTIONS: dict[str, dict[str, Param]] = {
    name: {k: p for k, p in by_name(params).items() if k not in ("eps", "seed", "verbose")}
    for name, params in {
        "hallucination": HallucinationAttack.PARAMS,
        "seg-fgsm": SegmentationFGSM.PARAMS,
        "seg-pgd": SegmentationFGSM.PARAMS,
        "dgde": DGDE.PARAMS,
        "art-pgd": (STEPS,),
        "noise": (),
        "evade": (Param("weight", 1.0, "the detector's score in the adaptive attack's loss",
                        float, low=0),),
        "inside-radius": (STEPS,),
    }.items()
}  # fmt: skip


def column(name: str) -> Column:
    """The column called ``name``: one of :data:`ATTACKS` or a registered attack
    (:func:`defend.attacks.register_attack`; the plugins are loaded if it is not yet
    registered, as in a fresh Ray worker), run as the seed attacks are."""
    if name in ATTACKS:
        return ATTACKS[name]
    entry = registered_attacks().get(name)
    if entry is None:
        load_plugins()
        entry = registered_attacks().get(name)
    if entry is None:
        raise DefendError(f"unknown attack column '{name}' (is its plugin in DEFEND_PLUGINS?)")
    return Column(_seed_attack(name), "eps" in by_name(entry.attack.PARAMS))


def section_params(name: str) -> dict[str, Param]:
    """The parameters ``[attack.NAME]`` may set (:data:`SECTIONS`, or a registered attack's
    declared ones but eps, seed and verbose)."""
    if name in SECTIONS:
        return SECTIONS[name]
    params = by_name(registered_attacks()[name].attack.PARAMS)
    return {k: p for k, p in params.items() if k not in ("eps", "seed", "verbose")}


def check_section(name: str, section: dict[str, Any]) -> None:
    """Raise a one-line :class:`DefendError` unless every key of ``[attack.NAME]`` is a
    declared parameter of that column with an allowed value."""
    declared = section_params(name)
    for key, value in section.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise DefendError(f"has no parameter {key!r} (its parameters: {known})")
        declared[key].check(value)


#: per task, the attacks with a detector-aware version (``NAME+evade``) against its detector
EVADING = {"recon": ("hallucination",), "seg": ("seg-pgd", "art-pgd"), "cls": ("art-pgd",)}
#: the attacks that follow gradients (their EOT version is the adaptive attack on smoothing)
GRADIENT = ("hallucination", "seg-fgsm", "seg-pgd", "art-pgd")
