"""Nothing computed twice: adversarial examples and a row's outputs, kept under content keys.

An attack's output depends on the model the attacker sees, the attack, its parameters, the
eps, the inputs, their positions (each sample's seed) and the run's seed, never on the
defence row that is then evaluated on it. The ``none``, ``smoothing`` and ``detector`` rows
of a model are all attacked through that model's estimator by the plain columns, and an
adaptive cell's plain half is its plain column: each such attack runs once and every cell
that needs it reads it.

:func:`attack_key` hashes all of that (the model by the bytes of its checkpoint, the inputs
by their bytes and shape, and the package's version); :class:`CachedAttack` answers an
:class:`~defend.matrix.outcomes.AttackSpec`'s call from ``OUT/attacks/<key>.npz``, and on a
miss runs the attack and writes the file atomically. A run killed mid-way keeps the attacks
it finished; a key never reads an attack made from other inputs, another model or other
settings. Attacks are seeded per sample by their position, so the cached batch equals what
any other grouping of the same samples would compute.

A row's outputs of an input batch depend only on the row's builds (its model, denoiser and
detector files) and the inputs with their positions (smoothing's noise is seeded by
position): :func:`remembered` keeps them in ``OUT/rows/<row>/<key>.npz``, the key hashing
the builds' bytes and the inputs', so the plain half of an adaptive cell reads what its
plain column's cell computed, a killed cell's evaluations are not run again, and a row
rebuilt under the same name never reads its former models' outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import defend
from defend.io import write_npz
from defend.matrix.measures import Outputs
from defend.matrix.outcomes import AttackSpec
from defend.matrix.phases import timed

#: the attacks' folder under the matrix's OUT
FOLDER = "attacks"


def attack_key(attacker: dict[str, Any], attack: str, params: dict[str, Any],
               eps: float | None, x: np.ndarray, positions: np.ndarray,
               seed: int) -> str:  # fmt: skip
    """The hex key of an attack's output: ``attacker`` names the model the attacker sees
    (e.g. ``{"model": file_sha256(checkpoint)}``), ``params`` the attack's settings (JSON
    values), ``x`` (N, ...) the inputs and ``positions`` (N,) their seeds."""
    head = {"attacker": attacker, "attack": attack, "params": params, "eps": eps, "seed": seed,
            "version": defend.__version__}  # fmt: skip
    return _key(head, x, positions)


def _key(head: dict[str, Any], x: np.ndarray, positions: np.ndarray) -> str:
    """32 hex digits of the sha256 of ``head`` (JSON), ``x``'s shape, dtype and bytes, and
    ``positions``."""
    described = {**head, "shape": list(x.shape), "dtype": str(x.dtype),
                 "positions": [int(p) for p in positions]}  # fmt: skip
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class CachedAttack:
    """``spec`` (an :class:`AttackSpec`) whose outputs are kept in ``folder`` under
    :func:`attack_key` of ``attacker``, ``attack`` and the call's arguments."""

    spec: AttackSpec
    folder: Path
    attacker: dict[str, Any]
    attack: str

    @timed("attack")
    def __call__(self, x: np.ndarray, y: np.ndarray, eps: float | None, positions: np.ndarray,
                 seed: int) -> np.ndarray:  # fmt: skip
        """The attacked inputs (the shape of ``x``), read from the cache or computed."""
        key = attack_key(self.attacker, self.attack, self.spec.params, eps, x, positions, seed)
        compute = lambda: {"x_adv": self.spec(x, y, eps, positions, seed)}  # noqa: E731
        return _kept(self.folder / f"{key}.npz", compute)["x_adv"]


def inputs_key(x: np.ndarray, positions: np.ndarray, builds: dict[str, str]) -> str:
    """The hex key of an input batch ``x`` (N, ...) at ``positions`` (N,) for the row whose
    build files hash to ``builds``."""
    return _key({"builds": builds, "version": defend.__version__}, x, positions)


Evaluate = Callable[[np.ndarray, np.ndarray], Outputs]


def remembered(outputs: Evaluate, folder: Path, builds: dict[str, str]) -> Evaluate:
    """A row's ``outputs(x, positions)`` (:class:`~defend.matrix.rows.System`'s) kept in
    ``folder`` under :func:`inputs_key` of the row's ``builds`` (``{name: file hash}``): a
    batch seen before by the same builds is read, not evaluated."""

    def run(x: np.ndarray, positions: np.ndarray) -> Outputs:
        def compute() -> dict[str, np.ndarray]:
            found = outputs(x, positions)
            return {"values": found.values, "abstained": found.abstained}

        found = _kept(folder / f"{inputs_key(x, positions, builds)}.npz", compute)
        return Outputs(found["values"], found["abstained"])

    return run


def _kept(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays in ``path`` where it exists, else ``compute()``'s, written there atomically."""
    if path.exists():
        with np.load(path, allow_pickle=False) as found:
            return {k: found[k] for k in found.files}
    arrays = compute()
    write_npz(path, arrays)
    return arrays
