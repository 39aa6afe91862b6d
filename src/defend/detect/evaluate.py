"""``defend detect eval``: the detector beside the baselines, on the same samples.

:func:`evaluate_detector` scores every sample of a detection data split with the learned
detector and with each baseline, oriented so that higher means "attacked":

* oracle (need the clean reconstruction, an upper bound for metric screening):
  ``-psnr``, ``-ssim``, ``nrmse`` of the reconstruction against the clean one;
* reference-free: ``dc_error`` (the measurement map's norm over the reconstruction's) and
  ``kspace_residual`` (:func:`~defend.detect.features.kspace_residual`).

Groups, each the attacked samples of one kind against all negatives (clean and noise):
``hallucination`` (every setting), ``hallucination/<norm>/<eps>``, ``hallucination/<region>``
and ``pgd`` (ART PGD, reported apart). Per group and method: AUROC, AUPRC and the TPR at 5 %
FPR (scikit-learn). The map's localisation on hallucinations: IoU at probability 0.5 and the
pointing accuracy (the map's maximum inside the true region).

At the detector's calibrated threshold (:func:`~defend.detect.detector.calibrate`: 5 % of the
validation split's clean samples flagged) :func:`flag_rates` gives ``test_fpr``, the share
of the evaluated split's **clean** samples flagged: on the test split (the default), slices
of volumes calibration never saw, so it is the false-positive rate a deployment can expect
(``held_out`` says whether the split's clean slices are other than the calibration's), with
the shares of noise samples, hallucinations and PGD samples flagged beside it.

Files: ``OUT/scores.csv`` (``index,label,attack,eps,region,score`` and one column per
baseline), ``OUT/metrics.json``, ``OUT/roc.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from defend.detect.detector import default_data_folder, detector_outputs, load_detector
from defend.detect.examples import VOLUMES, load_detection_data, make_detection_data
from defend.errors import DefendError
from defend.io import check_writable, load_checkpoint, write_csv, write_json
from defend.metrics import quality_warnings
from defend.plots import plot_roc

#: the baselines: column of the detection data -> orientation (+1: higher is "attacked")
BASELINES = {"psnr": -1, "ssim": -1, "nrmse": 1, "dc_error": 1, "kspace_residual": 1}
#: which need the clean reference
ORACLE = ("psnr", "ssim", "nrmse")
#: the false-positive rate of the reported TPR
FPR = 0.05


def separation(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and the TPR at :data:`FPR` of ``scores`` (N,) for binary ``labels`` (N,)."""

    scores = np.nan_to_num(scores.astype(np.float64), posinf=1e12, neginf=-1e12)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "tpr_at_5fpr": float(tpr[fpr <= FPR].max()),
        "positives": int(labels.sum()),
        "negatives": int((1 - labels).sum()),
    }


def flag_rates(kind: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """The shares of samples flagged (``score > threshold``) per kind (``kind`` (N,) of
    :data:`~defend.detect.examples.KINDS`, ``scores`` (N,)): ``test_fpr`` over the clean samples,
    ``noise_flagged``, and ``detected`` (hallucination, pgd), NaN for a kind absent; with
    the counts."""
    flagged = np.asarray(scores) > threshold

    def share(name: str) -> float:
        picked = np.asarray(kind) == name
        return float(flagged[picked].mean()) if picked.any() else float("nan")

    return {
        "test_fpr": share("clean"),
        "noise_flagged": share("noise"),
        "detected": {name: share(name) for name in ("hallucination", "pgd")},
        "counts": {name: int((np.asarray(kind) == name).sum()) for name in
                   ("clean", "noise", "hallucination", "pgd")},
    }  # fmt: skip


def groups(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,) bool masks of the samples of each group (module doc), negatives included."""
    kind = data["kind"]
    negative = (kind == "clean") | (kind == "noise")
    hallucination = kind == "hallucination"
    out = {"hallucination": hallucination | negative, "pgd": (kind == "pgd") | negative}
    norms, epss = data["norm"][hallucination], data["eps"][hallucination].tolist()
    budgets = sorted(set(zip(norms, epss, strict=True)))
    for norm, eps in budgets:
        picked = hallucination & (data["norm"] == norm) & (data["eps"] == np.float32(eps))
        out[f"hallucination/{norm}/{eps:g}"] = picked | negative
    for region in sorted(set(data["region_kind"][hallucination])):
        picked = hallucination & (data["region_kind"] == region)
        out[f"hallucination/{region}"] = picked | negative
    return out


def localisation(heat: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """IoU at probability 0.5 and pointing accuracy of maps ``heat`` (N, h, w) against the
    true regions (N, h, w) of hallucinated samples."""
    hit, truth = heat > 0.5, region.astype(bool)
    union = (hit | truth).sum()
    peak = heat.reshape(len(heat), -1).argmax(1)
    pointed = truth.reshape(len(truth), -1)[np.arange(len(truth)), peak]
    return {
        "iou": float((hit & truth).sum() / union) if union else float("nan"),
        "pointing": float(pointed.mean()) if len(pointed) else float("nan"),
        "samples": len(heat),
    }


def evaluate_detector(
    detector: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
) -> dict[str, Any]:
    """Score a detection data split with the detector and the baselines (module doc).

    Returns:
        The metrics (also ``out/metrics.json``): ``{"groups": {group: {method: {...}}},
        "localisation": {...}, "threshold": ..., "calibration": the checkpoint's record,
        "held_out": ..., and :func:`flag_rates`' (``test_fpr`` ...) at the threshold}``.
    """

    out = check_writable(out, "dir")
    det = load_detector(detector)
    arrays = load_detection_data(data, split)
    score, heat = detector_outputs(det.module, arrays["inputs"])
    methods = {"detector": score}
    methods.update({k: sign * arrays[k] for k, sign in BASELINES.items()})
    labels = arrays["label"].astype(np.int64)
    metrics: dict[str, Any] = {"groups": {}, "split": split, "threshold": det.threshold}
    if det.threshold is not None:
        metrics["calibration"] = load_checkpoint(detector)["calibration"]
        metrics["held_out"] = VOLUMES[split] != VOLUMES[metrics["calibration"].get("split", "val")]
        metrics.update(flag_rates(arrays["kind"], score, det.threshold))
    for name, mask in groups(arrays).items():
        if len(np.unique(labels[mask])) == 2:
            metrics["groups"][name] = {
                m: separation(labels[mask], s[mask]) for m, s in methods.items()
            }
    hallucinated = arrays["kind"] == "hallucination"
    metrics["localisation"] = localisation(heat[hallucinated], arrays["region"][hallucinated])
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"index": i, "label": int(labels[i]), "attack": str(arrays["kind"][i]),
         "eps": float(arrays["eps"][i]), "region": str(arrays["region_kind"][i]),
         "score": float(score[i]), **{k: float(arrays[k][i]) for k in BASELINES}}
        for i in range(len(labels))
    ]  # fmt: skip
    write_csv(out / "scores.csv", rows)
    write_json(out / "metrics.json", metrics)
    _plot_roc(out / "roc.png", labels, methods, groups(arrays)["hallucination"])
    return metrics


def _plot_roc(path: Path, labels: np.ndarray, methods: dict[str, np.ndarray], mask: np.ndarray):
    """ROC curves of every method on one group (hallucinations against the negatives)."""

    curves = {}
    for name, scores in methods.items():
        finite = np.nan_to_num(scores[mask].astype(np.float64), posinf=1e12, neginf=-1e12)
        curves[name] = roc_curve(labels[mask], finite)[:2]
    title = "hallucination vs clean + noise\n(dashed: needs the clean reference)"
    return plot_roc(path, curves, title, dashed=ORACLE)


def detect_eval(
    detector: str | os.PathLike,
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    detection_data: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``defend detect eval``: make (or reuse) the detection data of ``split`` with the
    detector's own data settings (attack iterations, seed), then :func:`evaluate_detector`.

    Args:
        detector: a ``defend train detector`` checkpoint. checkpoint: the reconstruction
            model it guards. data_dir: the data folder. detection_data: the detection data
            folder (default: the detector's, ``DET.data``).
    """

    check_writable(out, "dir")
    ckpt = load_checkpoint(detector)
    if ckpt.get("kind") != "detector":
        raise DefendError(f"{detector}: not a detector checkpoint (defend train detector)")
    made = ckpt["data"]["detection"]
    guarded = load_checkpoint(checkpoint, "recon")
    if made["checkpoint"]["model_config"] != guarded["model_config"]:
        raise DefendError(
            f"{detector} was trained on the outputs of {made['checkpoint']['file']}, "
            f"a model unlike {Path(checkpoint).name}"
        )
    folder = Path(detection_data) if detection_data else default_data_folder(detector)
    make_detection_data(checkpoint, data_dir, folder, splits=(split,), chunk=made["chunk"],
                        max_iter=made["max_iter"], seed=made["seed"], device=device,
                        progress=progress)  # fmt: skip
    return evaluate_detector(detector, folder, out, split)


def format_metrics(metrics: dict[str, Any]) -> str:
    """The AUROC table of :func:`evaluate_detector`'s metrics (a row a group, a column a
    method) and the map's localisation."""
    methods = list(next(iter(metrics["groups"].values())))
    lines = [f"{'AUROC':26s}" + "".join(f"{m:>16s}" for m in methods)]
    for group, result in metrics["groups"].items():
        lines.append(f"{group:26s}" + "".join(f"{result[m]['auroc']:16.3f}" for m in methods))
    loc = metrics["localisation"]
    lines.append(f"map on hallucinations: IoU {loc['iou']:.3f}, pointing {loc['pointing']:.3f}")
    for group, result in metrics["groups"].items():
        for line in quality_warnings("detector", result.get("detector", {})):
            lines.append(f"warning: {group}: {line}")
    if "test_fpr" in metrics:
        target = metrics["calibration"]["fpr"]
        seen = "" if metrics["held_out"] else ", NOT held out"
        found = ", ".join(f"{k} {v:.3f}" for k, v in metrics["detected"].items())
        lines.append(
            f"at the threshold calibrated at {target:g} FPR on clean val: clean FPR on "
            f"{metrics['split']} {metrics['test_fpr']:.3f}{seen}, noise flagged "
            f"{metrics['noise_flagged']:.3f}, detected: {found}"
        )
    return "\n".join(lines)
