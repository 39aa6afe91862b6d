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

from dataclasses import dataclass
from typing import Any

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

__all__ = [
    "ATTACKS",
    "DGDE",
    "RegisteredAttack",
    "HallucinationAttack",
    "SegmentationFGSM",
    "TorchAttack",
    "region_mask",
]


def __getattr__(name: str) -> Any:
    """The attack classes and ``ATTACKS`` (CLI name -> :class:`RegisteredAttack`), imported
    on first use so that ``defend.attacks.budget`` and ``.region`` load without ART."""
    import importlib

    if name in _CLASSES:
        return getattr(importlib.import_module(f"defend.attacks.{_CLASSES[name]}"), name)
    if name == "ATTACKS":
        return {key: RegisteredAttack(__getattr__(cls), task)
                for key, (cls, task) in _ATTACKS.items()}  # fmt: skip
    raise AttributeError(f"module 'defend.attacks' has no attribute '{name}'")
