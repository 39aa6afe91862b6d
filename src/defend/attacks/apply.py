"""Apply one attack to arrays you hold: :func:`attack_arrays` (pure: no files, nothing
loaded), :func:`attack_groups` (one estimator per k-space shape), and the per-sample report's
summary (:func:`summarise`, :func:`format_summary`, :func:`attack_warnings`).

Running an attack against a checkpoint with files written (``defend attack``) is
:func:`defend.adaptive.runner.run_attack`: it can attack the defences too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

import defend.attacks
from defend.attacks.torch_attack import TorchAttack
from defend.errors import DefendError

#: input PSNR (dB) below which a hallucination attack's perturbation counts as visible
VISIBLE_PSNR = 30.0


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max of every metric over samples, ignoring NaN, and ``n``: how many
    samples the metric is defined for (e.g. DGDE's success: images classified right clean)."""
    summary = {}
    for key in rows[0] if rows else []:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            summary[key] = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
        else:
            summary[key] = {
                "mean": float(finite.mean()),
                "std": float(finite.std()),
                "min": float(finite.min()),
                "max": float(finite.max()),
            }
        summary[key]["n"] = int(finite.size)
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of :func:`summarise`'s output."""
    stats = ("mean", "std", "min", "max")
    lines = [f"{'metric':24s} " + " ".join(f"{k:>11s}" for k in stats) + f" {'n':>5s}"]
    for key, s in summary.items():
        values = " ".join(f"{s[k]:11.4g}" for k in stats)
        lines.append(f"{key:24s} {values} {s.get('n', ''):>5}")
    return "\n".join(lines)


def make_attack(
    name: str,
    estimator: Any,
    params: dict[str, Any] | None = None,
    registry: Mapping[str, tuple[type[TorchAttack], str]] | None = None,
) -> TorchAttack:
    """The attack called ``name`` on ``estimator``: a key of ``registry`` (default
    :data:`defend.attacks.ATTACKS`; :data:`defend.adaptive.ATTACKS` adds the adaptive ones)."""
    registry = defend.attacks.ATTACKS if registry is None else registry  # plugins included
    if name not in registry:
        raise DefendError(f"unknown attack '{name}': choose one of {', '.join(registry)}")
    return registry[name].attack(estimator, **dict(params or {}))


def attack_arrays(
    estimator: Any,
    attack: str | TorchAttack,
    x: np.ndarray,
    y: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    indices: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Attack arrays you hold with any estimator: no files, nothing loaded.

    Args:
        estimator: an ART estimator, e.g. from ``defend.load_estimator`` or wrapped by a
            defence.
        attack: an attack name (with ``params``) or a built attack.
        x: inputs in the estimator's format (N, ...); y: targets or None.
        seed: this call's seed (default: the attack's ``seed`` parameter).
        indices: (N,) global sample indices, which seed each sample's randomness with
            ``seed``, so that shards of a data set attacked apart give the same rows as one
            run (default ``0..N-1``).

    Returns:
        ``(x_adv, rows)``: adversarial inputs (N, ...) and one metrics dict per sample.
    """
    if isinstance(attack, str):
        attack = make_attack(attack, estimator, params)
    elif params:
        raise DefendError("pass params with an attack name, not with a built attack")
    x_adv = attack.generate(x, y, seed=seed, indices=indices)
    return x_adv, attack.report_rows()


def _group_params(params: dict[str, Any], positions: np.ndarray, total: int) -> dict[str, Any]:
    """An attack's parameters for one shape group: per-sample region masks follow the rows."""
    masks = params.get("region_mask")
    if masks is not None and np.ndim(masks) == 3 and len(masks) == total > 1:
        return {**params, "region_mask": np.asarray(masks)[positions]}
    return params


def attack_groups(
    name: str,
    estimator: Any,
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    params: dict[str, Any] | None = None,
    registry: Mapping[str, tuple[type[TorchAttack], str]] | None = None,
) -> list[dict[str, Any]]:
    """Attack every shape group of :func:`defend.data.load_groups` (fastMRI mixes k-space
    widths and coil counts): each with the estimator for its shape, rows seeded by the
    samples' dataset positions, so grouping does not change any sample's result.

    Returns:
        One dict per group: ``x``, ``x_adv``, ``y``, ``indices``, ``rows``, ``attack`` (the
        built attack), ``estimator``.
    """
    params = dict(params or {})
    total = sum(len(g[0]) for g in groups)
    order = np.sort(np.concatenate([g[2] for g in groups]))
    results = []
    for x, y, positions in groups:
        shaped = estimator.reshaped(x.shape[1:]) if hasattr(estimator, "reshaped") else estimator
        rank = np.searchsorted(order, positions)  # rows of this group among all
        attack = make_attack(name, shaped, _group_params(params, rank, total), registry)
        x_adv, rows = attack_arrays(shaped, attack, x, y, indices=positions)
        rows = [{"index": int(i), **row} for i, row in zip(positions, rows, strict=True)]
        results.append(
            {
                "x": x,
                "x_adv": x_adv,
                "y": y,
                "indices": positions,
                "rows": rows,
                "attack": attack,
                "estimator": shaped,
            }
        )
    return results


def attack_warnings(name: str, summary: dict[str, dict[str, float]]) -> list[str]:
    """What a reader must not miss in an attack's summary (one line each)."""
    warnings = []
    psnr = summary.get("input_psnr", {}).get("mean", math.nan)
    if name.startswith("hallucination") and math.isfinite(psnr) and psnr < VISIBLE_PSNR:
        warnings.append(
            f"input PSNR {psnr:.1f} dB < {VISIBLE_PSNR:.0f} dB: the perturbation is visible in "
            "the zero-filled input; lower --eps for an imperceptible attack"
        )
    return warnings
