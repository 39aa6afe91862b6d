"""The attacks ``defend attack`` runs by name: the plain ones (:data:`defend.attacks.ATTACKS`)
and the adaptive ones built on a defence (Carlini et al. 2019: evaluate a defence against an
attack that knows it)."""

from __future__ import annotations

from defend.adaptive.evading_hallucination import EvadingHallucination
from defend.attacks import ATTACKS as PLAIN
from defend.attacks import RegisteredAttack

#: name -> the attack class and the task whose checkpoints it attacks
ATTACKS: dict[str, RegisteredAttack] = {
    **PLAIN,
    "hallucination-evade": RegisteredAttack(EvadingHallucination, "recon"),
}
