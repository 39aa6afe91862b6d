"""95 % confidence intervals of the rates and means a cell reports.

A matrix cell measures a handful of samples; with six, one sample moves a rate by 0.17, so a
number without its interval says little (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", §5: report the uncertainty of every measurement). Two kinds:

* a **rate** (each sample 0 or 1: attack success, accuracy, abstention of a sample) gets the
  Wilson score interval, which stays inside [0, 1] and is not empty at 0 / n or n / n;
* a **mean** of a per-sample quantity (SSIM, Dice, hallucination strength, a share of
  pixels) gets Student's t interval, ``mean -+ t(0.975, n - 1) * sd / sqrt(n)``, cut to the
  quantity's possible range where it has one (a Dice cannot exceed 1);
* an **AUROC** ``A`` of ``m`` positives against ``n`` negatives gets a conservative interval:
  the Wilson score interval of ``A`` over ``min(m, n)`` trials, i.e. with the largest
  variance an AUROC estimate can have, ``A (1 - A) / min(m, n)`` (Birnbaum & Klose 1957).
  Hanley & McNeil's (1982) normal interval is narrower but collapses to a point at 0 and 1
  (a detector that ordered 2 against 2 samples the wrong way would be "certainly" below
  chance); this one does not.

NaN samples (those a metric cannot judge, e.g. success on an image already misclassified)
are left out, and ``n`` counts the samples that were judged. Two intervals **separate** when
one lies wholly below the other: the only case in which the matrix says two cells differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, t

#: the confidence level of every interval
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point value with its interval: ``value`` in ``[low, high]`` from ``n`` samples
    (all NaN when ``n`` is 0; ``low`` / ``high`` NaN for a mean of one sample)."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        """``0.500 [0.24, 0.76]``, how the matrix's tables and flags show an estimate."""
        return f"{self.value:.3f} [{self.low:.2f}, {self.high:.2f}]"


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    return low, 1.0 if successes == n else min(1.0, centre + half)


def rate(values: np.ndarray, level: float = LEVEL) -> Estimate:
    """The rate of per-sample outcomes ``values`` (N,) in {0, 1, NaN} with its Wilson
    interval; raises ValueError on a finite value other than 0 or 1."""
    judged = _finite(values)
    if not np.isin(judged, (0.0, 1.0)).all():
        raise ValueError("a rate takes per-sample values 0 or 1 (NaN: not judged)")
    n, k = len(judged), int(judged.sum())
    return Estimate(k / n if n else math.nan, *wilson(k, n, level), n)


def mean(values: np.ndarray, level: float = LEVEL,
         bounds: tuple[float, float] | None = None) -> Estimate:  # fmt: skip
    """The mean of per-sample values (N,) (NaN left out) with Student's t interval, cut to
    ``bounds`` (the quantity's possible range) when given."""
    judged = _finite(values)
    n = len(judged)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    centre = float(judged.mean())
    if n == 1:
        return Estimate(centre, math.nan, math.nan, 1)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(judged.std(ddof=1)) / math.sqrt(n)
    low, high = centre - half, centre + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(centre, low, high, n)


def auroc(value: float, positives: int, negatives: int, level: float = LEVEL) -> Estimate:
    """An AUROC ``value`` of ``positives`` against ``negatives`` samples with the Wilson score
    interval over ``min(positives, negatives)`` trials (module doc: the largest variance an
    AUROC estimate can have), inside [0, 1]; NaN without both kinds of sample."""
    if positives == 0 or negatives == 0 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, positives + negatives)
    trials = min(positives, negatives)
    low, high = wilson(value * trials, trials, level)
    return Estimate(value, low, high, positives + negatives)


def separated(below: Estimate, above: Estimate) -> bool:
    """True when ``below``'s interval lies wholly under ``above``'s (both finite)."""
    bounds = (below.high, above.low)
    return all(math.isfinite(b) for b in bounds) and below.high < above.low


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64).ravel()
    return values[np.isfinite(values)]
