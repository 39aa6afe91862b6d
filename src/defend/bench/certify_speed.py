"""Certification benchmark: smoothing's sampling throughput over the base model's own.

``defend bench certify RUN_DIR`` (:func:`bench_certify`) takes each model of a
``defend bench models`` folder and, in one process, times interleaved (certify, floor,
certify, floor, ...):

* **certify**: ``certify`` of the smoothed model on one sample (:mod:`defend.smooth.core`),
  everything included (noise generation, counting, statistics);
* **floor**: the base model's batched forward pass over the same number of rows, in
  batches of ``batch_size`` already on the device (no noise, no counting).

The number of rows is **counted**, never taken from a formula: every batch certify sends
through the smoothed model's base ``f`` is counted by a wrapper (:func:`counted_base`). By
the algorithms it is ``n0 + n`` for classification and segmentation, and for center smoothing
``n0 + 3 n + 1`` (candidates, their medians, the centre's test, the bound's ``n`` fresh draws
and one clean forward for the bound's scale) when the centre is kept, but only ``n0 + 2 n``
when it abstains: the bound's draws are never made. Dividing by ``n0 + 3 n`` there credited
certify with draws it did not make (an abstaining centre inflated its throughput 1.48x at
``n0 = 50, n = 500``).

Both throughputs are rows per second (the median of the repeats); the ratio is certify's
over the floor's: 1 means smoothing costs nothing beyond the forward passes. Goal: >= :data:`GOAL`.
For classification it also runs ART's ``PyTorchRandomizedSmoothing.predict`` on the same
classifier and samples (``sample_size = n``) beside ours (``SmoothClassifier.predict``):
times and how often the two predictions agree. ART's ``certify`` needs statsmodels, which
is not a dependency here; the row says so when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

from defend.attacks.torch_attack import torch_forward
from defend.bench.suite import DEMO_MODELS
from defend.bench.timing import Log, median, torch_threads
from defend.data import load_arrays
from defend.errors import DefendError
from defend.estimators import load_estimator
from defend.io import load_checkpoint
from defend.smooth import smoothed, training_unit

#: the goal: certify's samples per second over the base forward's
GOAL = 0.9
#: the noise level per task in the benchmark (input units; recon k-space units)
SIGMA = {"recon": 0.05, "seg": 0.05, "cls": 0.25}


@contextlib.contextmanager
def counted_base(smooth: Any) -> Iterator[list[int]]:
    """Count the rows (noisy or clean inputs) the smoothed model sends through its base ``f``
    inside the block: ``counter[0]``, updated as each batch passes. ``smooth.base`` is
    restored afterwards."""
    base, counter = smooth.base, [0]

    def counting(inputs: torch.Tensor) -> torch.Tensor:
        counter[0] += int(inputs.shape[0])
        return base(inputs)

    smooth.base = counting
    try:
        yield counter
    finally:
        smooth.base = base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _floor(forward: Any, xs: torch.Tensor, rows: Sequence[int], batch_size: int) -> float:
    """Seconds of the base model's forward over ``rows[i]`` copies of each input ``xs[i]``
    (N, ...), in batches of ``batch_size`` (no noise, no counting)."""
    batches = [
        x[None].expand(min(batch_size, total), *x.shape).contiguous()
        for x, total in zip(xs, rows, strict=True)
    ]
    _sync(xs.device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch, total in zip(batches, rows, strict=True):
            for first in range(0, total, batch_size):
                forward(batch[: min(batch_size, total - first)])
    _sync(xs.device)
    return time.perf_counter() - start


def certify_once(
    smooth: Any, task: str, x: np.ndarray, n0: int, n: int, batch_size: int
) -> tuple[float, int, bool]:
    """Certify one input ``x`` as the benchmark does (recon: alpha 0.05, ``eps_in`` = the
    task's sigma; else alpha 0.01).

    Returns:
        ``(seconds, rows, abstained)``: wall time, the rows certify sent through the base
        model (counted, :func:`counted_base`), and whether it abstained.
    """
    _sync(smooth.device)
    with counted_base(smooth) as counter:
        start = time.perf_counter()
        if task == "recon":  # alpha 0.05 and delta 0.1 (smoothed()), so that a small n may pass
            center, _ = smooth.certify(x, n0, n, 0.05, batch_size, eps_in=SIGMA[task])
            abstained = center is None
        else:
            label, _ = smooth.certify(x, n0, n, 0.01, batch_size)
            abstained = bool(np.all(np.asarray(label) == smooth.ABSTAIN))
        _sync(smooth.device)
        seconds = time.perf_counter() - start
    return seconds, counter[0], abstained


def _art_row(estimator: Any, smooth: Any, x: np.ndarray, n: int, batch_size: int) -> dict:
    """ART's smoothed PREDICT beside ours on the same classifier and samples."""

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
        import statsmodels  # noqa: F401 - ART's certify needs it; optional here

        certify = "available"
    except ImportError:
        certify = "ART's certify needs statsmodels (not installed): predict compared"
    return {
        "art_predict_s": art_seconds / len(x),
        "our_predict_s": our_seconds / len(x),
        "agreement": float((theirs == ours).mean()),
        "art_certify": certify,
    }


def _smoothed(estimator: Any, task: str, data_dir: Path, ckpt: dict[str, Any]) -> Any:
    """The benchmark's smoothed model: sigma :data:`SIGMA`; recon with delta 0.1 and the
    k-space unit of the training split (:func:`defend.smooth.training_unit`), fixed before
    any input is seen."""

    if task != "recon":
        return smoothed(estimator, SIGMA[task])
    return smoothed(estimator, SIGMA[task], unit=training_unit(data_dir, ckpt), delta=0.1)


def _time_certify(
    smooth: Any,
    task: str,
    forward: Any,
    x: np.ndarray,
    xt: torch.Tensor,
    sizes: tuple[int, int, int],
    repeats: int,
) -> dict[str, Any]:
    """Interleaved certify / floor rounds on the samples ``x`` (N, ...) (``xt`` on the
    device); the floor replays, per sample, the rows certify was counted sending.

    Returns:
        ``draws`` (rows, all samples), ``draws_each``, ``abstained`` (samples),
        ``formula_draws`` (what ``n0 + passes x n`` would claim), ``samples_per_s``,
        ``floor_per_s`` (rows per second) and ``ratio``.
    """
    n0, n, batch_size = sizes
    certify_s, floor_s, counts = [], [], []
    for _ in range(repeats + 1):  # the first round warms up
        runs = [certify_once(smooth, task, xi, n0, n, batch_size) for xi in x]
        counts.append([r[1] for r in runs])
        certify_s.append(sum(r[0] for r in runs))
        floor_s.append(_floor(forward, xt, counts[-1], batch_size))
    if any(c != counts[0] for c in counts):  # seeded: every round draws the same
        raise DefendError(f"certify sent {counts} rows in its rounds: expected the same each")
    draws = sum(counts[0])
    row = {
        "draws": draws,
        "draws_each": counts[0],
        "abstained": sum(r[2] for r in runs),
        "formula_draws": len(x) * (n0 + (3 if task == "recon" else 1) * n),
        "samples_per_s": draws / median(certify_s[1:]),
        "floor_per_s": draws / median(floor_s[1:]),
    }
    row["ratio"] = row["samples_per_s"] / row["floor_per_s"]
    return row


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
        One row per model: ``model``, ``task``, ``draws`` (rows certify sent through the base
        model, counted), ``draws_each`` (per sample), ``abstained`` (samples),
        ``formula_draws``, ``samples_per_s`` (certify, rows/s), ``floor_per_s``, ``ratio``,
        ``goal``, and for classification ART's comparison.
    """

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
            smooth = _smoothed(estimator, task, run_dir / "data", ckpt)
            forward = torch_forward(estimator)
            xt = torch.as_tensor(x).to(next(estimator.model.parameters()).device)
            log(f"== {name}: certify vs the forward floor on the rows it sends (counted)")
            row = _time_certify(smooth, task, forward, x, xt, (n0, n, batch_size), repeats)
            row = {"model": name, "task": task, **row, "goal": GOAL}
            if task == "cls":
                row.update(_art_row(estimator, smooth, x, n, batch_size))
            rows.append(row)
            log(format_certify([row]).splitlines()[-1])
    return rows


def format_certify(rows: list[dict[str, Any]]) -> str:
    """A table: one row a model. ``draws``: rows certify sent through the base model (counted,
    all samples); ``abst``: samples whose certify abstained; throughputs in rows per second."""
    lines = [
        f"{'model':14s} {'draws':>7s} {'abst':>4s} {'rows/s':>8s} {'floor/s':>8s} "
        f"{'ratio':>6s}  goal >= {GOAL}"
    ]
    for r in rows:
        line = (
            f"{r['model']:14s} {r['draws']:7d} {r['abstained']:4d} {r['samples_per_s']:8.1f} "
            f"{r['floor_per_s']:8.1f} {r['ratio']:6.3f}  {'yes' if r['ratio'] >= GOAL else 'NO'}"
        )
        if "agreement" in r:
            line += (
                f"  ART predict {r['art_predict_s']:.2f} s/sample vs ours "
                f"{r['our_predict_s']:.2f}, agreement {r['agreement']:.2f}"
            )
        lines.append(line)
    return "\n".join(lines)
