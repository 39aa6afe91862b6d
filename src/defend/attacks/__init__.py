"""Evasion attacks written as ART attacks, one per module behind :class:`TorchAttack`.

- :class:`HallucinationAttack` (k-space -> image estimators): masked iterative FGSM in
  k-space that makes a reconstruction hallucinate a feature in a chosen region.
- :class:`SegmentationFGSM` (image -> per-pixel logits): FGSM / PGD with BCE, Dice,
  Dice+Focal or the training loss.
- :class:`DGDE` (any ART classifier): black-box few-pixel differential evolution.

Attacks know nothing of the defences: the adaptive ones (EOT against smoothing, the
detector-aware attacks) are in :mod:`defend.adaptive`, a layer above both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from defend.errors import DefendError

#: attack name -> (module, class); the modules import ART, so they load on first use
_CLASSES = {
    "TorchAttack": "torch_attack",
    "DGDE": "dgde",
    "HallucinationAttack": "hallucination",
    "SegmentationFGSM": "seg_fgsm",
    "region_mask": "region",
}


@dataclass(frozen=True)
class RegisteredAttack:
    """An attack ``defend attack`` runs by name: its ``attack`` class and the ``task`` whose
    checkpoints it attacks."""

    attack: type
    task: str


#: CLI name -> (attack class name, the task whose checkpoints it attacks)
_ATTACKS = {
    "hallucination": ("HallucinationAttack", "recon"),
    "seg-fgsm": ("SegmentationFGSM", "seg"),
    "dgde": ("DGDE", "cls"),
}
#: the attacks :func:`register_attack` added (plugins), by name
_REGISTERED: dict[str, RegisteredAttack] = {}
#: names an attack may not take: the built-in attacks, the matrix's other columns and the
#: adaptive ones
RESERVED = (*_ATTACKS, "hallucination-evade", "seg-pgd", "art-pgd", "noise", "real-feature",
            "inside-radius", "evade")  # fmt: skip


def register_attack(name: str, attack: type, task: str) -> None:
    """Add your own attack under ``name``, for ``task``'s checkpoints.

    ``attack`` is a :class:`TorchAttack` subclass (``_generate_batch`` and its ``PARAMS``,
    :mod:`defend.attacks.params`). Registered, it is ``defend attack NAME`` (an option per
    parameter with ``cli=True``; load the module through ``DEFEND_PLUGINS``,
    :mod:`defend.plugins`), an attack of :func:`defend.attacks.apply.attack_arrays` and
    ``defend.adaptive.run_attack``, and a column the matrix's sections of ``task`` (and, for
    a built-in task, of the registered tasks of its kind) may list in ``attacks`` (one cell
    per eps when it declares ``eps``; its ``[attack.NAME]`` section is checked against its
    parameters; not in the default ``attacks``). Registering the same class again under
    the same name does nothing; anything else under a taken name is refused.
    """
    # ART and torch: only once an attack is added (the command line starts without them)
    from defend.attacks.torch_attack import TorchAttack
    from defend.tasks import TASKS

    if task not in TASKS:
        raise DefendError(f"register_attack: task must be one of {', '.join(TASKS)}, got {task!r}")
    if not (isinstance(attack, type) and issubclass(attack, TorchAttack)):
        raise DefendError(f"register_attack: {attack!r} is not a TorchAttack subclass")
    if not getattr(attack, "_estimator_requirements", None):
        raise DefendError(f"register_attack: {attack.__name__} names no _estimator_requirements "
                          "(the ART estimator kinds it attacks)")  # fmt: skip
    known = _REGISTERED.get(name)
    if name in RESERVED or (known is not None and known != RegisteredAttack(attack, task)):
        raise DefendError(f"register_attack: the name '{name}' is taken")
    _REGISTERED[name] = RegisteredAttack(attack, task)


def registered_attacks() -> dict[str, RegisteredAttack]:
    """The attacks :func:`register_attack` added, by name (without importing the built-in
    ones: the command line reads this at start-up)."""
    return dict(_REGISTERED)


__all__ = [
    "ATTACKS",
    "DGDE",
    "RegisteredAttack",
    "HallucinationAttack",
    "SegmentationFGSM",
    "TorchAttack",
    "region_mask",
    "register_attack",
    "registered_attacks",
]


def __getattr__(name: str) -> Any:
    """The attack classes and ``ATTACKS`` (CLI name -> :class:`RegisteredAttack`: the built-in
    attacks and the registered ones), imported
    on first use so that ``defend.attacks.budget`` and ``.region`` load without ART."""
    if name in _CLASSES:
        return getattr(importlib.import_module(f"defend.attacks.{_CLASSES[name]}"), name)
    if name == "ATTACKS":
        built_in = {key: RegisteredAttack(__getattr__(cls), task)
                    for key, (cls, task) in _ATTACKS.items()}  # fmt: skip
        return {**built_in, **_REGISTERED}
    raise AttributeError(f"module 'defend.attacks' has no attribute '{name}'")
