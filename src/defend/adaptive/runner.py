"""Run one attack against a checkpoint on a data split, with files written: what ``defend
attack`` does. The attack may be adaptive: against the smoothed model (EOT, :mod:`.eot`) or
detector-aware (:data:`defend.adaptive.ATTACKS`).

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

from defend import plots
from defend.adaptive.eot import eot_estimator
from defend.adaptive.registry import all_attacks
from defend.attacks.apply import attack_groups, attack_warnings, make_attack, summarise
from defend.data import load_groups
from defend.data.arrays import every_kth, task_root
from defend.device import pick_device
from defend.errors import CheckpointError, DefendError
from defend.estimators import load_estimator
from defend.io import (
    check_model_checkpoint,
    check_writable,
    load_checkpoint,
    write_csv,
    write_json,
    write_npz,
)
from defend.kspace import zero_filled
from defend.smooth import training_unit
from defend.smooth.denoiser import load_denoiser
from defend.tasks import kind_of


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
    sigma = smooth["sigma"]
    if sigma is None or not 0 < sigma < math.inf:
        raise DefendError(f"--smooth-sigma must be a finite number > 0, got {sigma}")
    denoiser = smooth.get("denoiser")
    denoiser = None if denoiser is None else load_denoiser(denoiser, ckpt)
    unit = training_unit(data_dir, ckpt) if kind_of(ckpt["task"]) == "recon" else None
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
        name: a key of :func:`defend.adaptive.registry.all_attacks` (``hallucination``,
            ``hallucination-evade``, ``seg-fgsm``, ``dgde``).
        checkpoint: a ``defend train`` checkpoint of the attack's task.
        data_dir: data folder (``defend data synth`` output or real data).
        out: output folder for metrics and figures.
        params: the attack's parameters (see its class).
        save_adversarial: also write ``OUT/adversarial.npz`` (``x``, ``x_adv``, ``y``,
            ``indices``; per shape with suffixes ``_0``, ``_1``, ... when shapes differ).
        smooth: ``{"sigma", "denoiser", "eot"}``: attack the smoothed model instead
            (:func:`defend.adaptive.eot.eot_estimator`: each forward pass averages ``eot``
            noise draws, from torch's generator seeded by the attack's seed); the metrics
            are those of that average.

    Returns:
        ``{"attack", "params", "summary", "rows", "files", "attacked", "shapes", ...}``.
    """
    wanted = _check_request(name, n, skip, device, out)
    ckpt = check_model_checkpoint(load_checkpoint(checkpoint), checkpoint)
    task = ckpt["task"]
    if task != wanted and kind_of(task) != wanted:  # the attack's task, or a task of its kind
        raise CheckpointError(f"{checkpoint}: a '{task}' checkpoint, expected '{wanted}'")
    estimator = load_estimator(ckpt, device=device)
    if smooth is not None:
        seed = (params or {}).get("seed", 0)
        estimator = _smoothed_estimator(estimator, ckpt, smooth, seed, data_dir)
    registry = all_attacks()
    make_attack(name, estimator, params, registry)  # bad parameters fail before data loads
    groups = _load_samples(data_dir, task, split, n, skip, ckpt)
    results = attack_groups(name, estimator, groups, params, registry)
    rows = sorted((row for r in results for row in r["rows"]), key=lambda row: row["index"])
    summary = summarise([{k: v for k, v in row.items() if k != "index"} for row in rows])
    files = _write_outputs(name, Path(out), results, rows, ckpt, figure_samples, save_adversarial)
    request = {"attack": name, "checkpoint": str(checkpoint), "data": str(data_dir)}
    request.update(split=split, skip=skip, data_root=str(task_root(Path(data_dir), task, split)))
    result = {**request, **_outcome(name, smooth, results, rows, summary, files)}
    write_json(files["json"], result)
    return result


def _check_request(name: str, n: int, skip: int, device: str | None, out: Any) -> str:
    """The task of attack ``name`` (whose checkpoints it attacks), once the checks made before
    anything is read pass: a known attack, ``n`` and ``skip`` >= 1, a device there is and an
    ``out`` folder that can be written (else a one-line :class:`DefendError`)."""
    registry = all_attacks()
    if name not in registry:
        raise DefendError(f"unknown attack '{name}': choose one of {', '.join(registry)}")
    if n < 1 or skip < 1:
        raise DefendError(f"--n and --skip must be >= 1, got {n}, {skip}")
    pick_device(device)  # device and output first: refused before anything is read
    check_writable(out, "dir")
    return registry[name].task


def _load_samples(
    data_dir: Any, task: str, split: str, n: int, skip: int, ckpt: dict[str, Any]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every ``skip``-th sample of ``split`` from the first, ``n`` at most, in shape groups
    ``(x, y, indices)`` (:func:`defend.data.load_groups`; ``indices``: dataset positions)."""
    if skip == 1:
        return load_groups(data_dir, task, split, n, checkpoint=ckpt)
    every = every_kth(data_dir, task, split, n, skip, ckpt)
    return load_groups(data_dir, task, split, indices=every, checkpoint=ckpt)


def _outcome(
    name: str,
    smooth: dict[str, Any] | None,
    results: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    files: dict[str, Path],
) -> dict[str, Any]:
    """What ``metrics.json`` holds after the request: the samples attacked, the smoothing
    (the denoiser as a path string), the input shape of each group, the attack's parameters
    (the first group's attack), the summary, its warnings, the rows and the files."""
    attack = results[0]["attack"]
    return {
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
    if name.startswith("hallucination"):
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
