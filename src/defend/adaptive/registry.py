"""The attacks ``defend attack`` runs by name: the plain ones (:data:`defend.attacks.ATTACKS`)
and the adaptive ones built on a defence (Carlini et al. 2019: evaluate a defence against an
attack that knows it)."""

from __future__ import annotations

import defend.attacks
from defend.adaptive.evading_hallucination import EvadingHallucination
from defend.attacks import ATTACKS as PLAIN
from defend.attacks import RegisteredAttack

#: the adaptive attacks ``defend attack`` runs by name
ADAPTIVE = {"hallucination-evade": RegisteredAttack(EvadingHallucination, "recon")}
#: name -> the attack class and the task whose checkpoints it attacks (the built-in ones)
ATTACKS: dict[str, RegisteredAttack] = {**PLAIN, **ADAPTIVE}


def all_attacks() -> dict[str, RegisteredAttack]:
    """:data:`ATTACKS` and the attacks registered since (:func:`defend.attacks.register_attack`)."""
    return {**defend.attacks.ATTACKS, **ADAPTIVE}
