"""A cell's per-sample outcomes and their summary: the numbers and intervals it records.

:class:`Judge` scores one attacked batch against the row's clean outputs, per sample
(:mod:`defend.matrix.measures`: abstentions count against the defence, recon success on the
net strength); :func:`worst_case` keeps per sample the attacker's best of several attacks
(Carlini et al. 2019, §5: the per-example worst case) and records each attack's own success
beside it; :func:`detection` and :func:`certified` add a detector's and a certificate's
outcomes; :func:`summarise` turns the per-sample outcomes into the cell's ``metrics``, each
with its 95 % interval and the number of samples judged (:mod:`defend.intervals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from defend import intervals
from defend.matrix import measures
from defend.matrix.measures import Outputs
from defend.matrix.phases import timed
from defend.tasks import kind_of

#: per-sample outcomes that are 0 or 1 on every task (rates: Wilson intervals)
RATES = ("success", "adaptive_success", "plain_success", "undetected_success",
         "adaptive_undetected_success", "plain_undetected_success", "detected",
         "false_positive", "missed", "covered", "violated")  # fmt: skip
#: outcomes that are 0 or 1 per sample on recon and cls, a share of pixels on seg
SHARES = ("abstain", "clean_abstain", "certified")
#: what matrix.md and the report show, in order: (metric, title)
SHOWN = (
    ("success", "attack success (share of samples; abstentions count against the defence)"),
    ("attacked_quality", "quality under attack (abstentions scored as the defence's fallback)"),
    ("clean_quality", "clean quality"),
    ("abstain", "abstentions under attack (share of samples; seg: of pixels)"),
    ("net_strength", "net hallucination strength (beyond the feature in the measurement)"),
    ("feature_recall", "real-feature recall (strength of a real finding in the output)"),
    ("missed", "real findings missed (recall below half)"),
    ("covered", "inside-radius: samples with a certificate"),
    ("violated", "inside-radius: certificates broken inside their radius"),
    ("adaptive_success", "the adaptive attack's own success (before the worst case)"),
    ("plain_success", "the plain attack's own success in the adaptive cell"),
    ("detection_auroc", "detection AUROC (attacked against clean)"),
    ("undetected_success", "success undetected by the detector"),
    ("certified", "certified under the cell's perturbation"),
)


@dataclass(frozen=True)
class AttackSpec:
    """One attack a cell runs: ``run(estimator, x, y, eps, params, positions, seed) ->
    x_adv`` (a :data:`defend.matrix.columns.ATTACKS` column's), the ``estimator`` the
    attacker sees and its ``params``."""

    run: Callable[..., np.ndarray]
    estimator: Any
    params: dict[str, Any]

    @timed("attack")
    def __call__(self, x: np.ndarray, y: np.ndarray, eps: float | None, positions: np.ndarray,
                 seed: int) -> np.ndarray:  # fmt: skip
        """The attacked inputs (the shape of ``x``)."""
        return self.run(self.estimator, x, y, eps, self.params, positions, seed)


#: the possible range of each bounded mean (a t interval is cut to it); SSIM lies in [-1, 1]
BOUNDS = {"clean_quality": (0.0, 1.0), "attacked_quality": (0.0, 1.0), "abstain": (0.0, 1.0),
          "clean_abstain": (0.0, 1.0)}  # fmt: skip


def bounds(task: str, metric: str) -> tuple[float, float] | None:
    """The range a mean of ``metric`` on ``task`` can take, None where it has none."""
    if kind_of(task) == "recon" and metric in (
        "clean_quality",
        "attacked_quality",
        "zero_filled_quality",
    ):
        return (-1.0, 1.0)
    return BOUNDS.get(metric)


def is_rate(task: str, metric: str) -> bool:
    """Whether ``metric`` is a rate of 0 / 1 outcomes on ``task`` (else a mean)."""
    if metric in RATES:
        return True
    if metric in SHARES:
        return kind_of(task) != "seg"
    return kind_of(task) == "cls" and metric in ("clean_quality", "attacked_quality")


class Judge:
    """Per-sample outcomes of attacked outputs against the row's clean outputs.

    Args:
        config: the matrix configuration (the hallucination attack's region for recon).
        defended: the row's :class:`~defend.matrix.rows.System`.
        x: (N, ...) clean inputs. y: their ground truth. clean_out: the system's clean
            :class:`~defend.matrix.measures.Outputs`.
    """

    @timed("judging")
    def __init__(self, config: dict[str, Any], defended: Any, x: np.ndarray, y: np.ndarray,
                 clean_out: Outputs) -> None:  # fmt: skip
        self.task, self.defended, self.x, self.y = defended.task, defended, x, y
        self.feature = None
        if kind_of(self.task) == "recon":
            params = config["attack"]["hallucination"]
            self.feature = measures.Hallucination(defended.estimator, params)
        self.clean_abstain = measures.abstained(self.task, clean_out)
        self.clean = self.shown(x, clean_out)
        self.clean_quality = measures.quality(self.task, y, self.clean)

    def shown(self, x: np.ndarray, out: Outputs) -> np.ndarray:
        """The outputs as scored (:func:`measures.resolve`): recon abstentions replaced by
        the system's declared fallback for inputs ``x``."""
        fallback = None
        if kind_of(self.task) == "recon" and out.abstained.any():
            if self.defended.fallback is None:
                raise ValueError("a recon system abstained without a declared fallback")
            fallback = self.defended.fallback(x, tuple(self.y.shape[1:]))
        return measures.resolve(self.task, out, self.y, fallback)

    @timed("judging")
    def __call__(self, x_adv: np.ndarray, adv_out: Outputs) -> dict[str, np.ndarray]:
        """Per sample (each (N,)): ``clean_quality``, ``attacked_quality``, ``success``;
        recon ``strength``, ``input_strength``, ``net_strength``; a smoothed system
        ``abstain`` and ``clean_abstain``."""
        task, shown = self.task, self.shown(x_adv, adv_out)
        samples = {"clean_quality": self.clean_quality,
                   "attacked_quality": measures.quality(task, self.y, shown)}  # fmt: skip
        net = None
        if self.feature is not None:
            samples.update(self.feature.strengths(self.clean, shown, self.x, x_adv))
            net = samples["net_strength"]
        samples["success"] = measures.success(task, self.y, self.clean, shown, net)
        if self.defended.smooth is not None:
            samples["abstain"] = measures.abstained(task, adv_out)
            samples["clean_abstain"] = self.clean_abstain
        return samples

    @timed("judging")
    def recall(self, x_feature: np.ndarray, out: Outputs) -> dict[str, np.ndarray]:
        """Per sample (each (N,)) of a real feature acquired in ``x_feature``
        (``real-feature``, recon): ``feature_recall`` (its strength in the outputs),
        ``input_recall`` (in the zero-filled input), ``missed`` (recall below
        :data:`measures.STRENGTH`), ``clean_quality``, ``attacked_quality`` (against the
        ground truth with the feature); a smoothed system ``abstain``, ``clean_abstain``."""
        shown = self.shown(x_feature, out)
        found = self.feature.strengths(self.clean, shown, self.x, x_feature)
        truth = self.y + self.feature.feature(self.y)
        missed = (found["strength"] < measures.STRENGTH).astype(np.float64)
        samples = {"clean_quality": self.clean_quality,
                   "attacked_quality": measures.quality(self.task, truth, shown),
                   "feature_recall": found["strength"], "input_recall": found["input_strength"],
                   "missed": missed}  # fmt: skip
        if self.defended.smooth is not None:
            samples["abstain"] = measures.abstained(self.task, out)
            samples["clean_abstain"] = self.clean_abstain
        return samples


def worst_case(judge: Judge, tries: list[AttackSpec], x: np.ndarray, y: np.ndarray,
               positions: np.ndarray, eps: float | None,
               seed: int) -> tuple[np.ndarray, Outputs, dict[str, np.ndarray]]:  # fmt: skip
    """Per sample the attacker's best of ``tries`` (the adaptive attack, then the column's
    plain one): a success the detector misses, else a success, else the lower quality;
    ties go to the first. Returns ``(x_adv, outputs, samples)``: the chosen inputs, the
    system's outputs and the :class:`Judge` outcomes of the choice, with each attack's own
    ``adaptive_success`` / ``plain_success`` (with a detector also ``*_undetected_success``)
    so that the adaptive attack can be checked against the plain one."""
    defended = judge.defended
    tried, ranks, outcomes = [], [], []
    for attack in tries:
        x_t = attack(x, y, eps, positions, seed)
        out_t = defended.outputs(x_t, positions)
        samples = judge(x_t, out_t)
        hit = np.nan_to_num(samples["success"])
        if defended.scores is not None:
            flagged = defended.scores(x_t, out_t) > defended.threshold
            samples["undetected_success"] = _undetected(samples["success"], flagged)
        worse = 1 - np.clip(np.nan_to_num(samples["attacked_quality"], nan=1.0), 0, 1)
        missed = np.nan_to_num(samples.get("undetected_success", hit))
        tried.append((x_t, out_t))
        outcomes.append(samples)
        ranks.append(2 * hit + 2 * missed + worse)  # tiers 0 / 2 / 4, quality within
    best = np.stack(ranks).argmax(0)
    rows = np.arange(len(best))
    pick = lambda arrays: np.stack(arrays)[best, rows]  # noqa: E731
    chosen = {k: pick([o[k] for o in outcomes]) for k in outcomes[0]}
    for name, samples in zip(("adaptive", "plain"), outcomes, strict=True):
        chosen[f"{name}_success"] = samples["success"]
        if "undetected_success" in samples:
            chosen[f"{name}_undetected_success"] = samples["undetected_success"]
    x_adv = pick([t[0] for t in tried])
    return x_adv, Outputs.choose([t[1] for t in tried], best), chosen


def _undetected(success: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """(N,) 1 where the attack succeeded and the detector missed it (NaN: not judged)."""
    return np.where(np.isfinite(success), (success == 1) & ~flagged, np.nan)


def detection(clean_scores: np.ndarray, adv_scores: np.ndarray, threshold: float,
              success: np.ndarray | None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per sample ``detected`` (attacked flagged), ``false_positive`` (clean flagged) and,
    given ``success``, ``undetected_success`` (success the detector missed), each (N,)."""
    flagged = adv_scores > threshold
    found = {"detected": flagged.astype(np.float64),
             "false_positive": (clean_scores > threshold).astype(np.float64)}  # fmt: skip
    if success is not None:
        found["undetected_success"] = _undetected(success, flagged)
    return found


def size(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample ``linf`` and ``l2`` (N,) of the perturbation, in the input's units."""
    delta = (x_adv - x).reshape(len(x), -1)
    return {"linf": np.abs(delta).max(1), "l2": np.linalg.norm(delta, axis=1)}


def summarise(task: str, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """The cell's ``metrics`` (the mean over judged samples), ``intervals`` (95 %:
    ``[low, high]``, Wilson for rates, t for means cut to :func:`bounds`), ``counts``
    (samples judged) and
    ``per_sample`` (the outcomes, NaN where not judged), each keyed by metric."""
    summary: dict[str, Any] = {"metrics": {}, "intervals": {}, "counts": {}, "per_sample": {}}
    for metric, values in samples.items():
        values = np.asarray(values, np.float64)
        if is_rate(task, metric):
            found = intervals.rate(values)
        else:
            found = intervals.mean(values, bounds=bounds(task, metric))
        summary["metrics"][metric] = found.value
        summary["intervals"][metric] = [found.low, found.high]
        summary["counts"][metric] = found.n
        summary["per_sample"][metric] = [round(float(v), 6) for v in values]
    return summary
