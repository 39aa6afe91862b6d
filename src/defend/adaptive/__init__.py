"""Adaptive attacks: attacks that know the defence they face (Carlini et al. 2019), one layer
above the attacks (:mod:`defend.attacks`) and the defences (:mod:`defend.smooth`,
:mod:`defend.detect`) they combine.

- :func:`~defend.adaptive.eot.eot_estimator`: the smoothed model as an estimator whose every
  forward pass averages noise draws (EOT), so any attack runs against smoothing unchanged.
- :class:`~defend.adaptive.evading_hallucination.EvadingHallucination`: the hallucination
  attack with the hallucination detector's score in its loss.
- :class:`~defend.adaptive.evading_pgd.EvadingPGD`: l-inf PGD on images with an input
  detector's score in its loss.
- :func:`~defend.adaptive.evasion.evaluate_evasion`: a detector against its detector-aware
  attack, weight by weight.
- :func:`~defend.adaptive.runner.run_attack`: ``defend attack``: any attack by name
  (:data:`~defend.adaptive.registry.ATTACKS`), plain, against the smoothed model, or
  detector-aware, with files written.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> module; they import ART and the defences, so they load on first use
_EXPORTS = {
    "ATTACKS": "registry",
    "EvadingHallucination": "evading_hallucination",
    "EvadingPGD": "evading_pgd",
    "eot_estimator": "eot",
    "evaluate_evasion": "evasion",
    "run_attack": "runner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"defend.adaptive.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'defend.adaptive' has no attribute '{name}'")
