"""A hallucination detector against its detector-aware attack (Carlini & Wagner 2017), weight
by weight: how much of the feature the attack keeps as it learns to stay below the detector."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from defend.adaptive.evading_hallucination import EvadingHallucination
from defend.data import load_arrays
from defend.detect.detector import default_data_folder, detector_outputs, load_detector
from defend.detect.evaluate import separation
from defend.detect.examples import VOLUMES, load_detection_data
from defend.estimators import load_estimator
from defend.io import check_writable, write_json


def evaluate_evasion(
    detector: str | os.PathLike,
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0),
    n: int = 16,
    split: str = "test",
    detection_data: str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The detector-aware attack against the detector, weight by weight.

    The first ``n`` slices of ``split`` are attacked by :class:`EvadingHallucination`
    (``params``: its settings, default the attack's: relative l-inf eps 0.1, 150 iterations,
    the paper's line) at each ``evade_weight``; the detector's scores on them are ranked
    against the negatives (clean and noise) of the split's detection data. Per weight: the
    AUROC, the share flagged at the calibrated threshold, and the mean hallucination
    strength: the trade-off between strength and evasion.

    Returns:
        ``{"rows": [{"evade_weight", "auroc", "flagged", "strength", ...}], ...}``, also
        written to ``out/evasion.json``.
    """
    out = check_writable(out, "dir")
    det = load_detector(detector)
    folder = Path(detection_data) if detection_data else default_data_folder(detector)
    negatives = load_detection_data(folder, split)
    negatives = negatives["inputs"][np.isin(negatives["kind"], ["clean", "noise"])]
    negative_scores, _ = detector_outputs(det.module, negatives)
    estimator = load_estimator(checkpoint)
    x, _ = load_arrays(Path(data_dir), "recon", VOLUMES[split], n, checkpoint=checkpoint)
    rows = []
    for weight in weights:
        attack = EvadingHallucination(
            estimator, detector=det, evade_weight=weight, **(params or {})
        )
        attack.generate(x)
        report = attack.report_rows()
        scores = np.array([r["detector_score"] for r in report])
        labels = np.r_[np.zeros(len(negative_scores)), np.ones(len(scores))]
        both = separation(labels, np.r_[negative_scores, scores])
        rows.append({
            "evade_weight": weight,
            "auroc": both["auroc"],
            "tpr_at_5fpr": both["tpr_at_5fpr"],
            "flagged": float(np.mean([r["flagged"] for r in report])),
            "strength": float(np.mean([r["strength"] for r in report])),
            "detector_score": float(scores.mean()),
        })  # fmt: skip
    result = {"split": split, "attacked": len(x), "negatives": len(negative_scores), "rows": rows}
    write_json(out / "evasion.json", result)
    return result
