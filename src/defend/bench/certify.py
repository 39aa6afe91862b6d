"""Certification benchmark: smoothing's sampling throughput over the base model's own.

``defend bench certify RUN_DIR`` (:func:`bench_certify`) takes each model of a
``defend bench models`` folder and, in one process, times interleaved (certify, floor,
certify, floor, ...):

* **certify**: ``certify`` of the smoothed model on one sample (:mod:`defend.smooth.core`:
  ``n0 + n`` noisy copies for classification and segmentation, ``n0 + 3 n`` for center
  smoothing), everything included (noise generation, counting, statistics);
* **floor**: the base model's batched forward pass over the same number of inputs, in
  batches of ``batch_size`` already on the device (no noise, no counting).

The ratio is floor time over certify time, both per noisy sample (the median of the
repeats): 1 means smoothing costs nothing beyond the forward passes. Goal: >= :data:`GOAL`.
For classification it also runs ART's ``PyTorchRandomizedSmoothing.predict`` on the same
classifier and samples (``sample_size = n``) beside ours (``SmoothClassifier.predict``):
times and how often the two predictions agree. ART's ``certify`` needs statsmodels, which
is not a dependency here; the row says so when it is missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.bench.timing import Log, median, torch_threads
from defend.errors import DefendError

#: the goal: certify's samples per second over the base forward's
GOAL = 0.9
#: the noise level per task in the benchmark (input units; recon relative)
SIGMA = {"recon": 0.05, "seg": 0.05, "cls": 0.25}
#: how many sets of ``n`` noisy copies certify draws per sample (beside ``n0``)
PASSES = {"recon": 3, "seg": 1, "cls": 1}


def _floor(forward: Any, x: torch.Tensor, total: int, batch_size: int) -> float:
    """Seconds of ``total`` forward rows of the base model in batches of ``batch_size``."""
    batch = x[None].expand(batch_size, *x.shape).contiguous()
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, total, batch_size):
            forward(batch[: min(batch_size, total - first)])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def _certify_once(smooth: Any, task: str, x: np.ndarray, n0: int, n: int, batch_size: int) -> float:
    start = time.perf_counter()
    if task == "recon":  # alpha 0.05 and delta 0.1 (smoothed()), so that a small n may pass
        smooth.certify(x, n0, n, 0.05, batch_size, eps_in=SIGMA[task])
    else:
        smooth.certify(x, n0, n, 0.01, batch_size)
    return time.perf_counter() - start


def _art_row(estimator: Any, smooth: Any, x: np.ndarray, n: int, batch_size: int) -> dict:
    """ART's smoothed PREDICT beside ours on the same classifier and samples."""
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    device = next(estimator.model.parameters()).device
    art = PyTorchRandomizedSmoothing(
        model=estimator.model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=estimator.input_shape,
        nb_classes=estimator.nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
        sample_size=n,
        scale=smooth.sigma,
        alpha=0.001,
    )
    np.random.seed(0)
    start = time.perf_counter()
    theirs = art.predict(x, batch_size=batch_size)
    art_seconds = time.perf_counter() - start
    theirs = np.where(theirs.sum(1) > 0, theirs.argmax(1), -1)
    start = time.perf_counter()
    ours = np.array([smooth.predict(xi, n, 0.001, batch_size) for xi in x])
    our_seconds = time.perf_counter() - start
    try:
        import statsmodels  # noqa: F401

        certify = "available"
    except ImportError:
        certify = "ART's certify needs statsmodels (not installed): predict compared"
    return {
        "art_predict_s": art_seconds / len(x),
        "our_predict_s": our_seconds / len(x),
        "agreement": float((theirs == ours).mean()),
        "art_certify": certify,
    }


def bench_certify(
    run_dir: str | os.PathLike = "runs/bench",
    *,
    samples: int = 2,
    n0: int = 100,
    n: int = 2000,
    batch_size: int = 500,
    repeats: int = 3,
    device: str | None = None,
    threads: int | None = 1,
    log: Log = print,
) -> list[dict[str, Any]]:
    """The certification benchmark (module doc) on a ``defend bench models`` folder.

    Returns:
        One row per model: ``model``, ``task``, ``samples_per_s`` (certify), ``floor_per_s``,
        ``ratio``, ``goal``, and for classification ART's comparison.
    """
    from defend.attacks.base import torch_forward
    from defend.bench.suite import DEMO_MODELS
    from defend.data import load_arrays
    from defend.estimators import load_estimator
    from defend.io import load_checkpoint
    from defend.smooth import smoothed

    run_dir = Path(run_dir)
    missing = [m for m in DEMO_MODELS if not (run_dir / f"{m}.pt").is_file()]
    if missing:
        raise DefendError(
            f"{run_dir}: lacks {', '.join(missing)}.pt (run `defend bench models` first)"
        )
    if min(samples, n0, n, batch_size, repeats) < 1:
        raise DefendError("--samples, --n0, --n, --batch-size and --repeats must be >= 1")
    rows = []
    with torch_threads(threads):
        for name in DEMO_MODELS:
            ckpt = load_checkpoint(run_dir / f"{name}.pt")
            task = ckpt["task"]
            estimator = load_estimator(ckpt, device=device)
            x, _ = load_arrays(run_dir / "data", task, "test", samples, checkpoint=ckpt)
            options = {"delta": 0.1} if task == "recon" else {}
            smooth = smoothed(estimator, SIGMA[task], **options)
            total = n0 + PASSES[task] * n
            forward = torch_forward(estimator)
            xt = torch.as_tensor(x[0]).to(next(estimator.model.parameters()).device)
            log(f"== {name}: certify ({total} noisy copies per sample) vs the forward floor")
            certify_s, floor_s = [], []
            for _ in range(repeats + 1):  # the first round warms up
                certify_s.append(
                    sum(_certify_once(smooth, task, xi, n0, n, batch_size) for xi in x)
                )
                floor_s.append(len(x) * _floor(forward, xt, total, batch_size))
            row = {
                "model": name,
                "task": task,
                "noisy_copies": total * len(x),
                "samples_per_s": total * len(x) / median(certify_s[1:]),
                "floor_per_s": total * len(x) / median(floor_s[1:]),
            }
            row["ratio"] = row["samples_per_s"] / row["floor_per_s"]
            row["goal"] = GOAL
            if task == "cls":
                row.update(_art_row(estimator, smooth, x, n, batch_size))
            rows.append(row)
            log(format_certify([row]).splitlines()[-1])
    return rows


def format_certify(rows: list[dict[str, Any]]) -> str:
    """A table: one row a model."""
    lines = [f"{'model':14s} {'copies/s':>10s} {'floor/s':>10s} {'ratio':>6s}  goal >= {GOAL}"]
    for r in rows:
        line = f"{r['model']:14s} {r['samples_per_s']:10.1f} {r['floor_per_s']:10.1f} "
        line += f"{r['ratio']:6.3f}"
        if "agreement" in r:
            line += (
                f"  ART predict {r['art_predict_s']:.2f} s/sample vs ours "
                f"{r['our_predict_s']:.2f}, agreement {r['agreement']:.2f}"
            )
        lines.append(line)
    return "\n".join(lines)
