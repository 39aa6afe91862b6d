"""What may stop a run or keep an epoch from being its best: the guards of the training loop.

:func:`collapse` reads a guard's probe (FGSM-RS's catastrophic-overfitting check, Wong et
al.) in an epoch's metrics; :func:`above_floor` says whether an epoch may be the best under an
objective's clean floor (:meth:`~defend.train.objectives.Objective.floor`). Both are pure
functions of the run's history, so a resumed run decides as one that was not interrupted.
"""

from __future__ import annotations

import math

#: a guard stops training when its probe falls below this fraction of its best so far
#: (and by at least 0.1): FGSM-RS's catastrophic overfitting drops PGD accuracy to ~0
COLLAPSE = 0.5


def collapse(
    history: list[dict[str, float]], metrics: dict[str, float], monitor: str
) -> str | None:
    """Why an epoch's guard probe shows catastrophic overfitting, or None.

    The probe (``probe_robust_<monitor>`` and ``probe_<monitor>``: the monitor on a training
    batch, attacked and clean) has collapsed when the robust value fell below
    :data:`COLLAPSE` times its best in ``history`` and by at least 0.1, while the clean value
    stayed within 0.1 of its best: the gap between clean and robust opened (Wong et al.). A
    dip of both, as training itself can take early on, is not catastrophic overfitting.
    """
    robust_key, clean_key = f"probe_robust_{monitor}", f"probe_{monitor}"
    robust, clean = metrics.get(robust_key), metrics.get(clean_key)
    seen = [r for r in history if robust_key in r]
    if robust is None or not seen:
        return None
    best = max(r[robust_key] for r in seen)
    best_clean = max(r.get(clean_key, -math.inf) for r in seen)
    if robust < COLLAPSE * best and best - robust >= 0.1 and clean >= best_clean - 0.1:
        return (
            f"robust {monitor} of a training batch fell from {best:.3f} to {robust:.3f}, "
            f"clean {clean:.3f}"
        )
    return None


def above_floor(
    history: list[dict[str, float]], record: dict[str, float], floor: tuple[str, float] | None
) -> bool:
    """Whether ``record`` may be the best checkpoint under an objective's clean ``floor``
    ``(metric, margin)`` (:meth:`~defend.train.objectives.Objective.floor`): its clean
    ``metric`` is within ``margin`` of the highest finite value in ``history`` (the records so
    far, ``record``'s own included). True without a floor or a finite value; a NaN is below.
    """
    if floor is None:
        return True
    key, margin = floor
    top = max((r[key] for r in history if math.isfinite(r.get(key, math.nan))), default=None)
    return top is None or record.get(key, math.nan) >= top - margin
