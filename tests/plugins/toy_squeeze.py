"""A toy defence, added the way docs/design.md's recipe "Add a defence" says: feature
squeezing by bit-depth reduction (Xu, Evans and Qi 2018, "Feature Squeezing"): the classifier
sees its input rounded to 2 bits a channel.

Importing this module registers it; ``DEFEND_PLUGINS=toy_squeeze`` (with this folder on the
Python path) makes ``toy-squeeze`` a defence a classification section of the matrix may list.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defend.matrix import register_defence

#: grey levels a channel keeps
LEVELS = 4


def squeeze(x: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] rounded to :data:`LEVELS` levels."""
    return np.round(x * (LEVELS - 1)) / (LEVELS - 1)


def apply(system: Any, config: dict[str, Any], paths: dict[str, Any]) -> None:
    """The defended outputs: the standard model's on the squeezed inputs."""
    outputs = system.outputs
    system.outputs = lambda x, positions: outputs(squeeze(x).astype(x.dtype), positions)


register_defence("toy-squeeze", apply, tasks=("cls",))
