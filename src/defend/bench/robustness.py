"""How robust a checkpoint is: its clean quality beside the project's attack and ART's PGD.

:func:`robustness` attacks the first ``n`` samples of a split the same way for every
checkpoint of a task, so a standard and a hardened model compare row by row (the table of
``docs/hardening.md``; ``defend bench robustness STD.pt HARD.pt --data D``, printed by
:func:`format_robustness`):

* recon: clean SSIM to the ground truth; ``defend attack hallucination`` at its defaults
  (mean strength, 150 iterations, relative l-inf eps 0.1; beside it the strength of the
  feature in the attacked zero-filled input, what a faithful reconstruction would show);
  ART's ``ProjectedGradientDescent`` on the sampled k-space at the same budget (per-sample
  eps, 10 steps of eps / 4 from the clean input: ART starts at random only for
  classifiers), raising the MSE to the ground truth, and the SSIM it leaves;
* seg: Dice clean, under ``defend attack seg-fgsm`` (FGSM, eps 0.008, BCE) and its 10-step PGD;
* cls: accuracy clean and under ART's 20-step l-inf PGD (eps 8/255), and DGDE's success rate
  and pixel count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.attacks.apply import attack_arrays
from defend.attacks.art_pgd import art_pgd, kspace_pgd
from defend.data import load_arrays
from defend.errors import DefendError
from defend.estimators import load_estimator
from defend.io import load_checkpoint
from defend.metrics import image_similarity
from defend.train.methods import DEFAULT_EPS as EPS  # the training budget is the attack's


def _ssim(y: np.ndarray, pred: np.ndarray) -> float:

    return float(np.mean([image_similarity(a, b)["ssim"] for a, b in zip(y, pred, strict=True)]))


def recon_robustness(
    estimator: Any, x: np.ndarray, y: np.ndarray, eps: float = EPS["recon"]
) -> dict[str, float]:
    """Clean SSIM, hallucination strength (in the reconstruction and in the zero-filled
    input) and ART PGD SSIM of k-space x (N, coils, H, W, 2) against ground-truth images
    y (N, h, w), at relative l-inf ``eps``."""
    _, rows = attack_arrays(estimator, "hallucination", x, y, {"eps": eps})
    strength = float(np.nanmean([r["strength"] for r in rows]))
    x_pgd = kspace_pgd(estimator, x, y, eps, steps=10)
    return {
        "clean_ssim": _ssim(y, estimator.predict(x)),
        "hallucination_strength": strength,
        "hallucination_input_psnr": float(np.mean([r["input_psnr"] for r in rows])),
        "hallucination_input_strength": float(np.mean([r["input_strength"] for r in rows])),
        "art_pgd_ssim": _ssim(y, estimator.predict(x_pgd)),
    }


def seg_robustness(
    estimator: Any, x: np.ndarray, y: np.ndarray, eps: float = EPS["seg"]
) -> dict[str, float]:
    """Dice clean and under seg-fgsm's FGSM and 10-step PGD at l-inf ``eps``, images x
    (N, C, H, W) and masks y (N, K, H, W)."""
    _, fgsm = attack_arrays(estimator, "seg-fgsm", x, y, {"eps": eps})
    _, pgd = attack_arrays(estimator, "seg-fgsm", x, y, {"eps": eps, "max_iter": 10})

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return float(np.nanmean([r[key] for r in rows]))

    return {
        "clean_dice": mean(fgsm, "dice_clean"),
        "fgsm_dice": mean(fgsm, "dice_adv"),
        "pgd10_dice": mean(pgd, "dice_adv"),
    }


def cls_robustness(
    estimator: Any, x: np.ndarray, y: np.ndarray, eps: float = EPS["cls"]
) -> dict[str, float]:
    """Accuracy clean and under ART's 20-step PGD at l-inf ``eps``; DGDE success and pixels
    (images right when clean), images x (N, C, H, W) and labels y (N,)."""
    labels = np.eye(estimator.nb_classes, dtype=np.float32)[y]
    x_pgd = art_pgd(estimator, eps, 20, len(x)).generate(x, y=labels)
    _, rows = attack_arrays(estimator, "dgde", x, y)
    success = [r["success"] for r in rows if np.isfinite(r["success"])]
    pixels = [r["pixels"] for r in rows if np.isfinite(r["pixels"])]
    return {
        "clean_accuracy": float((estimator.predict(x).argmax(1) == y).mean()),
        "pgd20_accuracy": float((estimator.predict(x_pgd).argmax(1) == y).mean()),
        "dgde_success": float(np.mean(success)) if success else float("nan"),
        "dgde_pixels": float(np.mean(pixels)) if pixels else float("nan"),
    }


ROBUSTNESS: dict[str, Callable[..., dict[str, float]]] = {
    "recon": recon_robustness,
    "seg": seg_robustness,
    "cls": cls_robustness,
}


def robustness(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 16,
    device: str | None = None,
    seed: int = 0,
    eps: float | None = None,
) -> dict[str, Any]:
    """Clean and attacked metrics of a checkpoint on the first ``n`` samples of ``split``.

    Args:
        eps: the attacks' budget (default :data:`EPS` of the checkpoint's task).

    Returns:
        ``{"checkpoint", "task", "objective", "n", "metrics": {...}}``; ``objective`` is the
        checkpoint's training objective (``{"name": "standard"}`` or its adversarial
        settings).
    """

    if n < 1:
        raise DefendError(f"--n must be >= 1, got {n}")
    if eps is not None and not 0 < eps < math.inf:
        raise DefendError(f"--eps must be a finite number > 0, got {eps}")
    ckpt = load_checkpoint(checkpoint)
    estimator = load_estimator(ckpt, device=device)
    x, y = load_arrays(data_dir, ckpt["task"], split, n, checkpoint=ckpt)
    torch.manual_seed(seed)
    np.random.seed(seed)  # ART's random starts draw from numpy's global generator
    eps = EPS[ckpt["task"]] if eps is None else eps
    metrics = ROBUSTNESS[ckpt["task"]](estimator, x, y, eps)
    return {
        "eps": eps,
        "checkpoint": str(checkpoint),
        "task": ckpt["task"],
        "objective": (ckpt.get("run") or {}).get("objective", {"name": "standard"}),
        "n": len(x),
        "metrics": metrics,
    }


def compare_robustness(
    checkpoints: list[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    log: Callable[[str], None] = print,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`robustness` of each checkpoint on the same samples (``options``: its keywords).

    All checkpoints must be of one task, so that their rows compare; checked before any
    attack runs.
    """

    if not checkpoints:
        raise DefendError("give at least one checkpoint")
    tasks = {str(c): load_checkpoint(c)["task"] for c in checkpoints}
    if len(set(tasks.values())) > 1:
        named = ", ".join(f"{c} ({t})" for c, t in tasks.items())
        raise DefendError(f"the checkpoints must be of one task to compare, got {named}")
    results = []
    for checkpoint in checkpoints:
        log(f"attacking {checkpoint} ...")
        results.append(robustness(checkpoint, data_dir, **options))
    return results


def _objective_name(objective: dict[str, Any]) -> str:
    """``standard``, or the method with its eps, steps and (non-zero) beta and mix."""
    if objective["name"] == "standard":
        return "standard"
    parts = [objective["name"], f"eps {objective['eps']:.3g}", f"steps {objective['steps']}"]
    if objective.get("beta"):
        parts.append(f"beta {objective['beta']:g}")
    if objective.get("mix", 1.0) != 1.0:
        parts.append(f"mix {objective['mix']:g}")
    return " ".join(parts)


def format_robustness(results: list[dict[str, Any]]) -> str:
    """A table, one row a checkpoint: its training objective and metrics, columns aligned."""
    if not results:
        return ""
    keys = list(results[0]["metrics"])
    names = [_objective_name(r["objective"]) for r in results]
    width = max(len(n) for n in names + ["objective"])
    widths = [max(10, len(k)) for k in keys]
    head = f"{'checkpoint':30s} {'objective':{width}s} " + " ".join(
        f"{k:>{w}s}" for k, w in zip(keys, widths, strict=True)
    )
    lines = [
        f"{results[0]['task']}: {results[0]['n']} samples, attack eps {results[0]['eps']:.4g}",
        head,
    ]
    for result, name in zip(results, names, strict=True):
        metrics = result["metrics"]
        values = " ".join(f"{metrics[k]:{w}.4f}" for k, w in zip(keys, widths, strict=True))
        lines.append(f"{Path(result['checkpoint']).name[-30:]:30s} {name:{width}s} {values}")
    return "\n".join(lines)
