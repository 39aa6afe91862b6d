"""Run one attack against a checkpoint on a data split: what ``defend attack`` does.

Writes ``OUT/metrics.csv`` (one row a sample), ``OUT/metrics.json`` (parameters, rows and
summary) and ``OUT/figure.png``, and returns the summary.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.attacks import ATTACKS
from defend.errors import DefendError
from defend.io import load_checkpoint, write_json, write_text


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max of every metric over samples, ignoring NaN."""
    summary = {}
    for key in rows[0] if rows else []:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            summary[key] = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
            continue
        summary[key] = {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite.min()),
            "max": float(finite.max()),
        }
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of :func:`summarise`'s output."""
    lines = [f"{'metric':24s} {'mean':>11s} {'std':>11s} {'min':>11s} {'max':>11s}"]
    for key, s in summary.items():
        lines.append(
            f"{key:24s} " + " ".join(f"{s[k]:11.4g}" for k in ("mean", "std", "min", "max"))
        )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def run_attack(
    name: str,
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 16,
    params: dict[str, Any] | None = None,
    device: str | None = None,
    figure_samples: int = 4,
) -> dict[str, Any]:
    """Attack ``n`` samples of ``data_dir``'s ``split`` with attack ``name``.

    Args:
        name: ``hallucination``, ``seg-fgsm`` or ``dgde``.
        checkpoint: a ``defend train`` checkpoint of the attack's task.
        data_dir: data folder (``defend data synth`` output or real data).
        out: output folder for metrics and figures.
        params: the attack's parameters (see its class).

    Returns:
        ``{"attack", "params", "summary", "rows", "files"}``.
    """
    from defend.data import Acquisition, load_arrays
    from defend.estimators import load_estimator

    if name not in ATTACKS:
        raise DefendError(f"unknown attack '{name}': choose one of {', '.join(ATTACKS)}")
    attack_cls, task = ATTACKS[name]
    ckpt = load_checkpoint(checkpoint, task)
    if n < 1:
        raise DefendError(f"--n must be >= 1, got {n}")
    estimator = load_estimator(ckpt, device=device)
    acquisition = None
    if task == "recon":
        acquisition = Acquisition.from_dict(ckpt["data"]["acquisition"])
    x, y = load_arrays(data_dir, task, split, n, acquisition=acquisition)
    params = dict(params or {})
    attack = attack_cls(estimator, **params)
    x_adv = attack.generate(x, y)
    rows = attack.report_rows()
    summary = summarise(rows)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "metrics.csv", "json": out / "metrics.json", "figure": out / "figure.png"}
    _write_csv(files["csv"], rows)
    k = min(figure_samples, len(x))
    _figure(name, attack, estimator, x[:k], x_adv[:k], y[:k], rows[:k], ckpt, files["figure"])
    result = {
        "attack": name,
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "split": split,
        "params": {p: getattr(attack, p) for p in attack.attack_params},
        "summary": summary,
        "rows": rows,
        "files": {k: str(v) for k, v in files.items()},
    }
    write_json(files["json"], result)
    return result


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

    if name == "hallucination":
        from defend.models.recon import zero_filled

        clean, adv = estimator.predict(x), estimator.predict(x_adv)
        mask = torch.as_tensor(estimator.mask).float()
        crop = tuple(clean.shape[-2:])
        zf = [
            zero_filled(torch.as_tensor(k) * mask.view(1, 1, 1, -1, 1), crop).numpy()
            for k in (x, x_adv)
        ]
        region = attack._regions(crop, len(x), torch.device("cpu")).numpy()
        plots.plot_hallucination(path, clean, adv, zf[0], zf[1], region, rows)
    elif name == "seg-fgsm":
        pred = [1 / (1 + np.exp(-estimator.predict(v))) > attack.threshold for v in (x, x_adv)]
        plots.plot_segmentation(path, x, x_adv, y, pred[0], pred[1], rows)
    else:
        plots.plot_pixels(path, x, x_adv, rows, ckpt["data"].get("classes"))
