"""``defend certify``: certificates of a smoothed checkpoint over a data split.

:func:`certify_split` certifies ``n_samples`` samples of a split, every ``skip``-th from the
first (locuslab's ``--skip``, so that a few samples still spread over the split), one at a
time (the sample at dataset position ``i`` seeded ``seed + i``, so any subset gives the same
rows), and writes into ``out``:

* ``certificates.csv``, one row a sample: classification ``index,label,predict,radius,correct``;
  segmentation ``index,certified_fraction,certified_accuracy,abstain_fraction`` (pixels of
  all labels; accuracy counts a pixel certified with its true label) and
  ``foreground_accuracy`` (the same over the true foreground pixels only, e.g. the lesion:
  the few pixels that matter, which the all-pixel means hide; empty without any);
  reconstruction ``index,eps_in,eps_out,abstain`` (``eps_in`` in k-space units, ``eps_out``
  relative to the norm of the noise-free output); ``index`` is the dataset position;
* ``summary.json``: the settings (reconstruction: with the noise's ``unit`` and
  ``noise_std``), the means, and the curve of the figure;
* ``certified.png``: certified accuracy against the l2 radius (classification), certified
  pixel accuracy against the radius over a range of ``tau`` (segmentation), or the output
  bound against ``eps_in`` (reconstruction).

Reconstruction noise is fixed before any sample is seen: std ``sigma * unit`` on the real and
imaginary parts of the entries the checkpoint's acquisition samples, ``unit`` the k-space unit
of ``data_dir``'s training split (:func:`defend.smooth.training_unit`); a certificate covers
every perturbation of those parts with l2 norm at most ``eps_in * unit``
(:class:`defend.smooth.noise.KspaceNoise`).

A run that stops keeps the finished samples in ``certificates.partial.jsonl`` and the noise
draws of the sample in progress in ``certificates.sample.pt`` (its vote counts, candidates or
distances, saved every 30 s, :class:`~defend.smooth.draw_checkpoint.DrawCheckpoint`), and
resumes from there with the same settings (other settings are refused), continuing the
interrupted sample at its next block of draws; the final files are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm
from tqdm.auto import tqdm

from defend.data.arrays import every_kth, load_groups
from defend.device import check_batch_memory
from defend.errors import DefendError
from defend.io import (
    check_model_checkpoint,
    check_writable,
    load_checkpoint,
    write_csv,
    write_json,
    write_text,
)
from defend.plots import plot_sweep
from defend.smooth import load_smoothed, training_unit
from defend.smooth.core import check_alpha
from defend.smooth.draw_checkpoint import DrawCheckpoint
from defend.tasks import kind_of

#: default sample counts and alpha per task (Cohen et al.; SegCertify; center smoothing)
DEFAULTS = {
    "cls": {"n0": 100, "n": 10_000, "alpha": 0.001},
    "seg": {"n0": 100, "n": 1000, "alpha": 1e-4},
    "recon": {"n0": 30, "n": 2000, "alpha": 0.01},
}
#: the tau values of the segmentation curve and the eps_in values of the reconstruction one
#: (multiples of sigma, so eps_in = EPS_IN * sigma in k-space units)
TAUS = (0.55, 0.65, 0.75, 0.85, 0.95)
EPS_IN = (0.0, 0.25, 0.5, 0.75, 1.0)


def _cls_row(smooth: Any, x: np.ndarray, y: Any, settings: dict[str, Any]) -> dict[str, Any]:
    label, radius = smooth.certify(x, **settings)
    return {"label": int(y), "predict": label, "radius": radius, "correct": int(label == int(y))}


def _seg_row(
    smooth: Any, x: np.ndarray, y: np.ndarray, settings: dict[str, Any], tau: float
) -> dict[str, Any]:
    taus = sorted({tau, *TAUS})
    results = smooth.certify_taus(x, taus=tuple(taus), **settings)
    curve = {}
    for t, (labels, _) in zip(taus, results, strict=True):
        certified = labels != smooth.ABSTAIN
        curve[t] = (float(certified.mean()), float((certified & (labels == y)).mean()))
    fraction, accuracy = curve[tau]
    labels = results[taus.index(tau)][0]
    foreground = y == 1
    hits = (labels == 1) & foreground  # certified foreground (1 is never ABSTAIN)
    return {
        "certified_fraction": fraction,
        "certified_accuracy": accuracy,
        "abstain_fraction": 1 - fraction,
        "foreground_accuracy": float(hits.sum() / foreground.sum()) if foreground.any() else None,
        "curve": {str(t): v[1] for t, v in curve.items() if t in TAUS},
    }


def _recon_row(
    smooth: Any, x: np.ndarray, settings: dict[str, Any], eps_in: float
) -> dict[str, Any]:
    grid = [e * smooth.sigma for e in EPS_IN]
    center, bounds = smooth.certify(x, eps_in=[eps_in, *grid], **settings)
    return {
        "eps_in": eps_in,
        "eps_out": bounds[0],
        "abstain": int(center is None),
        "curve": dict(zip(map(str, EPS_IN), bounds[1:], strict=True)),
    }


def _summary(task: str, settings: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json`` but its rows: the task, the run's ``settings``, the sample count, the
    means over samples and the figure's curve (:func:`_means`)."""
    head = {"task": task, "settings": settings, "n_samples": len(rows)}
    return {**head, **_means(task, rows, settings["sigma"])}


def _means(task: str, rows: list[dict[str, Any]], sigma: float) -> dict[str, Any]:
    """Means over samples, and the figure's curve ``{"x": [...], "y": [...]}``."""
    if kind_of(task) == "cls":
        radii = np.array([r["radius"] if r["correct"] else -1.0 for r in rows])
        grid = np.linspace(0, max(4 * sigma, float(radii.max(initial=0))), 9)
        curve = [float((radii >= r).mean()) for r in grid]
        abstain = float(np.mean([r["predict"] == -1 for r in rows]))
        return {
            "certified_accuracy": dict(zip(map(float, grid), curve, strict=True)),
            "abstain": abstain,
            "curve": {"x": grid.tolist(), "y": curve},
        }
    if kind_of(task) == "seg":
        keys = ("certified_fraction", "certified_accuracy", "abstain_fraction")
        means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        foreground = [r["foreground_accuracy"] for r in rows]
        foreground = [a for a in foreground if a is not None]
        means["foreground_accuracy"] = float(np.mean(foreground)) if foreground else None
        means["foreground_samples"] = len(foreground)
        y = [float(np.mean([r["curve"][str(t)] for r in rows])) for t in TAUS]
        return {**means, "curve": {"x": [sigma * norm.ppf(t) for t in TAUS], "y": y}}
    kept = [r for r in rows if not r["abstain"]]
    y = [float(np.median([r["curve"][str(e)] for r in kept])) if kept else math.nan for e in EPS_IN]
    return {
        "abstain": 1 - len(kept) / len(rows),
        "eps_out_median": float(np.median([r["eps_out"] for r in kept])) if kept else math.nan,
        "curve": {"x": [e * sigma for e in EPS_IN], "y": y},
    }


#: where a run keeps its finished rows until the final files are written (module doc)
PARTIAL = "certificates.partial.jsonl"
#: where a run keeps the Monte Carlo state of the sample it is certifying (module doc)
SAMPLE = "certificates.sample.pt"
#: seconds between two saves of the sample's Monte Carlo state within one phase
SAVE_EVERY = 30.0
#: the columns of certificates.csv per task
COLUMNS = {
    "cls": ("index", "label", "predict", "radius", "correct"),
    "seg": (
        "index",
        "certified_fraction",
        "certified_accuracy",
        "abstain_fraction",
        "foreground_accuracy",
    ),
    "recon": ("index", "eps_in", "eps_out", "abstain"),
}

FIGURE = {
    "cls": ("l2 radius (pixel units)", "certified accuracy"),
    "seg": ("l2 radius (pixel units)", "certified pixel accuracy"),
    "recon": ("eps_in (l2, k-space units)", "eps_out (median, relative)"),
}


def _read_partial(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a stopped run of the same settings finished (its first line: the settings;
    a run that finished none is started over)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if len(lines) > 1 and json.loads(lines[0]) != settings:
        raise DefendError(
            f"{path} holds a run with other settings; remove it or choose another --out"
        )
    rows = []
    for line in lines[1:] if len(lines) > 1 else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the stop
            break
    return rows


def _write_partial(path: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in [settings, *rows]))


def certify_split(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    sigma: float,
    *,
    denoiser: str | os.PathLike | None = None,
    split: str = "test",
    n_samples: int = 16,
    skip: int = 1,
    n0: int | None = None,
    n: int | None = None,
    alpha: float | None = None,
    batch_size: int | None = None,
    tau: float | None = None,
    eps_in: float | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Certify ``n_samples`` of ``split``, every ``skip``-th, with the smoothed checkpoint
    (module doc).

    Args:
        sigma: the noise std (images: [0, 1] units; recon: k-space units, module doc).
        denoiser: a ``defend train denoiser`` checkpoint, or None.
        n0, n, alpha: selection and estimation samples, failure probability (default
            :data:`DEFAULTS`). tau: segmentation's vote threshold (default 0.75). eps_in:
            the reconstruction's input radius (default ``sigma``, k-space units).
        batch_size: noisy copies a pass (None: what :mod:`defend.memory` allows).

    Returns:
        The summary (also ``out/summary.json``), with ``rows``.

    Raises:
        DefendError: (one line, before any file) a bad option (:func:`check_options`), a
            checkpoint that is not a model, an unwritable ``out``, a batch that cannot fit.
    """
    if n_samples < 1 or skip < 1:
        raise DefendError(f"--n-samples and --skip must be >= 1, got {n_samples}, {skip}")
    ckpt = check_model_checkpoint(load_checkpoint(checkpoint), checkpoint)
    task = ckpt["task"]
    counts = _sample_counts(task, n0, n, alpha)
    check_options(task, sigma, counts, batch_size, tau, eps_in)
    out = check_writable(out, "dir")
    tau, eps_in = 0.75 if tau is None else tau, sigma if eps_in is None else eps_in
    smooth, noise = _smoothed(checkpoint, data_dir, ckpt, sigma, denoiser, device, counts)
    samples = _every(data_dir, task, split, n_samples, skip, ckpt)
    check_batch_memory(batch_size, max((x.shape for x in samples[0]), key=np.prod), smooth.device)
    settings = {
        "checkpoint": Path(checkpoint).name, "denoiser": denoiser and Path(denoiser).name,
        "split": split, "sigma": sigma, "seed": seed, "skip": skip, **counts,
        "tau": tau if kind_of(task) == "seg" else None,
        "eps_in": eps_in if kind_of(task) == "recon" else None, **noise,
    }  # fmt: skip
    certify = _row_function(task, smooth, tau, eps_in)
    rows = _certify_rows(out, task, smooth, settings, certify, samples,
                         {**counts, "batch_size": batch_size}, progress)  # fmt: skip
    _write_results(out, summary := _summary(task, settings, rows), rows, checkpoint, denoiser)
    return {**summary, "rows": rows}


def check_options(task: str, sigma: float, counts: dict[str, Any], batch_size: int | None,
                  tau: float | None, eps_in: float | None) -> None:  # fmt: skip
    """Refuse, in one line naming the option and the value given, what certify cannot use:
    ``sigma``, ``n0``, ``n``, ``batch_size`` or ``eps_in`` not above 0, ``alpha`` outside
    (0, 0.5), recon ``n0`` above ``n`` (every sample would abstain), ``tau`` outside (0.5, 1)
    (the radius ``sigma * Phi^-1(tau)`` must be positive), or ``tau`` / ``eps_in`` given to
    a task that ignores them."""
    kind = kind_of(task)
    for name, value in (("--sigma", sigma), ("--n0", counts["n0"]), ("--n", counts["n"]),
                        ("--batch-size", batch_size), ("--eps-in", eps_in)):  # fmt: skip
        if value is not None and not value > 0:
            raise DefendError(f"{name} must be > 0, got {value:g}")
    check_alpha(counts["alpha"])  # the value typed (recon's certify halves it later)
    if kind == "recon" and counts["n0"] > counts["n"]:
        raise DefendError(
            f"--n0 ({counts['n0']}) must not exceed --n ({counts['n']}): with more centre "
            "candidates than estimation samples every sample abstains"
        )
    if tau is not None and kind != "seg":
        raise DefendError(f"--tau is segmentation's vote threshold; {task} ignores it")
    if tau is not None and not 0.5 < tau < 1:
        raise DefendError(f"--tau must be in (0.5, 1), got {tau:g}")
    if eps_in is not None and kind != "recon":
        raise DefendError(f"--eps-in is the reconstruction's input radius; {task} ignores it")


def _sample_counts(task: str, n0: int | None, n: int | None, alpha: float | None) -> dict[str, Any]:
    """``{"n0", "n", "alpha"}``: the given ones, :data:`DEFAULTS` of ``task`` for those None."""
    given = (("n0", n0), ("n", n), ("alpha", alpha))
    return {**DEFAULTS[kind_of(task)], **{k: v for k, v in given if v is not None}}


def _smoothed(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    ckpt: dict[str, Any],
    sigma: float,
    denoiser: str | os.PathLike | None,
    device: str | None,
    counts: dict[str, Any],
) -> tuple[Any, dict[str, float]]:
    """``(smoothed model, noise)`` of the checkpoint (``ckpt``, loaded) for ``certify``.

    Reconstruction: the noise is fixed before any sample is seen, in the k-space unit of
    ``data_dir``'s training split; ``noise`` is ``{"unit", "noise_std"}`` (raw k-space units),
    what the settings record; ``{}`` for the other tasks.

    Raises:
        DefendError: reconstruction with ``counts["n"]`` too few for any centre to pass its
            test at ``alpha / 2`` (``certify`` spends half of ``alpha`` on the centre).
    """
    recon = kind_of(ckpt["task"]) == "recon"
    noise = {"unit": training_unit(data_dir, ckpt)} if recon else {}
    smooth = load_smoothed(checkpoint, sigma, denoiser, device=device, **noise)
    if recon:
        smooth.check_samples(counts["n"], counts["alpha"] / 2)  # certify halves alpha
        noise["noise_std"] = smooth.noise_std
    return smooth, noise


@contextlib.contextmanager
def _draw_bar(smooth: Any, progress: bool) -> Iterator[Any]:
    """A second progress bar counting the noisy copies of the sample being certified (a
    recon sample at real size takes minutes), fed by ``smooth.on_draws``."""
    draws = tqdm(desc="noisy copies, this sample", unit="copy", leave=False,
                 disable=not progress)  # fmt: skip
    smooth.on_draws = draws.update
    try:
        yield draws
    finally:
        smooth.on_draws = None
        draws.close()


def _certify_rows(
    out: Path,
    task: str,
    smooth: Any,
    settings: dict[str, Any],
    certify: Callable[..., dict[str, Any]],
    samples: tuple[list[np.ndarray], list[np.ndarray], np.ndarray],
    options: dict[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    """One certificate row per sample of ``samples`` ``(x, y, positions)``, in order.

    The rows a stopped run of the same ``settings`` left in ``out``'s :data:`PARTIAL` are
    kept (another run's are refused, :func:`_read_partial`); each new row is appended to it
    as a JSON line, flushed, as soon as it is done. The sample at dataset position ``i`` is
    certified with ``options`` (``n0``, ``n``, ``alpha``, ``batch_size``) and seed
    ``settings["seed"] + i``: its row is ``{"index": i, **certify(x, y, {**options, "seed":
    settings["seed"] + i})}``. Meanwhile the Monte Carlo state of the sample in progress is
    saved in :data:`SAMPLE` as it grows and continued by the next run (``smooth.checkpoint``,
    :class:`~defend.smooth.draw_checkpoint.DrawCheckpoint`), dropped once its row is in.
    """
    x, y, positions = samples
    partial, log = out / PARTIAL, DrawCheckpoint(out / SAMPLE, every=SAVE_EVERY)
    rows = _read_partial(partial, settings)[: len(x)]
    _write_partial(partial, settings, rows)
    bar = tqdm(range(len(x)), desc=f"certify {task}",
               disable=not progress, initial=len(rows))  # fmt: skip
    smooth.checkpoint = log
    with _draw_bar(smooth, progress) as draws, partial.open("a") as finished:
        for i in range(len(rows), len(x)):
            index = int(positions[i])
            sample = {**options, "seed": settings["seed"] + index}
            draws.reset()
            log.begin(settings, sample["seed"])
            row = {"index": index, **certify(x[i], y[i], sample)}
            rows.append(row)
            finished.write(json.dumps(row) + "\n")
            finished.flush()
            log.clear()
            bar.update()
    bar.close()
    return rows


def _write_results(
    out: Path,
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    checkpoint: str | os.PathLike,
    denoiser: str | os.PathLike | None,
) -> None:
    """``certificates.csv`` (the task's :data:`COLUMNS` of ``rows``), ``summary.json`` (the
    summary with ``rows``) and ``certified.png`` (the summary's curve, :data:`FIGURE`'s
    labels) into ``out``, each written atomically; then the partial log (:data:`PARTIAL`)
    goes, the run complete."""
    task, sigma = summary["task"], summary["settings"]["sigma"]
    write_csv(out / "certificates.csv", [{k: r[k] for k in COLUMNS[kind_of(task)]} for r in rows])
    write_json(out / "summary.json", {**summary, "rows": rows})
    xlabel, ylabel = FIGURE[kind_of(task)]
    name = f"sigma {sigma:g}" + (" + denoiser" if denoiser else "")
    plot_sweep(
        out / "certified.png",
        summary["curve"]["x"],
        {name: summary["curve"]["y"]},
        xlabel,
        f"{Path(checkpoint).name}: {ylabel}",
        log_x=False,
        ylabel=ylabel,
    )
    (out / PARTIAL).unlink()


def _every(
    data_dir: Any, task: str, split: str, n_samples: int, skip: int, ckpt: dict[str, Any]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """``(x, y, positions)`` of every ``skip``-th sample of the split, ``n_samples`` at most,
    one array a sample in dataset order: samples of every shape (fastMRI mixes k-space
    widths and coil counts; each is certified by the smoothing of its shape)."""
    positions = every_kth(data_dir, task, split, n_samples, skip, ckpt)
    rows = {}
    for xs, ys, used in load_groups(data_dir, task, split, indices=positions, checkpoint=ckpt):
        rows.update({int(p): (xi, yi) for xi, yi, p in zip(xs, ys, used, strict=True)})
    return [rows[int(p)][0] for p in positions], [rows[int(p)][1] for p in positions], positions


def _row_function(task: str, smooth: Any, tau: float, eps_in: float) -> Callable[..., dict]:
    if kind_of(task) == "cls":
        return lambda x, y, s: _cls_row(smooth, x, y, s)
    if kind_of(task) == "seg":
        return lambda x, y, s: _seg_row(smooth, x, y.astype(np.uint8), s, tau)
    return lambda x, y, s: _recon_row(smooth.reshaped(x.shape), x, s, eps_in)
