"""Evasion attacks written as ART attacks, one per module behind :class:`TorchAttack`.

- :class:`HallucinationAttack` (k-space -> image estimators): masked iterative FGSM in
  k-space that makes a reconstruction hallucinate a feature in a chosen region.
- :class:`SegmentationFGSM` (image -> per-pixel logits): FGSM / PGD with BCE, Dice,
  Dice+Focal or the training loss.
- :class:`DGDE` (any ART classifier): black-box few-pixel differential evolution.
"""

from defend.attacks.base import TorchAttack
from defend.attacks.dgde import DGDE
from defend.attacks.hallucination import HallucinationAttack
from defend.attacks.region import region_mask
from defend.attacks.seg_fgsm import SegmentationFGSM

#: CLI name -> (attack class, the task whose checkpoints it attacks)
ATTACKS = {
    "hallucination": (HallucinationAttack, "recon"),
    "seg-fgsm": (SegmentationFGSM, "seg"),
    "dgde": (DGDE, "cls"),
}

__all__ = [
    "ATTACKS",
    "DGDE",
    "HallucinationAttack",
    "SegmentationFGSM",
    "TorchAttack",
    "region_mask",
]
