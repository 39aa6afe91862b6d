"""Our attacks against ART's own, on the same estimator and inputs.

* **HallucinationAttack vs ART's ProjectedGradientDescent** on the same ``ReconEstimator``
  and k-space: same absolute l-inf budget, step, number of steps, batch and perturbed entries
  (ART's ``mask=``); ART targets the hallucination target image of
  :meth:`HallucinationAttack.goal`. ART's PGD runs its numpy path for non-classifiers (a host
  copy per step). Both attacks' hallucination strength (:meth:`HallucinationAttack.effect`)
  is reported for context.
* **DGDE vs ART's PixelAttack** (Vargas et al. 2019, differential evolution) on the same
  classifier and images, both with ``y=None`` (the model's own labels; ART's PixelAttack
  refuses labels of a 2-class classifier): success rate, pixels changed, forward passes
  (counted by a forward hook, in images) and wall time per image. PixelAttack runs at ART's
  defaults (``es=1``, ``max_iter=``:data:`PIXEL_MAX_ITER`, untargeted) except ``th``: its
  default ``th=None`` binary-searches the pixel count (up to 7 attacks per image), so each of
  a few fixed pixel counts is run and reported as **its own row**. The goals are read against
  single rows, never a sum over pixel counts (:func:`pixel_goals`): speed against the fastest
  pixel count that succeeds on some image, and a goal that needs ART's success to compare
  with is "not comparable" (and not met) when PixelAttack never succeeds. A row projecting
  ``th=None``'s cost from the measured time per forward is labelled "projected, not measured"
  and takes no part in any goal. Each repeat runs DGDE and its floor
  (:class:`defend.bench.floors.DGDETiming`), then one PixelAttack pixel count, so that all
  share the machine's load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from art.attacks.evasion import PixelAttack, ProjectedGradientDescent

from defend.attacks import HallucinationAttack
from defend.attacks.hallucination import sampled_columns
from defend.attacks.torch_attack import estimator_device, torch_forward
from defend.bench.floors import DGDETiming, bench_dgde
from defend.bench.timing import (
    Log,
    as_tensor,
    count_forward_rows,
    interleaved,
    nanmean,
    paired,
    timed,
)

#: PixelAttack's wall time per image over DGDE's, at least
PIXEL_SPEEDUP_GOAL = 10.0
#: ART's default ``max_iter`` of ``PixelAttack`` (art 1.20: ``th=None, es=1, max_iter=100``)
PIXEL_MAX_ITER = 100
#: the name of the projected row: it is no measurement
PROJECTED = "projected, not measured"


# ---------------------------------------------------------------------- hallucination vs PGD
def _reconstruct(estimator: Any, x: torch.Tensor) -> torch.Tensor:
    """The estimator's images (N, h, w) of k-space x (N, coils, H, W, 2), without gradients."""
    forward = torch_forward(estimator)
    if forward is None:
        return torch.as_tensor(estimator.predict(x.cpu().numpy()), device=x.device)
    with torch.no_grad():
        return forward(x)


def hallucination_strength(
    attack: HallucinationAttack, x: np.ndarray | torch.Tensor, x_adv: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Per-sample strength (N,) of any k-space perturbation, as ``HallucinationAttack`` reports
    it (:meth:`HallucinationAttack.effect` in :meth:`HallucinationAttack.goal`'s region).

    Mean change of the reconstruction inside the attack's region over the intended change
    (``alpha`` times the clean reconstruction's range): 1 means the feature was inserted fully.

    Args:
        x, x_adv: clean and perturbed masked k-space (N, coils, H, W, 2).
    """
    device = estimator_device(attack.estimator)
    y0 = _reconstruct(attack.estimator, as_tensor(x, device))
    y_adv = _reconstruct(attack.estimator, as_tensor(x_adv, device))
    region = attack.goal(y0)[0]
    strength, _ = attack.effect(y0, y_adv, region)
    return strength.float().cpu().numpy()


def _art_pgd(estimator: Any, eps: float, step: float, max_iter: int, batch: int) -> Any:
    """ART's l-inf ``ProjectedGradientDescent``, targeted, from the clean input."""

    return ProjectedGradientDescent(
        estimator,
        norm=np.inf,
        eps=eps,
        eps_step=step * eps,
        max_iter=max_iter,
        targeted=True,
        num_random_init=0,
        batch_size=batch,
        verbose=False,
    )


def _art_target(attack: HallucinationAttack, x: np.ndarray) -> np.ndarray:
    """ART's ``y``: :meth:`HallucinationAttack.goal`'s target image (N, h, w), from the clean
    output of ART's ``predict`` (timed as part of ART's cost)."""
    y0 = attack.estimator.predict(x, batch_size=len(x))
    return attack.goal(torch.as_tensor(y0))[2].numpy()


def _art_mask(attack: HallucinationAttack, x: np.ndarray) -> np.ndarray:
    """ART's ``mask``: the entries (N, 1, 1, W, 2) the attack perturbs, its part (real or both)
    of the sampled columns (:func:`~defend.attacks.hallucination.sampled_columns`)."""
    sampled = sampled_columns(torch.as_tensor(x), attack.estimator).float()
    parts = torch.tensor([1.0, 0.0] if attack.part == "real" else [1.0, 1.0])
    return (sampled * parts).numpy()


def _pgd_params(ours: HallucinationAttack, eps_rel: float, batch: int) -> dict[str, Any]:
    return {
        "eps": ours.eps,
        "eps_rel": eps_rel,
        "eps_step": ours.step * ours.eps,
        "max_iter": ours.max_iter,
        "batch_size": batch,
        "norm": "inf",
        "perturbed": f"{ours.part} part, sampled entries",
        "art": "ProjectedGradientDescent(norm=inf, targeted=True, num_random_init=0), "
        "y = hallucination target image (its clean forward pass timed with ART), "
        "mask = perturbed entries",
    }


def _pgd_result(
    ours: HallucinationAttack,
    x: np.ndarray,
    times: dict[str, list[float]],
    outs: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The comparison's numbers: wall times, their ratio, strength and l-inf of both."""
    row = paired(times, "ours", "art")
    return {
        **row,
        "goal": 1.0,
        "met": bool(row["ratio"] < 1.0),
        "strength_ours": float(np.mean(hallucination_strength(ours, x, outs["ours"]))),
        "strength_art": float(np.mean(hallucination_strength(ours, x, outs["art"]))),
        "strength_ours_report": float(np.mean(ours.report["strength"])),
        "linf_ours": float(np.abs(outs["ours"] - x).max()),
        "linf_art": float(np.abs(outs["art"] - x).max()),
    }


def art_pgd_vs_hallucination(
    estimator: Any,
    x: np.ndarray,
    *,
    eps_rel: float = 0.02,
    step: float = 0.1,
    max_iter: int = 20,
    repeats: int = 3,
    region: str = "line",
) -> dict[str, Any]:
    """HallucinationAttack vs ART's ``ProjectedGradientDescent`` on the same k-space.

    Both run ``max_iter`` l-inf steps of ``step * eps`` inside the same absolute budget ``eps``
    (``eps_rel`` times the median over samples of the largest sampled |k|), from the clean
    input (no random start), on one batch, perturbing the same entries (the real part of the
    sampled k-space: ART gets it as ``mask=``). ART minimises the estimator's MSE to the
    hallucination target image (``targeted=True``, ``y`` = the target); ours its weighted
    in/out MSE, keeping the best iterate.

    Args:
        estimator: a ``ReconEstimator``.
        x: masked k-space (N, coils, H, W, 2): one batch.
    """
    x = np.asarray(x, dtype=np.float32)
    eps = float(eps_rel * np.median(np.sqrt((x**2).sum(-1)).reshape(len(x), -1).max(1)))
    own = {
        "eps": eps,
        "eps_mode": "absolute",
        "step": step,
        "patience": 0,
        "random_start": False,
        "region": region,
        "batch_size": len(x),
    }
    ours = HallucinationAttack(estimator, max_iter=max_iter, **own)
    art = _art_pgd(estimator, eps, step, max_iter, len(x))
    mask = _art_mask(ours, x)
    HallucinationAttack(estimator, max_iter=1, **own).generate(x)  # warm-up, both
    _art_pgd(estimator, eps, step, 1, len(x)).generate(x, y=_art_target(ours, x), mask=mask)
    outs: dict[str, np.ndarray] = {}

    def run_ours() -> None:
        outs["ours"] = ours.generate(x)

    def run_art() -> None:  # the target needs the clean output: part of ART's cost
        outs["art"] = art.generate(x, y=_art_target(ours, x), mask=mask)

    times = interleaved({"ours": run_ours, "art": run_art}, repeats, estimator_device(estimator))
    return {**_pgd_result(ours, x, times, outs), "params": _pgd_params(ours, eps_rel, len(x))}


# ---------------------------------------------------------------------- DGDE vs PixelAttack
def _changed_pixels(x: np.ndarray, x_adv: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Spatial pixels (any channel) that differ, per image: (N,) from (N, C, H, W)."""
    return (np.abs(x_adv - x).max(1) > tol).reshape(len(x), -1).sum(1)


def _pixel_attack_forwards(th: int, channels: int, max_iter: int) -> int:
    """Forward passes ART's PixelAttack (DE) makes on one image when it never succeeds."""
    dims = th * (2 + channels)
    population = max(1, 400 // dims) * dims
    return population * (max_iter + 1) + max_iter + 2


def _binary_search_ths(start: int = 1, end: int = 127) -> list[int]:
    """The pixel counts ART's ``th=None`` tries when no attack succeeds."""
    ths = []
    while start <= end:
        th = (start + end) // 2
        ths.append(th)
        start = th + 1
    return ths


def _run_pixel_attack(classifier: Any, x: np.ndarray, th: int, max_iter: int) -> dict[str, Any]:
    """ART's PixelAttack at ``th`` pixels, one image (N, C, H, W) at a time, timed and counted.

    Returns:
        ``{"x_adv": (N, C, H, W), "seconds": [N], "forwards": [N]}``.
    """

    pixel = PixelAttack(classifier, th=int(th), es=1, max_iter=max_iter, verbose=False)
    device = estimator_device(classifier)
    adv, seconds, forwards = [], [], []
    for i in range(len(x)):
        with count_forward_rows(classifier.model) as counter:
            s, xa = timed(lambda i=i: pixel.generate(x[i : i + 1]), device)
        adv.append(xa.astype(np.float32))
        seconds.append(s)
        forwards.append(counter[0])
    return {"x_adv": np.concatenate(adv), "seconds": seconds, "forwards": forwards}


def _outcome(
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    x_adv: np.ndarray,
    seconds: float,
    forwards: float,
) -> dict[str, Any]:
    """Success (label changed from ``labels`` (N,), the model's own), pixels changed and cost of
    one attack's output ``x_adv`` (N, C, H, W)."""
    success = classifier.predict(x_adv).argmax(1) != labels
    pixels = np.where(success, _changed_pixels(x, x_adv).astype(np.float64), np.nan)
    return {
        "success": float(success.mean()),
        "pixels": nanmean(pixels),
        "pixels_each": pixels.tolist(),
        "forwards_per_image": float(forwards),
        "s_per_image": float(seconds),
        "success_each": success.astype(float).tolist(),
    }


def _dgde_row(
    classifier: Any, x: np.ndarray, labels: np.ndarray, dgde: DGDETiming, dgde_s: float
) -> dict[str, Any]:
    """DGDE's row: its outcome, and its report's queries and pixel count."""
    row = _outcome(classifier, x, labels, dgde.x_adv, dgde_s, dgde.forwards / len(x))
    row["queries_per_image"] = float(dgde.report["queries"].mean())
    row["pixels_report"] = nanmean(dgde.report.get("pixels", [math.nan]))
    attack = dgde.attack
    row["name"] = f"DGDE (population {attack.population}, patience {attack.patience})"
    return row


def _pixel_rows(
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    runs: dict[int, dict[str, Any]],
    dgde_s: float,
) -> list[dict[str, Any]]:
    """One measured row per PixelAttack pixel count, with its time per image over DGDE's."""
    rows = []
    for th, run in runs.items():
        seconds, forwards = float(np.mean(run["seconds"])), float(np.mean(run["forwards"]))
        row = _outcome(classifier, x, labels, run["x_adv"], seconds, forwards)
        row.update(name=f"PixelAttack th={th}", th=th, speedup=row["s_per_image"] / dgde_s)
        row["measured"] = True
        rows.append(row)
    return rows


def _projected_row(
    runs: dict[int, dict[str, Any]], channels: int, dgde_s: float, max_iter: int
) -> dict[str, Any]:
    """PixelAttack's ``th=None`` search at ``max_iter``, projected (not measured) from the
    measured seconds per forward pass, as if no pixel count succeeded."""
    seconds = sum(sum(run["seconds"]) for run in runs.values())
    s_per_forward = seconds / max(1, sum(sum(run["forwards"]) for run in runs.values()))
    ths = _binary_search_ths()
    forwards = sum(_pixel_attack_forwards(t, channels, max_iter) for t in ths)
    return {
        "name": f"PixelAttack th=None, {PROJECTED}",
        "measured": False,
        "ths": ths,
        "forwards_per_image": forwards,
        "s_per_image": forwards * s_per_forward,
        "speedup": forwards * s_per_forward / dgde_s,
        "basis": f"ART's DE population x (max_iter + 1) per pixel count at max_iter={max_iter}, "
        "the 7 counts its binary search tries when nothing succeeds, times the measured s per "
        "forward; in no goal",
    }


def _common_pixels(dgde_row: dict[str, Any], row: dict[str, Any]) -> tuple[float, float, int]:
    """Mean pixels of DGDE and of one PixelAttack row on the images both flipped, and how many."""
    ours, theirs = np.array(dgde_row["pixels_each"]), np.array(row["pixels_each"])
    both = np.isfinite(ours) & np.isfinite(theirs)
    if not both.any():
        return math.nan, math.nan, 0
    return float(ours[both].mean()), float(theirs[both].mean()), int(both.sum())


def _pixel_goal(dgde_row: dict[str, Any], succeeded: list[dict[str, Any]]) -> dict[str, Any]:
    """Fewer pixels at equal or better success than PixelAttack's fewest-pixel row, on the
    images both flipped; "not comparable" (not met) when there is nothing to compare."""
    if not succeeded:
        return {
            "dgde": dgde_row["pixels"],
            "art": math.nan,
            "against": None,
            "met": False,
            "status": "not comparable: PixelAttack flipped no image at any th",
        }
    best = min(succeeded, key=lambda r: (r["pixels"], -r["success"]))
    ours, theirs, images = _common_pixels(dgde_row, best)
    goal = {"dgde": ours, "art": theirs, "against": best["name"], "images": images}
    if images == 0:
        return {**goal, "met": False, "status": "not comparable: no image flipped by both"}
    met = dgde_row["success"] >= best["success"] and ours < theirs
    return {**goal, "met": bool(met), "status": "met" if met else "not met"}


def _speed_goal(
    dgde_s: float, rows: list[dict[str, Any]], succeeded: list[dict[str, Any]]
) -> dict[str, Any]:
    """At least :data:`PIXEL_SPEEDUP_GOAL` x faster per image than the fastest single pixel
    count that flipped an image; "not comparable" (not met) when none did (the ratio to the
    fastest pixel count is still given, as information)."""
    goal: dict[str, Any] = {"goal": PIXEL_SPEEDUP_GOAL}
    if not succeeded:
        fastest = min(rows, key=lambda r: r["s_per_image"])
        return {
            **goal,
            "speedup": fastest["s_per_image"] / dgde_s,
            "against": fastest["name"],
            "met": False,
            "status": "not comparable: PixelAttack flipped no image at any "
            "th (ratio to its fastest th, which failed)",
        }
    best = min(succeeded, key=lambda r: r["s_per_image"])
    speedup = best["s_per_image"] / dgde_s
    met = speedup >= PIXEL_SPEEDUP_GOAL
    return {
        **goal,
        "speedup": speedup,
        "against": best["name"],
        "met": bool(met),
        "status": "met" if met else "not met",
    }


def pixel_goals(dgde_row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DGDE's goals against PixelAttack's measured single-``th`` rows (never a sum over them,
    never a projected row).

    * ``success``: DGDE's success >= the best single th's;
    * ``pixels``: fewer pixels than the th row with the fewest, on the images both flipped, at
      equal or better success;
    * ``speed``: >= :data:`PIXEL_SPEEDUP_GOAL` x faster per image than the fastest th row that
      flipped an image.

    Each goal: ``met`` (bool) and ``status`` ("met", "not met", or "not comparable: why",
    which is not met), and ``against`` (the row compared with).
    """
    rows = [r for r in rows if r.get("measured", True)]
    if not rows:
        raise ValueError("pixel_goals needs at least one measured PixelAttack row")
    succeeded = [r for r in rows if r["success"] > 0]
    top = max(rows, key=lambda r: r["success"])
    as_good = dgde_row["success"] >= top["success"]
    return {
        "success": {
            "dgde": dgde_row["success"],
            "art": top["success"],
            "against": top["name"],
            "met": bool(as_good),
            "status": "met" if as_good else "not met",
        },
        "pixels": _pixel_goal(dgde_row, succeeded),
        "speed": _speed_goal(dgde_row["s_per_image"], rows, succeeded),
    }


def _pixel_comparison(
    classifier: Any,
    x: np.ndarray,
    dgde: DGDETiming,
    dgde_s: float,
    runs: dict[int, dict[str, Any]],
    pixel_max_iter: int,
) -> dict[str, Any]:
    """DGDE against PixelAttack on the same images, from the timed runs."""
    labels = classifier.predict(x).argmax(1)
    dgde_row = _dgde_row(classifier, x, labels, dgde, dgde_s)
    rows = _pixel_rows(classifier, x, labels, runs, dgde_s)
    default = "ART's default" if pixel_max_iter == PIXEL_MAX_ITER else "ART's default is 100"
    params = {
        "images": len(x),
        "labels": "the model's own (y=None for both)",
        "pixel_attack": f"PixelAttack(th, es=1 (differential evolution), max_iter="
        f"{pixel_max_iter} ({default}), targeted=False), one row per th",
        "dgde": {k: getattr(dgde.attack, k) for k in dgde.params},
        "forwards": "images through the model, counted by a forward hook",
    }
    return {
        "dgde": dgde_row,
        "pixel_attack": rows,
        "projected_defaults": _projected_row(runs, x.shape[1], dgde_s, PIXEL_MAX_ITER),
        "params": params,
        "goals": pixel_goals(dgde_row, rows),
    }


def dgde_vs_floor_and_pixel_attack(
    classifier: Any,
    x: np.ndarray,
    *,
    repeats: int = 3,
    dgde_params: dict[str, Any] | None = None,
    pixel_th: Sequence[int] = (1, 5, 20),
    pixel_max_iter: int = PIXEL_MAX_ITER,
    log: Log | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """DGDE's wall time against its model-time floor, and DGDE against ART's PixelAttack.

    Each repeat runs DGDE, then the floor (order alternating), then one of the PixelAttack
    pixel counts (the rest after the last repeat), so that all share the machine's load.

    Args:
        classifier: an ART classifier with a torch ``model``.
        x: images (N, C, H, W), attacked with the model's own labels.
        dgde_params: DGDE arguments over :data:`defend.bench.floors.BENCH_DGDE`.
        pixel_th: PixelAttack's pixel counts, each its own row. pixel_max_iter: its DE
            generations (ART's default :data:`PIXEL_MAX_ITER`; fewer only for quick tests).

    Returns:
        ``(floor_row, pixel_comparison)``.
    """
    log = log or (lambda s: None)
    x = np.asarray(x, dtype=np.float32)
    attack, params = bench_dgde(classifier, len(x), dgde_params)
    dgde = DGDETiming(attack, params, torch.as_tensor(x, device=estimator_device(classifier)))
    dgde.warm_up()
    classifier.predict(np.repeat(x[:1], 128, axis=0))  # ART's predict path, batch 128
    ths = [int(t) for t in pixel_th]
    runs: dict[int, dict[str, Any]] = {}

    def run_pixel(th: int) -> None:
        runs[th] = _run_pixel_attack(classifier, x, th, pixel_max_iter)
        log(f"   PixelAttack th={th}: {np.mean(runs[th]['seconds']):.2f} s/image")

    for r in range(repeats):
        dgde.repeat(r)
        log(
            f"   repeat {r + 1}/{repeats}: DGDE {dgde.times['attack'][-1]:.2f} s, "
            f"floor {dgde.times['floor'][-1]:.2f} s"
        )
        if r < len(ths):
            run_pixel(ths[r])
    for th in ths[repeats:]:
        run_pixel(th)
    row = dgde.floor_row()
    comparison = _pixel_comparison(
        classifier, x, dgde, row["attack_s"] / len(x), runs, pixel_max_iter
    )
    return row, comparison
