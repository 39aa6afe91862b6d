"""The matrix's verdict: per task, which defence holds against which attack at which budget.

For each row (model / defence) and budget (an eps; an attack without one, such as the
few-pixel DGDE, is a budget of its own), the worst case over the attack columns at that
budget, adaptive ones included (the ``real-feature`` and ``inside-radius`` columns are checks,
not attacks): the cell with the highest success, with its 95 % interval. A defence is judged
by the strongest attack known against it (Carlini et al. 2019, §5):

* ``holds``: its worst case lies wholly below the worst case of the same model undefended
  (the ``none`` row) at that budget (the intervals separate);
* ``does not hold``: the intervals overlap, or its worst case is higher;
* ``nothing to defend``: the undefended model's worst case is 0: the attacks do not beat
  the model, so the defence is not tested (unless its own worst case lies wholly above 0:
  then it ``does not hold``);
* ``not judged``: no sample could be judged (e.g. none right when clean);
* ``at chance`` / ``worse than no model``: the defended model itself is of no use (a
  classifier whose clean accuracy is not shown above chance, a reconstruction whose clean
  SSIM lies below its zero-filled input's): a low success there is no defence;
* ``undefended``: the ``none`` row itself, the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from defend.intervals import Estimate, separated
from defend.matrix.record import CellRecord

#: columns that are checks, not attacks: left out of the worst case
CHECKS = ("real-feature", "inside-radius")


@dataclass(frozen=True)
class Verdict:
    """One row at one budget: its ``worst`` cell, that cell's ``success`` and the same
    model's undefended worst case (``undefended``; None on the ``none`` row or without one),
    and the ``outcome`` (module doc)."""

    task: str
    row: str
    defence: str
    budget: str
    worst: CellRecord
    success: Estimate
    undefended: Estimate | None
    outcome: str


def budget(record: CellRecord) -> str:
    """The budget a cell attacks at: ``eps 0.03``, or the attack's name without an eps."""
    return record.attack if record.eps is None else f"eps {record.eps:.3g}"


def _worst(cells: list[CellRecord]) -> tuple[CellRecord, Estimate] | None:
    """The cell of highest success (NaN ones last), None if none has a success."""
    found = [(r, e) for r in cells if (e := r.estimate("success")) is not None]
    if not found:
        return None
    return max(found, key=lambda pair: -1.0 if math.isnan(pair[1].value) else pair[1].value)


def verdicts(records: list[CellRecord]) -> list[Verdict]:
    """The verdict of every (task, row, budget) of the finished records, in their order."""
    groups: dict[tuple[str, str, str, str], list[CellRecord]] = {}
    for r in records:
        if r.ok and r.attack not in CHECKS:
            groups.setdefault((r.task, r.model, r.defence, budget(r)), []).append(r)
    worst = {key: found for key, cells in groups.items() if (found := _worst(cells))}
    out = []
    for (task, model, defence, at), (cell, success) in worst.items():
        base = worst.get((task, model, "none", at))
        reference = None if defence == "none" or base is None else base[1]
        no_use = useless(cell)
        outcome = no_use[0] if no_use else _outcome(defence, success, reference)
        out.append(Verdict(task, cell.row, defence, at, cell, success, reference, outcome))
    return out


def useless(cell: CellRecord) -> tuple[str, str] | None:
    """``(outcome, detail)`` where the cell's model is of no use, read off its clean quality
    and the baseline it must beat: ``at chance`` (cls: the clean accuracy's interval reaches
    down to 1 / classes) or ``worse than no model`` (recon: the clean SSIM's interval lies
    wholly below the zero-filled input's); else None. The verdict and the quality flags
    (:func:`defend.matrix.results.quality_flags`) both read it."""
    quality, chance = cell.estimate("clean_quality"), cell.metrics.get("chance_quality")
    if quality is not None and chance is not None and quality.low <= chance:
        return "at chance", f"clean accuracy {quality} against chance {chance:.3f}"
    zero_filled = cell.estimate("zero_filled_quality")
    if quality is not None and zero_filled is not None and separated(quality, zero_filled):
        return "worse than no model", (f"clean SSIM {quality} against the zero-filled "
                                       f"input's {zero_filled}")  # fmt: skip
    return None


def _outcome(defence: str, success: Estimate, undefended: Estimate | None) -> str:
    if math.isnan(success.value):
        return "not judged"
    if defence == "none":
        return "undefended"
    if undefended is None or math.isnan(undefended.value):
        return "not judged"
    if undefended.value == 0:  # untested, unless the defence itself lets attacks through
        return "does not hold" if separated(undefended, success) else "nothing to defend"
    return "holds" if separated(success, undefended) else "does not hold"


def _shown(value: Estimate) -> str:
    if math.isnan(value.value):
        return "not judged"
    return f"{value.value:.2f} [{value.low:.2f}, {value.high:.2f}] of {value.n}"


def sentence(verdict: Verdict) -> str:
    """The verdict in words: ``unet / smoothing at eps 0.1: does not hold. Worst attack
    hallucination+eot: success 0.50 [0.09, 0.91] of 2; undefended 0.50 [...] of 2.``"""
    if verdict.outcome in ("at chance", "worse than no model"):
        quality = verdict.worst.estimate("clean_quality")
        return (f"{verdict.row} at {verdict.budget}: {verdict.outcome}: its clean "
                f"{verdict.worst.metrics.get('quality_metric', 'quality')} is "
                f"{_shown(quality)}, so a low attack success means nothing.")  # fmt: skip
    if verdict.outcome == "not judged":
        return (f"{verdict.row} at {verdict.budget}: not judged: no sample could be judged "
                "(success counts only samples the model gets right when clean).")  # fmt: skip
    text = (f"{verdict.row} at {verdict.budget}: {verdict.outcome}. Worst attack "
            f"{verdict.worst.attack_name}: success {_shown(verdict.success)}")  # fmt: skip
    if verdict.undefended is not None:
        text += f"; undefended {_shown(verdict.undefended)}"
    return text + "."
