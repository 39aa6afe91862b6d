"""The whole benchmark: on estimators and arrays you hold, or on a ``defend bench models`` folder.

:func:`bench_suite` runs the floors (:mod:`defend.bench.floors`) and the comparisons with ART
(:mod:`defend.bench.versus_art`) on whatever it is given; :func:`bench_attacks` loads a models
folder's four checkpoints and test samples (read the way each model was trained: its checkpoint's
acquisition, classes and channels), then runs :func:`bench_suite` under a chosen torch
thread count and records the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.attacks.torch_attack import estimator_device
from defend.bench.floors import hallucination_vs_floor, seg_pgd_vs_floor
from defend.bench.timing import Log, timed, torch_threads
from defend.bench.versus_art import (
    PIXEL_MAX_ITER,
    art_pgd_vs_hallucination,
    dgde_vs_floor_and_pixel_attack,
)
from defend.cpu_kernels import cpu_kernels
from defend.data import load_arrays
from defend.data.arrays import checkpoint_data_args
from defend.errors import DefendError
from defend.estimators import load_estimator
from defend.io import load_checkpoint

#: the checkpoints a ``defend bench models`` folder holds, by name
DEMO_MODELS = ("recon-unet", "recon-varnet", "seg", "cls")


def _stage(log: Log, title: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, announced with ``title`` and its duration in ``log``."""
    log(f"== {title}")
    seconds, out = timed(fn, torch.device("cpu"))
    log(f"   done in {seconds:.1f} s")
    return out


def _recon_floors(
    models: dict[str, Any], x: np.ndarray, iters: int, repeats: int, log: Log
) -> list[dict[str, Any]]:
    """HallucinationAttack's floor row on each reconstruction model given (name -> estimator)."""
    return [
        _stage(
            log,
            f"HallucinationAttack on the {name}: {iters} iterations vs its floor",
            lambda est=est, name=name: hallucination_vs_floor(
                est, x, max_iter=iters, repeats=repeats, name=f"hallucination/{name}"
            ),
        )
        for name, est in models.items()
        if est is not None
    ]


def _pgd_stage(
    models: dict[str, Any], x: np.ndarray, iters: int, repeats: int, log: Log
) -> dict[str, Any] | None:
    """HallucinationAttack vs ART's PGD on the first reconstruction model given, if any."""
    name = next((name for name, est in models.items() if est is not None), None)
    if name is None:
        return None
    result = _stage(
        log,
        f"HallucinationAttack vs ART ProjectedGradientDescent: {iters} steps",
        lambda: art_pgd_vs_hallucination(models[name], x, max_iter=iters, repeats=repeats),
    )
    return {**result, "model": name}


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
    pixel_max_iter: int = PIXEL_MAX_ITER,
    dgde_params: dict[str, Any] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The benchmark on estimators and arrays you hold; parts whose inputs are None are skipped.

    Args:
        unet, varnet, recon_x: reconstruction estimators and masked k-space (N, coils, H, W, 2).
        seg, seg_x, seg_y: a segmentation estimator, images (N, C, H, W), masks (N, K, H, W).
        classifier, cls_x: an ART classifier and images (N, C, H, W).
        iters: iterations of the gradient attacks (and ART PGD's steps).
        repeats: timed repeats after a warm-up; medians are reported.

    Returns:
        ``{"floors": [rows], "art_pgd": {...} | None, "art_pixel": {...} | None}``.
    """
    log = log or (lambda s: None)
    result: dict[str, Any] = {"floors": [], "art_pgd": None, "art_pixel": None}
    recon = {"unet": unet, "varnet": varnet}
    if recon_x is not None:
        result["floors"] += _recon_floors(recon, recon_x, iters, repeats, log)
    if seg is not None and seg_x is not None:
        run_seg = partial(seg_pgd_vs_floor, seg, seg_x, seg_y, max_iter=iters, repeats=repeats)
        title = f"SegmentationFGSM PGD: {iters} iterations vs its floor"
        result["floors"].append(_stage(log, title, run_seg))
    if classifier is not None and cls_x is not None:
        dgde = {"pixel_th": pixel_th, "pixel_max_iter": pixel_max_iter, "dgde_params": dgde_params}
        run_dgde = partial(
            dgde_vs_floor_and_pixel_attack, classifier, cls_x, repeats=repeats, log=log, **dgde
        )
        title = "DGDE vs its floor, and vs ART PixelAttack"
        floor_row, result["art_pixel"] = _stage(log, title, run_dgde)
        result["floors"].append(floor_row)
    if recon_x is not None:
        result["art_pgd"] = _pgd_stage(recon, recon_x, iters, repeats, log)
    return result


def _balanced(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` of the (N,) ``labels`` taking the classes in turn (dataset order within
    a class), sorted."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n and any(by_class):
        for idx in by_class:
            if idx and len(picked) < n:
                picked.append(int(idx.pop(0)))
    return np.array(sorted(picked))


def _check_models_folder(run_dir: Path, n: int, iters: int, repeats: int) -> None:
    """A clear error for a folder that is not a finished ``defend bench models`` or bad counts."""
    missing = [f"{name}.pt" for name in DEMO_MODELS if not (run_dir / f"{name}.pt").is_file()]
    if not (run_dir / "data").is_dir():
        missing.insert(0, "data/")
    if missing:
        raise DefendError(
            f"{run_dir}: lacks {', '.join(missing)} (run `defend bench models {run_dir}` first)"
        )
    if n < 1 or repeats < 1 or iters < 1:
        raise DefendError(f"n, repeats and iters must be >= 1, got {n}, {repeats}, {iters}")


def _load_models(run_dir: Path, n: int, split: str, device: str | None) -> dict[str, Any]:
    """The folder's estimators and ``n`` samples per task (classifier images: classes in turn),
    each read as its checkpoint was trained; :func:`bench_suite`'s arguments."""

    ckpts = {name: load_checkpoint(run_dir / f"{name}.pt") for name in DEMO_MODELS}
    est = {name: load_estimator(ckpts[name], device=device) for name in DEMO_MODELS}
    acquisitions = [
        checkpoint_data_args(ckpts[name], "recon")["acquisition"].to_dict()
        for name in ("recon-unet", "recon-varnet")
    ]
    if acquisitions[0] != acquisitions[1]:
        raise DefendError("recon-unet.pt and recon-varnet.pt use different acquisitions")
    data = run_dir / "data"
    recon_x, _ = load_arrays(data, "recon", split, n, checkpoint=ckpts["recon-unet"])
    seg_x, seg_y = load_arrays(data, "seg", split, n, checkpoint=ckpts["seg"])
    cls_all, _ = load_arrays(data, "cls", split, None, checkpoint=ckpts["cls"])
    cls_x = cls_all[_balanced(est["cls"].predict(cls_all).argmax(1), n)]
    return {
        "unet": est["recon-unet"],
        "varnet": est["recon-varnet"],
        "recon_x": recon_x,
        "seg": est["seg"],
        "seg_x": seg_x,
        "seg_y": seg_y,
        "classifier": est["cls"],
        "cls_x": cls_x,
    }


def _config(
    run_dir: Path,
    split: str,
    settings: dict[str, Any],
    inputs: dict[str, Any],
    threads: int,
    seconds: float,
) -> dict[str, Any]:
    """Where and how the benchmark ran: folder, ``settings`` (n, iters, repeats, pixel_th,
    pixel_max_iter), device, threads, versions, input shapes and duration."""
    dev = estimator_device(inputs["unet"])
    return {
        "run_dir": str(run_dir),
        "split": split,
        **{k: settings[k] for k in ("n", "iters", "repeats")},
        "device": str(dev),
        "threads": threads,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_kernels": cpu_kernels(),
        "pixel_th": list(settings["pixel_th"]),
        "pixel_max_iter": settings["pixel_max_iter"],
        "recon_input": list(inputs["recon_x"].shape),
        "seg_input": list(inputs["seg_x"].shape),
        "cls_input": list(inputs["cls_x"].shape),
        "seconds": seconds,
    }


def bench_attacks(
    run_dir: str | os.PathLike = "runs/bench",
    *,
    n: int = 4,
    split: str = "test",
    iters: int = 20,
    repeats: int = 3,
    pixel_th: Sequence[int] = (1, 5, 20),
    pixel_max_iter: int = PIXEL_MAX_ITER,
    dgde_params: dict[str, Any] | None = None,
    device: str | None = None,
    threads: int | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The attack benchmark on a ``defend bench models`` folder (``data/``, four checkpoints).

    Args:
        run_dir: holds ``data/``, ``recon-unet.pt``, ``recon-varnet.pt``, ``seg.pt``, ``cls.pt``.
        n: samples per task, attacked as one batch (classifier images: classes in turn).
        iters: iterations of the gradient attacks (and ART PGD's steps).
        repeats: timed repeats (after a warm-up); medians are reported.
        pixel_th: PixelAttack's fixed pixel counts (a row each). pixel_max_iter: its DE
            generations (default ART's, :data:`~defend.bench.versus_art.PIXEL_MAX_ITER`).
        dgde_params: DGDE arguments (default :data:`~defend.bench.floors.BENCH_DGDE`).
        device: torch device (default: CUDA when available).
        threads: torch CPU threads during the run (None: as they are).

    Returns:
        :func:`bench_suite`'s result plus ``"config"``; see :func:`format_bench`.
    """
    run_dir = Path(run_dir)
    _check_models_folder(run_dir, n, iters, repeats)
    start = time.perf_counter()
    settings = {
        "iters": iters,
        "repeats": repeats,
        "pixel_th": pixel_th,
        "pixel_max_iter": pixel_max_iter,
        "dgde_params": dgde_params,
    }
    with torch_threads(threads):
        inputs = _load_models(run_dir, n, split, device)
        result = bench_suite(**inputs, **settings, log=log)
        used_threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    result["config"] = _config(run_dir, split, {**settings, "n": n}, inputs, used_threads, seconds)
    return result
