"""Attack benchmark: each attack's wall time against a floor of pure model time, and against ART.

Three measurements, all taken in one process, interleaved (attack, floor, attack, ... with the
order alternating between repeats so that drift in the machine's load hits both alike), after
a warm-up, as the median of repeats:

1. **Overhead over the model.** Wall time of each attack divided by a *floor*: the model time
   the attack cannot avoid. For the gradient attacks (:class:`HallucinationAttack` on a U-Net
   and a VarNet, :class:`SegmentationFGSM` in PGD mode) the floor is ``iterations x`` one
   forward + backward of the same model on the same batch (input ``requires_grad``, the
   attack's loss: weighted MSE to the hallucination target / BCE). For :class:`DGDE` it is
   the same number of classifier forward passes as the attack made (its report's ``queries``)
   in batches of the size it uses (``population x`` images per batch), without gradients.
2. **HallucinationAttack vs ART's ProjectedGradientDescent** on the same ``ReconEstimator``
   and k-space: same absolute l-inf budget, step, number of steps, batch and perturbed
   entries (ART's ``mask=``); ART targets the hallucination target image. ART's PGD runs its
   numpy path for non-classifiers (a host copy per step). Both attacks' hallucination
   strength is reported for context.
3. **DGDE vs ART's PixelAttack** on the same classifier and images, both with ``y=None`` (the
   model's own labels; ART's PixelAttack refuses labels of a 2-class classifier): success
   rate, pixels changed, forward passes (counted by a forward hook, in images) and wall time
   per image. PixelAttack's ``th=None`` binary-searches the pixel count (about 7 attacks per
   image), far too slow here, so it runs at a few fixed pixel counts with a small ``max_iter``.

:func:`bench_attacks` runs everything on a ``defend demo`` folder; :func:`bench_suite` on
estimators and arrays you already hold; :func:`format_bench` prints the result.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defend.attacks import DGDE, HallucinationAttack, SegmentationFGSM
from defend.attacks.base import estimator_device
from defend.errors import DefendError

__all__ = [
    "BENCH_DGDE",
    "FLOOR_GOAL",
    "PIXEL_SPEEDUP_GOAL",
    "art_pgd_vs_hallucination",
    "bench_attacks",
    "bench_suite",
    "count_forward_rows",
    "dgde_vs_floor_and_pixel_attack",
    "format_bench",
    "hallucination_strength",
    "hallucination_vs_floor",
    "interleaved",
    "jsonable",
    "seg_pgd_vs_floor",
    "timed",
]

#: an attack's wall time over its floor of pure model time, at most
FLOOR_GOAL = 1.15
#: PixelAttack's wall time per image over DGDE's, at least
PIXEL_SPEEDUP_GOAL = 10.0
#: DGDE's settings in the benchmark: its defaults (patience 200, 20,000 queries per image) take
#: minutes per image on a CPU, most of it after the last improvement
BENCH_DGDE = {"population": 20, "patience": 50, "max_queries": 3000}

Log = Callable[[str], None]


# ---------------------------------------------------------------------- timing primitives
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``, with the device synchronised before both clock reads."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def interleaved(
    tasks: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Time each task ``repeats`` times, interleaved, the order reversed every other repeat."""
    times: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(tasks[name], device)[0])
    return times


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else math.nan


def _entry_module(model: nn.Module) -> nn.Module:
    """The module every forward pass enters (ART's wrapper calls a Sequential's layers singly)."""
    if isinstance(model, nn.Sequential) and len(model):
        return model[0]
    return model


@contextlib.contextmanager
def count_forward_rows(model: nn.Module) -> Iterator[list[int]]:
    """Count the images (batch rows) sent through ``model`` inside the block: ``counter[0]``."""
    counter = [0]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and torch.is_tensor(args[0]):
            counter[0] += int(args[0].shape[0])

    handle = _entry_module(model).register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def _floor_row(
    name: str,
    times: dict[str, list[float]],
    floor: str,
    params: dict[str, Any],
    goal: float = FLOOR_GOAL,
) -> dict[str, Any]:
    ratios = [a / f for a, f in zip(times["attack"], times["floor"], strict=True)]
    ratio = _median(ratios)
    return {
        "name": name,
        "attack_s": _median(times["attack"]),
        "floor_s": _median(times["floor"]),
        "ratio": ratio,
        "ratios": ratios,
        "attack_times": times["attack"],
        "floor_times": times["floor"],
        "goal": goal,
        "met": bool(ratio <= goal),
        "floor": floor,
        "params": params,
    }


def _tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x.to(device)


# ---------------------------------------------------------------------- hallucination
def _hallucination_goal(
    attack: HallucinationAttack, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the attack aims at, as it computes it: ``(y0, region, range, target, weight)``."""
    with torch.no_grad():
        y0 = attack.estimator.forward(x)
    return (y0, *attack.goal(y0))


def hallucination_strength(
    attack: HallucinationAttack, x: np.ndarray | torch.Tensor, x_adv: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Per-sample strength of any k-space perturbation, as ``HallucinationAttack`` reports it.

    Mean change of the reconstruction inside the attack's region over the intended change
    (``alpha`` times the clean reconstruction's range): 1 means the feature was inserted fully.
    """
    device = estimator_device(attack.estimator)
    xt, xa = _tensor(x, device), _tensor(x_adv, device)
    y0, region, value_range, _, _ = _hallucination_goal(attack, xt)
    with torch.no_grad():
        y_adv = attack.estimator.forward(xa)
    inside = region.to(y0.dtype)
    change = ((y_adv - y0) * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
    return (change / (attack.alpha * value_range)).float().cpu().numpy()


def hallucination_vs_floor(
    estimator: Any,
    x: np.ndarray | torch.Tensor,
    *,
    max_iter: int = 20,
    repeats: int = 3,
    name: str = "hallucination",
    **params: Any,
) -> dict[str, Any]:
    """HallucinationAttack (fixed ``max_iter``, ``patience=0``) against ``max_iter`` fwd+bwd.

    Args:
        estimator: a ``ReconEstimator`` (any ``defend`` k-space -> image estimator).
        x: masked k-space (N, coils, H, W, 2): one batch.
        params: further :class:`HallucinationAttack` arguments.
    """
    device = estimator_device(estimator)
    xt = _tensor(x, device)
    params = {"patience": 0, **params, "max_iter": max_iter, "batch_size": len(xt)}
    attack = HallucinationAttack(estimator, **params)
    _, _, _, target, weight = _hallucination_goal(attack, xt)
    # warm-up: one whole run. The floor runs on its output, an iterate of the attack: the
    # backward's cost depends a little on the values (subnormal floats around the clean input).
    x_floor = attack.generate(xt).detach()

    def forward_backward() -> None:
        xg = x_floor.detach().requires_grad_(True)
        loss = (weight * (estimator.forward(xg) - target).square()).flatten(1).sum(1)
        torch.autograd.grad(loss.sum(), xg)

    def floor() -> None:
        for _ in range(max_iter):
            forward_backward()

    forward_backward()
    times = interleaved({"attack": lambda: attack.generate(xt), "floor": floor}, repeats, device)
    definition = (
        f"{max_iter} x (est.forward(x) + backward of the weighted MSE to the target image, "
        f"x requires_grad) on the same batch of {len(xt)} (at the attack's output)"
    )
    row = _floor_row(name, times, definition, {k: getattr(attack, k) for k in params})
    row["strength"] = float(np.mean(attack.report["strength"]))
    return row


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
    """
    from art.attacks.evasion import ProjectedGradientDescent

    device = estimator_device(estimator)
    x = np.asarray(x, dtype=np.float32)
    magnitude = np.sqrt((x**2).sum(-1)).reshape(len(x), -1).max(1)
    eps = float(eps_rel * np.median(magnitude))
    ours = HallucinationAttack(
        estimator,
        eps=eps,
        eps_mode="absolute",
        step=step,
        max_iter=max_iter,
        patience=0,
        random_start=False,
        region=region,
        batch_size=len(x),
    )
    region_np = ours._regions(tuple(estimator.predict(x[:1]).shape[-2:]), len(x), device)
    region_np = region_np.float().cpu().numpy()

    def art_target() -> np.ndarray:
        """ART's ``y``: the hallucination target, built from the clean output as ours does."""
        y0 = estimator.predict(x, batch_size=len(x))
        value_range = y0.reshape(len(x), -1).max(1) - y0.reshape(len(x), -1).min(1)
        return y0 + ours.alpha * value_range.reshape(-1, 1, 1) * region_np

    sampled = np.asarray(torch.as_tensor(estimator.mask).float().cpu()).reshape(1, 1, 1, -1, 1)
    parts = np.array([1.0, 0.0] if ours.part == "real" else [1.0, 1.0])
    mask = (sampled * parts).astype(np.float32)
    art = ProjectedGradientDescent(
        estimator,
        norm=np.inf,
        eps=eps,
        eps_step=step * eps,
        max_iter=max_iter,
        targeted=True,
        num_random_init=0,
        batch_size=len(x),
        verbose=False,
    )
    own = {k: getattr(ours, k) for k in ours.attack_params}
    warm_ours = HallucinationAttack(estimator, **{**own, "max_iter": 1})
    warm_art = ProjectedGradientDescent(
        estimator,
        norm=np.inf,
        eps=eps,
        eps_step=step * eps,
        max_iter=1,
        targeted=True,
        num_random_init=0,
        batch_size=len(x),
        verbose=False,
    )
    warm_ours.generate(x)
    warm_art.generate(x, y=art_target(), mask=mask)
    outs: dict[str, np.ndarray] = {}

    def run_ours() -> None:
        outs["ours"] = ours.generate(x)

    def run_art() -> None:  # the target needs the clean output: part of ART's cost
        outs["art"] = art.generate(x, y=art_target(), mask=mask)

    times = interleaved({"ours": run_ours, "art": run_art}, repeats, device)
    ratios = [o / a for o, a in zip(times["ours"], times["art"], strict=True)]
    ratio = _median(ratios)
    linf = {k: float(np.abs(v - x).max()) for k, v in outs.items()}
    return {
        "ours_s": _median(times["ours"]),
        "art_s": _median(times["art"]),
        "ratio": ratio,
        "ratios": ratios,
        "ours_times": times["ours"],
        "art_times": times["art"],
        "goal": 1.0,
        "met": bool(ratio < 1.0),
        "strength_ours": float(np.mean(hallucination_strength(ours, x, outs["ours"]))),
        "strength_art": float(np.mean(hallucination_strength(ours, x, outs["art"]))),
        "strength_ours_report": float(np.mean(ours.report["strength"])),
        "linf_ours": linf["ours"],
        "linf_art": linf["art"],
        "params": {
            "eps": eps,
            "eps_rel": eps_rel,
            "eps_step": step * eps,
            "max_iter": max_iter,
            "batch_size": len(x),
            "norm": "inf",
            "perturbed": f"{ours.part} part, sampled entries",
            "art": "ProjectedGradientDescent(norm=inf, targeted=True, num_random_init=0), "
            "y = hallucination target image (its clean forward pass timed with ART), "
            "mask = perturbed entries",
        },
    }


# ---------------------------------------------------------------------- segmentation
def seg_pgd_vs_floor(
    estimator: Any,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor | None = None,
    *,
    max_iter: int = 20,
    repeats: int = 3,
    eps: float = 0.008,
    name: str = "seg-fgsm (PGD)",
) -> dict[str, Any]:
    """SegmentationFGSM in PGD mode (BCE, ``max_iter`` steps) against ``max_iter`` fwd+bwd."""
    from defend.losses import seg_loss

    device = estimator_device(estimator)
    xt = _tensor(x, device)
    params = {"eps": eps, "loss": "bce", "max_iter": max_iter, "batch_size": len(xt)}
    attack = SegmentationFGSM(estimator, **params)
    with torch.no_grad():
        logits = estimator.forward(xt).float()
    if y is None:
        target = (torch.sigmoid(logits) > attack.threshold).float()
        yt = None
    else:
        yt = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).to(device)
        target = yt.float()

    x_floor = attack.generate(xt, yt).detach()  # warm-up; the floor runs on its output

    def forward_backward() -> None:
        xg = x_floor.detach().requires_grad_(True)
        loss = seg_loss("bce", estimator.forward(xg).float(), target)
        torch.autograd.grad(loss.sum(), xg)

    def floor() -> None:
        for _ in range(max_iter):
            forward_backward()

    forward_backward()
    tasks = {"attack": lambda: attack.generate(xt, yt), "floor": floor}
    times = interleaved(tasks, repeats, device)
    definition = (
        f"{max_iter} x (est.forward(x) + BCE + backward, x requires_grad) on the same batch "
        f"of {len(xt)} (at the attack's output)"
    )
    return _floor_row(name, times, definition, params)


# ---------------------------------------------------------------------- DGDE and PixelAttack
def _changed_pixels(x: np.ndarray, x_adv: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Spatial pixels (any channel) that differ, per image."""
    return (np.abs(x_adv - x).max(1) > tol).reshape(len(x), -1).sum(1)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


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


def dgde_vs_floor_and_pixel_attack(
    classifier: Any,
    x: np.ndarray,
    *,
    repeats: int = 3,
    dgde_params: dict[str, Any] | None = None,
    pixel_th: Sequence[int] = (1, 5, 20),
    pixel_max_iter: int = 5,
    log: Log | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """DGDE's wall time against its model-time floor, and DGDE against ART's PixelAttack.

    Each repeat runs DGDE, then the floor (order alternating), then one of the PixelAttack
    pixel counts (the rest after the last repeat), so that all share the machine's load.

    Returns:
        ``(floor_row, pixel_comparison)``.
    """
    from art.attacks.evasion import PixelAttack

    log = log or (lambda s: None)
    device = estimator_device(classifier)
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    model = classifier.model
    params = {**BENCH_DGDE, "batch_size": 8, **(dgde_params or {})}
    params["batch_size"] = min(int(params["batch_size"]), n)
    attack = DGDE(classifier, **params)
    warm = DGDE(classifier, **{**params, "max_iter": 2})
    xt = torch.as_tensor(x, device=device)
    per_batch = attack.population * attack.batch_size

    @torch.no_grad()
    def floor(queries: int, images: torch.Tensor) -> None:
        big = images[: attack.batch_size].repeat_interleave(attack.population, 0)[:per_batch]
        full, rest = divmod(int(queries), per_batch)
        for _ in range(full):
            model(big)
        if rest:
            model(big[:rest])

    warm.generate(xt)
    floor(per_batch, xt)
    classifier.predict(np.repeat(x[:1], 128, axis=0))  # ART's predict path, batch 128

    times: dict[str, list[float]] = {"attack": [], "floor": []}
    dgde_out: dict[str, Any] = {}
    pixel_runs: dict[int, dict[str, Any]] = {}

    def run_dgde() -> None:
        with count_forward_rows(model) as counter:
            seconds, x_adv = timed(lambda: attack.generate(xt), device)
        times["attack"].append(seconds)
        dgde_out.update(
            x_adv=x_adv.cpu().numpy(),
            forwards=counter[0],
            report={k: v.copy() for k, v in attack.report.items()},
        )

    def run_floor() -> None:
        queries = int(dgde_out["report"]["queries"].sum())
        images = torch.as_tensor(dgde_out["x_adv"], device=device)  # the attack's output
        times["floor"].append(timed(lambda: floor(queries, images), device)[0])

    def run_pixel(th: int) -> None:
        pixel = PixelAttack(classifier, th=int(th), es=1, max_iter=pixel_max_iter, verbose=False)
        adv, seconds, forwards = [], [], []
        for i in range(n):
            with count_forward_rows(model) as counter:
                s, xa = timed(lambda i=i: pixel.generate(x[i : i + 1]), device)
            adv.append(xa.astype(np.float32))
            seconds.append(s)
            forwards.append(counter[0])
        pixel_runs[int(th)] = {
            "x_adv": np.concatenate(adv),
            "seconds": seconds,
            "forwards": forwards,
        }
        log(f"   PixelAttack th={th}: {sum(seconds) / n:.2f} s/image")

    ths = [int(t) for t in pixel_th]
    for r in range(repeats):
        # the first repeat runs DGDE first: the floor needs its query count (seeded: the same
        # in every repeat)
        for step in (run_dgde, run_floor) if r % 2 == 0 else (run_floor, run_dgde):
            step()
        log(
            f"   repeat {r + 1}/{repeats}: DGDE {times['attack'][-1]:.2f} s, "
            f"floor {times['floor'][-1]:.2f} s"
        )
        if r < len(ths):
            run_pixel(ths[r])
    for th in ths[repeats:]:
        run_pixel(th)

    report = dgde_out["report"]
    queries = int(report["queries"].sum())
    definition = (
        f"{queries} classifier forward passes (the report's queries, summed over the "
        f"{n} images) in batches of population x images per batch = "
        f"{attack.population} x {attack.batch_size} = {per_batch}, no grad: pure model time"
    )
    floor_row = _floor_row("dgde", times, definition, {k: getattr(attack, k) for k in params})

    # --- DGDE vs PixelAttack on the same images, both with the model's own labels
    labels = classifier.predict(x).argmax(1)

    def summary(x_adv: np.ndarray, seconds: float, forwards: float) -> dict[str, Any]:
        success = classifier.predict(x_adv).argmax(1) != labels
        pixels = _changed_pixels(x, x_adv).astype(np.float64)
        return {
            "success": float(success.mean()),
            "pixels": _nanmean(np.where(success, pixels, np.nan)),
            "pixels_each": np.where(success, pixels, np.nan).tolist(),
            "forwards_per_image": float(forwards),
            "s_per_image": float(seconds),
            "success_each": success.astype(float).tolist(),
        }

    dgde_s = floor_row["attack_s"] / n
    dgde_row = summary(dgde_out["x_adv"], dgde_s, dgde_out["forwards"] / n)
    dgde_row["queries_per_image"] = float(report["queries"].mean())
    dgde_row["pixels_report"] = _nanmean(report["pixels"])
    dgde_row["name"] = f"DGDE (population {attack.population}, patience {attack.patience})"
    rows = []
    for th in ths:
        run = pixel_runs[th]
        row = summary(run["x_adv"], float(np.mean(run["seconds"])), float(np.mean(run["forwards"])))
        row.update(name=f"PixelAttack th={th}", th=th, speedup=row["s_per_image"] / dgde_s)
        rows.append(row)
    # the search over pixel counts a user needs for a minimal count: every th on every image
    success = np.array([r["success_each"] for r in rows], dtype=bool)  # (th, n)
    pixels = np.array([r["pixels_each"] for r in rows], dtype=np.float64)  # NaN: failed
    best = np.where(success.any(0), np.nanmin(np.where(success, pixels, np.inf), 0), np.nan)
    search_s = float(sum(np.mean(pixel_runs[t]["seconds"]) for t in ths))
    search = {
        "name": f"PixelAttack, th in {{{', '.join(map(str, ths))}}}",
        "success": float(success.any(0).mean()),
        "pixels": _nanmean(best),
        "forwards_per_image": float(sum(r["forwards_per_image"] for r in rows)),
        "s_per_image": search_s,
        "speedup": search_s / dgde_s,
    }
    s_per_forward = sum(sum(run["seconds"]) for run in pixel_runs.values()) / max(
        1, sum(sum(run["forwards"]) for run in pixel_runs.values())
    )
    channels = x.shape[1]
    default_forwards = sum(_pixel_attack_forwards(t, channels, 100) for t in _binary_search_ths())
    projected = {
        "name": "PixelAttack at ART's defaults (th=None, max_iter=100), projected",
        "ths": _binary_search_ths(),
        "forwards_per_image": default_forwards,
        "s_per_image": default_forwards * s_per_forward,
        "speedup": default_forwards * s_per_forward / dgde_s,
        "basis": "ART's DE population x (max_iter + 1) per pixel count, the 7 counts its "
        "binary search tries when nothing succeeds, times the measured s per forward",
    }
    pixels_met = math.isnan(search["pixels"]) or (
        not math.isnan(dgde_row["pixels"]) and dgde_row["pixels"] < search["pixels"]
    )
    comparison = {
        "dgde": dgde_row,
        "pixel_attack": rows,
        "search": search,
        "projected_defaults": projected,
        "params": {
            "images": n,
            "labels": "the model's own (y=None for both)",
            "pixel_attack": f"PixelAttack(th, es=1 (differential evolution; es=0 needs cma), "
            f"max_iter={pixel_max_iter})",
            "dgde": {k: getattr(attack, k) for k in params},
            "forwards": "images through the model, counted by a forward hook",
        },
        "goals": {
            "success": {
                "dgde": dgde_row["success"],
                "art": search["success"],
                "met": bool(dgde_row["success"] >= search["success"]),
            },
            "pixels": {
                "dgde": dgde_row["pixels"],
                "art": search["pixels"],
                "met": bool(pixels_met and dgde_row["success"] >= search["success"]),
            },
            "speed": {
                "speedup": search["speedup"],
                "goal": PIXEL_SPEEDUP_GOAL,
                "met": bool(search["speedup"] >= PIXEL_SPEEDUP_GOAL),
                "against": "the search row: PixelAttack s/image summed over the th tried",
            },
        },
    }
    return floor_row, comparison


# ---------------------------------------------------------------------- the whole suite
def _balanced(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` images taking the classes in turn (dataset order within a class)."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n and any(by_class):
        for idx in by_class:
            if idx and len(picked) < n:
                picked.append(int(idx.pop(0)))
    return np.array(sorted(picked))


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_suite(
    *,
    unet: Any = None,
    varnet: Any = None,
    recon_x: np.ndarray | None = None,
    seg: Any = None,
    seg_x: np.ndarray | None = None,
    seg_y: np.ndarray | None = None,
    classifier: Any = None,
    cls_x: np.ndarray | None = None,
    iters: int = 20,
    repeats: int = 3,
    pixel_th: Sequence[int] = (1, 5, 20),
    pixel_max_iter: int = 5,
    dgde_params: dict[str, Any] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The benchmark on estimators and arrays you hold; parts whose inputs are None are skipped.

    Returns:
        ``{"floors": [rows], "art_pgd": {...} | None, "art_pixel": {...} | None}``.
    """
    log = log or (lambda s: None)
    result: dict[str, Any] = {"floors": [], "art_pgd": None, "art_pixel": None}

    def stage(title: str, fn: Callable[[], Any]) -> Any:
        log(f"== {title}")
        seconds, out = timed(fn, torch.device("cpu"))
        log(f"   done in {seconds:.1f} s")
        return out

    for name, est in (("unet", unet), ("varnet", varnet)):
        if est is None or recon_x is None:
            continue
        result["floors"].append(
            stage(
                f"HallucinationAttack on the {name}: {iters} iterations vs its floor",
                lambda est=est, name=name: hallucination_vs_floor(
                    est, recon_x, max_iter=iters, repeats=repeats, name=f"hallucination/{name}"
                ),
            )
        )
    if seg is not None and seg_x is not None:
        result["floors"].append(
            stage(
                f"SegmentationFGSM PGD: {iters} iterations vs its floor",
                lambda: seg_pgd_vs_floor(seg, seg_x, seg_y, max_iter=iters, repeats=repeats),
            )
        )
    if classifier is not None and cls_x is not None:
        floor_row, comparison = stage(
            "DGDE vs its floor, and vs ART PixelAttack",
            lambda: dgde_vs_floor_and_pixel_attack(
                classifier,
                cls_x,
                repeats=repeats,
                dgde_params=dgde_params,
                pixel_th=pixel_th,
                pixel_max_iter=pixel_max_iter,
                log=log,
            ),
        )
        result["floors"].append(floor_row)
        result["art_pixel"] = comparison
    recon = unet if unet is not None else varnet
    if recon is not None and recon_x is not None:
        result["art_pgd"] = stage(
            f"HallucinationAttack vs ART ProjectedGradientDescent: {iters} steps",
            lambda: art_pgd_vs_hallucination(recon, recon_x, max_iter=iters, repeats=repeats),
        )
        result["art_pgd"]["model"] = "unet" if unet is not None else "varnet"
    return result


def bench_attacks(
    run_dir: str | os.PathLike = "runs/demo",
    *,
    n: int = 4,
    split: str = "test",
    iters: int = 20,
    repeats: int = 3,
    pixel_th: Sequence[int] = (1, 5, 20),
    pixel_max_iter: int = 5,
    dgde_params: dict[str, Any] | None = None,
    device: str | None = None,
    threads: int | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The attack benchmark on a ``defend demo`` folder (``data/`` and the four checkpoints).

    Args:
        run_dir: holds ``data/``, ``recon-unet.pt``, ``recon-varnet.pt``, ``seg.pt``, ``cls.pt``.
        n: samples per task, attacked as one batch (classifier images: classes in turn).
        iters: iterations of the gradient attacks (and ART PGD's steps).
        repeats: timed repeats (after a warm-up); medians are reported.
        pixel_th: PixelAttack's fixed pixel counts. pixel_max_iter: its DE generations.
        dgde_params: DGDE arguments (default :data:`BENCH_DGDE`).
        device: torch device (default: CUDA when available).
        threads: torch CPU threads during the run (None: as they are).

    Returns:
        :func:`bench_suite`'s result plus ``"config"``; see :func:`format_bench`.
    """
    from defend.data import Acquisition, load_arrays
    from defend.estimators import load_estimator
    from defend.io import load_checkpoint

    run_dir = Path(run_dir)
    data = run_dir / "data"
    names = ("recon-unet", "recon-varnet", "seg", "cls")
    missing = [f"{name}.pt" for name in names if not (run_dir / f"{name}.pt").is_file()]
    if not data.is_dir():
        missing.insert(0, "data/")
    if missing:
        raise DefendError(
            f"{run_dir}: lacks {', '.join(missing)} (run `defend demo {run_dir}` first)"
        )
    if n < 1 or repeats < 1 or iters < 1:
        raise DefendError(f"n, repeats and iters must be >= 1, got {n}, {repeats}, {iters}")
    start = time.perf_counter()
    with _threads(threads):
        ckpts = {name: load_checkpoint(run_dir / f"{name}.pt") for name in names}
        est = {name: load_estimator(ckpts[name], device=device) for name in names}
        acquisition = Acquisition.from_dict(ckpts["recon-unet"]["data"]["acquisition"])
        varnet_acquisition = Acquisition.from_dict(ckpts["recon-varnet"]["data"]["acquisition"])
        if varnet_acquisition.to_dict() != acquisition.to_dict():
            raise DefendError("recon-unet.pt and recon-varnet.pt use different acquisitions")
        recon_x, _ = load_arrays(data, "recon", split, n, acquisition=acquisition)
        seg_x, seg_y = load_arrays(data, "seg", split, n)
        cls_all, _ = load_arrays(data, "cls", split, None)
        cls_x = cls_all[_balanced(cls_all, est["cls"].predict(cls_all).argmax(1), n)]
        result = bench_suite(
            unet=est["recon-unet"],
            varnet=est["recon-varnet"],
            recon_x=recon_x,
            seg=est["seg"],
            seg_x=seg_x,
            seg_y=seg_y,
            classifier=est["cls"],
            cls_x=cls_x,
            iters=iters,
            repeats=repeats,
            pixel_th=pixel_th,
            pixel_max_iter=pixel_max_iter,
            dgde_params=dgde_params,
            log=log,
        )
        used_threads = torch.get_num_threads()
    dev = estimator_device(est["recon-unet"])
    result["config"] = {
        "run_dir": str(run_dir),
        "split": split,
        "n": n,
        "iters": iters,
        "repeats": repeats,
        "device": str(dev),
        "threads": used_threads,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "pixel_th": list(pixel_th),
        "pixel_max_iter": pixel_max_iter,
        "recon_input": list(recon_x.shape),
        "seg_input": list(seg_x.shape),
        "cls_input": list(cls_x.shape),
        "seconds": time.perf_counter() - start,
    }
    return result


# ---------------------------------------------------------------------- printing / JSON
def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark's result as text tables: ratios, goals, and whether each goal is met."""
    lines: list[str] = []
    cfg = result.get("config")
    if cfg:
        lines.append(
            f"defend bench attacks: {cfg['run_dir']} ({cfg['split']} split, n={cfg['n']}), "
            f"device {cfg['device']}{' ' + cfg['gpu'] if cfg.get('gpu') else ''}, "
            f"{cfg['threads']} torch thread(s), torch {cfg['torch']}, "
            f"median of {cfg['repeats']} interleaved repeats after a warm-up"
        )
        lines.append("")
    if result["floors"]:
        lines.append("1. Attack wall time over its floor of pure model time")
        lines.append(
            f"   {'attack':24s} {'attack s':>9s} {'floor s':>9s} {'ratio':>7s} {'goal':>7s}  met"
        )
        for row in result["floors"]:
            lines.append(
                f"   {row['name']:24s} {row['attack_s']:9.3f} {row['floor_s']:9.3f} "
                f"{row['ratio']:7.3f} {'<= ' + format(row['goal'], '.2f'):>7s}  {_yes(row['met'])}"
            )
        lines.append("   floors:")
        for row in result["floors"]:
            lines.append(f"   - {row['name']}: {row['floor']}")
        lines.append(
            "   ratio = median over repeats of attack time / floor time (each pair "
            "measured back to back)"
        )
        lines.append("")
    pgd = result.get("art_pgd")
    if pgd:
        p = pgd["params"]
        lines.append(
            f"2. HallucinationAttack vs ART ProjectedGradientDescent ({pgd.get('model', 'recon')}, "
            f"same k-space, batch {p['batch_size']}, {p['max_iter']} steps, "
            f"eps {p['eps']:.4g} = {p['eps_rel']} x median max|k|, eps_step {p['eps_step']:.3g}, "
            f"{p['perturbed']})"
        )
        lines.append(f"   {'attack':24s} {'wall s':>9s} {'strength':>9s} {'linf':>9s}")
        lines.append(
            f"   {'HallucinationAttack':24s} {pgd['ours_s']:9.3f} "
            f"{pgd['strength_ours']:9.3f} {pgd['linf_ours']:9.3g}"
        )
        lines.append(
            f"   {'ART PGD (numpy path)':24s} {pgd['art_s']:9.3f} "
            f"{pgd['strength_art']:9.3f} {pgd['linf_art']:9.3g}"
        )
        lines.append(
            f"   ratio ours / ART {pgd['ratio']:.3f} "
            f"(ART / ours {1 / pgd['ratio']:.2f}x), "
            f"goal < 1 (ours faster): {_yes(pgd['met'])}"
        )
        lines.append(
            "   strength = mean change inside the region / intended change "
            "(alpha x clean range); 1 = feature fully inserted"
        )
        lines.append("")
    pix = result.get("art_pixel")
    if pix:
        prm = pix["params"]
        lines.append(
            f"3. DGDE vs ART PixelAttack (same classifier, same {prm['images']} images, "
            f"{prm['labels']})"
        )
        lines.append(
            f"   {'attack':34s} {'success':>7s} {'pixels':>7s} {'fwd/img':>8s} "
            f"{'s/img':>8s} {'ART/DGDE':>9s}"
        )
        d = pix["dgde"]
        lines.append(
            f"   {d['name']:34s} {d['success']:7.2f} {_fmt(d['pixels'], '7.1f'):>7s} "
            f"{d['forwards_per_image']:8.0f} {d['s_per_image']:8.2f} {'':>9s}"
        )
        for row in [*pix["pixel_attack"], pix["search"]]:
            lines.append(
                f"   {row['name']:34s} {row['success']:7.2f} {_fmt(row['pixels'], '7.1f'):>7s} "
                f"{row['forwards_per_image']:8.0f} {row['s_per_image']:8.2f} "
                f"{row['speedup']:8.1f}x"
            )
        proj = pix["projected_defaults"]
        lines.append(
            f"   {'(projected) ART defaults, th=None':34s} {'':>7s} {'':>7s} "
            f"{proj['forwards_per_image']:8.0f} {proj['s_per_image']:8.0f} "
            f"{proj['speedup']:8.0f}x"
        )
        g = pix["goals"]
        lines.append(
            f"   goal success DGDE >= ART: {g['success']['dgde']:.2f} vs "
            f"{g['success']['art']:.2f}: {_yes(g['success']['met'])}"
        )
        lines.append(
            f"   goal fewer pixels at equal or better success: "
            f"{_fmt(g['pixels']['dgde'], '.1f')} vs {_fmt(g['pixels']['art'], '.1f')}: "
            f"{_yes(g['pixels']['met'])}"
        )
        lines.append(
            f"   goal >= {g['speed']['goal']:.0f}x faster per image "
            f"({g['speed']['against']}): {g['speed']['speedup']:.1f}x: "
            f"{_yes(g['speed']['met'])}"
        )
        lines.append(
            f"   {prm['pixel_attack']}; pixels = mean over successes of pixels that "
            f"differ; fwd/img = {prm['forwards']}"
        )
        lines.append(f"   projected row: {proj['basis']} (not measured)")
        lines.append("")
    if cfg:
        lines.append(f"total {cfg['seconds']:.0f} s")
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN / inf as None and numpy values as Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    return obj
