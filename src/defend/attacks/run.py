"""Run one attack: on arrays you hold (:func:`attack_arrays`, pure), or against a checkpoint
on a data split with files written (:func:`run_attack`: what ``defend attack`` does).

:func:`run_attack` writes ``OUT/metrics.csv`` (one row a sample), ``OUT/metrics.json``
(parameters, rows and summary), ``OUT/figure.png`` and, if asked, ``OUT/adversarial.npz``
(clean and adversarial inputs, targets, sample indices), each atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.attacks import ATTACKS
from defend.attacks.base import TorchAttack
from defend.data.arrays import task_root
from defend.device import pick_device
from defend.errors import DefendError
from defend.io import check_writable, load_checkpoint, write_csv, write_json, write_npz

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


def make_attack(name: str, estimator: Any, params: dict[str, Any] | None = None) -> TorchAttack:
    """The attack called ``name`` (a key of :data:`defend.attacks.ATTACKS`) on ``estimator``."""
    if name not in ATTACKS:
        raise DefendError(f"unknown attack '{name}': choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name][0](estimator, **dict(params or {}))


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
        attack = make_attack(name, shaped, _group_params(params, rank, total))
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


def _adversarial_arrays(results: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """What ``adversarial.npz`` holds: ``x``, ``x_adv``, ``y``, ``indices``; with several
    shapes one set per shape, suffixed ``_0``, ``_1``, ..."""
    keys = ("x", "x_adv", "y", "indices")
    if len(results) == 1:
        return {k: results[0][k] for k in keys}
    return {f"{k}_{g}": r[k] for g, r in enumerate(results) for k in keys}


def _smoothed_estimator(
    estimator: Any, ckpt: dict[str, Any], smooth: dict[str, Any], seed: int, data_dir: Any
) -> Any:
    """The EOT estimator of the smoothed model (``run_attack``'s ``smooth``; recon: its noise
    in the k-space unit of ``data_dir``'s training split)."""
    from defend.smooth import training_unit
    from defend.smooth.denoiser import load_denoiser
    from defend.smooth.eot import eot_estimator

    sigma = smooth["sigma"]
    if sigma is None or not 0 < sigma < math.inf:
        raise DefendError(f"--smooth-sigma must be a finite number > 0, got {sigma}")
    denoiser = smooth.get("denoiser")
    denoiser = None if denoiser is None else load_denoiser(denoiser, ckpt)
    unit = training_unit(data_dir, ckpt) if ckpt["task"] == "recon" else None
    torch.manual_seed(seed)
    return eot_estimator(estimator, sigma, smooth.get("eot", 8), denoiser, unit=unit)


def run_attack(
    name: str,
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 16,
    skip: int = 1,
    params: dict[str, Any] | None = None,
    device: str | None = None,
    figure_samples: int = 4,
    save_adversarial: bool = False,
    smooth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attack ``n`` samples of ``data_dir``'s ``split`` (every ``skip``-th from the first)
    with attack ``name``, writing files.

    Every one of the ``n`` samples is attacked, whatever its shape (fastMRI mixes k-space
    widths and coil counts: see :func:`attack_groups`).

    Args:
        name: a key of :data:`defend.attacks.ATTACKS` (``hallucination``,
            ``hallucination-evade``, ``seg-fgsm``, ``dgde``).
        checkpoint: a ``defend train`` checkpoint of the attack's task.
        data_dir: data folder (``defend data synth`` output or real data).
        out: output folder for metrics and figures.
        params: the attack's parameters (see its class).
        save_adversarial: also write ``OUT/adversarial.npz`` (``x``, ``x_adv``, ``y``,
            ``indices``; per shape with suffixes ``_0``, ``_1``, ... when shapes differ).
        smooth: ``{"sigma", "denoiser", "eot"}``: attack the smoothed model instead
            (:func:`defend.smooth.eot.eot_estimator`: each forward pass averages ``eot``
            noise draws, from torch's generator seeded by the attack's seed); the metrics
            are those of that average.

    Returns:
        ``{"attack", "params", "summary", "rows", "files", "attacked", "shapes", ...}``.
    """
    from defend.data import load_groups
    from defend.data.arrays import every_kth
    from defend.estimators import load_estimator

    if name not in ATTACKS:
        raise DefendError(f"unknown attack '{name}': choose one of {', '.join(ATTACKS)}")
    if n < 1 or skip < 1:
        raise DefendError(f"--n and --skip must be >= 1, got {n}, {skip}")
    pick_device(device)  # device and output first: refused before anything is read
    check_writable(out, "dir")
    task = ATTACKS[name][1]
    ckpt = load_checkpoint(checkpoint, task)
    estimator = load_estimator(ckpt, device=device)
    if smooth is not None:
        seed = (params or {}).get("seed", 0)
        estimator = _smoothed_estimator(estimator, ckpt, smooth, seed, data_dir)
    make_attack(name, estimator, params)  # bad parameters fail before data loads
    if skip == 1:
        groups = load_groups(data_dir, task, split, n, checkpoint=ckpt)
    else:
        every = every_kth(data_dir, task, split, n, skip, ckpt)
        groups = load_groups(data_dir, task, split, indices=every, checkpoint=ckpt)
    results = attack_groups(name, estimator, groups, params)
    rows = sorted((row for r in results for row in r["rows"]), key=lambda row: row["index"])
    summary = summarise([{k: v for k, v in row.items() if k != "index"} for row in rows])
    files = _write_outputs(name, Path(out), results, rows, ckpt, figure_samples, save_adversarial)
    attack = results[0]["attack"]
    result = {
        "attack": name,
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "split": split,
        "skip": skip,
        "data_root": str(task_root(Path(data_dir), task, split)),
        "attacked": len(rows),
        "smooth": smooth
        and {k: v if k != "denoiser" or v is None else str(v) for k, v in smooth.items()},
        "shapes": [list(r["x"].shape[1:]) for r in results],
        "params": {p: getattr(attack, p) for p in attack.attack_params},
        "summary": summary,
        "warnings": attack_warnings(name, summary),
        "rows": rows,
        "files": {k: str(v) for k, v in files.items()},
    }
    write_json(files["json"], result)
    return result


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


def _write_outputs(
    name: str,
    out: Path,
    results: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    ckpt: dict[str, Any],
    figure_samples: int,
    save_adversarial: bool,
) -> dict[str, Path]:
    """metrics.csv, figure.png (first shape group) and adversarial.npz, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "metrics.csv", "json": out / "metrics.json", "figure": out / "figure.png"}
    if save_adversarial:
        files["adversarial"] = out / "adversarial.npz"
        arrays = _adversarial_arrays(results)
        write_npz(files["adversarial"], arrays)
    write_csv(files["csv"], rows)
    first = results[0]
    k = min(figure_samples, len(first["x"]))
    _figure(
        name,
        first["attack"],
        first["estimator"],
        first["x"][:k],
        first["x_adv"][:k],
        first["y"][:k],
        first["rows"][:k],
        ckpt,
        files["figure"],
    )
    return files


def _figure(
    name: str,
    attack: Any,
    estimator: Any,
    x: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    rows: list[dict[str, float]],
    ckpt: dict[str, Any],
    path: Path,
) -> None:
    from defend import plots

    if name.startswith("hallucination"):
        from defend.models.recon import zero_filled

        clean, adv = estimator.predict(x), estimator.predict(x_adv)
        mask = torch.as_tensor(estimator.mask).float()
        crop = tuple(clean.shape[-2:])
        zf = [
            zero_filled(torch.as_tensor(k) * mask.view(1, 1, 1, -1, 1), crop).numpy()
            for k in (x, x_adv)
        ]
        region = attack.regions(crop, len(x), torch.device("cpu")).numpy()
        plots.plot_hallucination(path, clean, adv, zf[0], zf[1], region, rows)
    elif name == "seg-fgsm":
        pred = [1 / (1 + np.exp(-estimator.predict(v))) > attack.threshold for v in (x, x_adv)]
        plots.plot_segmentation(path, x, x_adv, y, pred[0], pred[1], rows)
    else:
        plots.plot_pixels(path, x, x_adv, rows, ckpt["data"].get("classes"))
