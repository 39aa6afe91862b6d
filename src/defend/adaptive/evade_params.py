"""The detector-aware attacks' parameters, declared once; importable without torch or ART
(as :mod:`defend.attacks.declared`, for ``defend attack``'s options at start-up)."""

from __future__ import annotations

from pathlib import Path

from defend.attacks.declared import HALLUCINATION
from defend.attacks.params import COMMON, Param

EVADING_HALLUCINATION = HALLUCINATION + (
    Param("detector", None, "a defend train detector checkpoint (or a loaded Detector): "
          "attack it jointly, its score in the attack's loss", object, flag="--evade",
          cli_type=Path),
    Param("evade_weight", 1.0, "the weight of the detector's logit in the loss", float,
          low=0),
)  # fmt: skip

EVADING_PGD = COMMON + (
    Param("detector", None, "a defend train input-detector checkpoint, or an ART "
          "classifier with two logits (clean, adversarial) on the same images", object,
          cli=False),
    Param("eps", 8 / 255, "l-inf budget", float, "[0, 1] pixel units", low=0, high=1,
          open_low=True),
    Param("max_iter", 10, "PGD steps", int, "steps", low=1),
    Param("step", None, "step size (default 2.5 / max_iter, Madry et al.)", float,
          "fraction of eps", low=0, open_low=True, optional=True),
    Param("evade_weight", 1.0, "the weight of the detector's margin in the loss", float,
          low=0),
    Param("threshold", None, "the margin above which an image counts as flagged (default: "
          "the checkpoint's calibrated one; 0, ART's argmax, for a classifier passed "
          "directly)", float, "logit", optional=True),
)  # fmt: skip
