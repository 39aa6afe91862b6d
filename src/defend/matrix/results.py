"""The matrix's results: cell records in, ``matrix.csv``, ``matrix.md`` and sanity flags out.

* ``OUT/cells/<id>.json``: one record a cell (:mod:`defend.matrix.cells`), written atomically
  when the cell finishes; the files are the matrix's state, so a run resumes from them;
* ``OUT/matrix.csv``: long form, ``task,model,defence,attack,adaptive,eps,metric,value,
  ci_low,ci_high,n,seconds`` (the 95 % interval and the samples judged, where the metric
  has them), in the plan's order (whatever order the cells finished in);
* ``OUT/matrix.md``: per task, a table per metric, defence rows against attack columns,
  each value with its interval, and the sanity flags;
* ``OUT/report.html``: the same as one self-contained page of figures (heatmaps, ROC curves,
  eps sweeps, example images, flags; :mod:`defend.matrix.html`).

The flags are the evaluation checklist of Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", §5), each a comparison of two measurements raised only where their 95 %
intervals separate (:func:`defend.intervals.separated`), so a flag is a difference the
samples support: success does not fall as eps grows; the iterative attack (seg-pgd) is at
least as strong as the single step (seg-fgsm); random noise is weaker than each white-box
attack at the same eps (else gradient masking is suspected); within an adaptive cell, the
adaptive attack on its own is at least as strong as the plain one on its own (EOT:
``adaptive_success`` against ``plain_success``; evade: the same undetected), which the
cell's per-sample worst case of the two could never show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from defend.intervals import Estimate, separated
from defend.io import write_csv, write_json, write_text
from defend.matrix.html import write_report
from defend.matrix.outcomes import SHOWN
from defend.matrix.record import CellRecord
from defend.matrix.verdict import useless

CSV_COLUMNS = ("task", "model", "defence", "attack", "adaptive", "eps", "metric", "value",
               "ci_low", "ci_high", "n", "seconds")  # fmt: skip
#: the tables of matrix.md, in order: (metric, title)
TABLES = SHOWN
#: the quality flag of each way a model is of no use (:func:`defend.matrix.verdict.useless`)
USELESS_FLAGS = {"at chance": "model not shown better than chance",
                 "worse than no model": "model worse than its zero-filled input"}  # fmt: skip
#: the white-box attacks that random noise must not beat
WHITE_BOX = ("hallucination", "seg-fgsm", "seg-pgd", "art-pgd")


def write_cell(out: Path, record: CellRecord, provenance: dict[str, Any] | None = None) -> Path:
    """``OUT/cells/<id>.json`` of ``record`` with its ``provenance``
    (:func:`defend.matrix.provenance.provenance`), atomically."""
    if provenance:
        record = replace(record, **provenance)
    return write_json(out / "cells" / f"{record.id}.json", record.to_json())


def read_cells(folders: Iterable[Path]) -> dict[str, CellRecord]:
    """Every cell record under ``FOLDER/cells`` of each folder (shards merge), by id; an
    unreadable file (a run killed mid-write never leaves one, but a copy might) is skipped."""
    found = {}
    for folder in folders:
        for path in sorted((Path(folder) / "cells").glob("*.json")):
            try:
                record = CellRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            found[record.id] = record
    return found


def csv_rows(records: list[CellRecord]) -> list[dict[str, Any]]:
    """The long-form rows of the cells that finished, metrics in their record's order."""
    out = []
    for r in records:
        if not r.ok:
            continue
        for metric, value in r.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            low, high = r.intervals.get(metric, ("", ""))
            out.append({"task": r.task, "model": r.model, "defence": r.defence,
                        "attack": r.attack, "adaptive": r.adaptive,
                        "eps": "" if r.eps is None else f"{r.eps:.6g}", "metric": metric,
                        "value": f"{value:.6g}", "ci_low": _csv_number(low),
                        "ci_high": _csv_number(high), "n": r.counts.get(metric, ""),
                        "seconds": f"{r.seconds:.3f}"})  # fmt: skip
    return out


def _csv_number(value: Any) -> str:
    return "" if value is None or value == "" else f"{value:.6g}"


def tables(records: list[CellRecord]) -> str:
    """The markdown tables of the finished cells, per task and metric."""
    lines = []
    ok = [r for r in records if r.ok]
    for task in dict.fromkeys(r.task for r in ok):
        cells = [r for r in ok if r.task == task]
        unit = cells[0].metrics.get("quality_metric", "")
        lines += [
            f"## {task} (quality: {unit}, {cells[0].n} samples a cell)",
            "",
            "Each value with its 95 % interval (Wilson for rates, t for means).",
            "",
        ]
        for metric, title in TABLES:
            having = [r for r in cells if metric in r.metrics]
            if having:
                lines += [f"**{title}**", "", *_table(having, metric), ""]
    return "\n".join(lines)


def _table(cells: list[CellRecord], metric: str) -> list[str]:
    columns = list(dict.fromkeys(r.column for r in cells))
    rows = list(dict.fromkeys(r.row for r in cells))
    value = {(r.row, r.column): r.estimate(metric) for r in cells}
    head = ["| model / defence | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    body = [f"| {row} | " + " | ".join(_number(value.get((row, c))) for c in columns) + " |"
            for row in rows]  # fmt: skip
    return head + body


def _number(value: Estimate | None) -> str:
    """``0.500 [0.24, 0.76]``; the interval left out where there is none."""
    if value is None:
        return ""
    if math.isnan(value.value):
        return "nan"
    if not (math.isfinite(value.low) and math.isfinite(value.high)):
        return f"{value.value:.3f}"
    return str(value)


def flags(records: list[CellRecord]) -> list[dict[str, str]]:
    """The sanity flags raised by the finished cells (module doc)."""
    by = {(r.task, r.model, r.defence, r.attack, r.adaptive, r.eps): r for r in records if r.ok}
    found: list[dict[str, str]] = []

    def check(stronger: CellRecord | None, weaker: CellRecord | None, metric: str, name: str,
              weaker_metric: str | None = None) -> None:  # fmt: skip
        if stronger is None or weaker is None:
            return
        found.extend(_flag(stronger, metric, weaker, weaker_metric or metric, name))

    for (task, model, defence, attack, adaptive, eps), r in by.items():
        key = (task, model, defence)
        larger = [e for (*k, a, v, e) in by if tuple(k) == key and a == attack and v == adaptive
                  and e is not None and eps is not None and e > eps]  # fmt: skip
        if larger:
            bigger = by[(*key, attack, adaptive, min(larger))]
            check(bigger, r, "success", "success falls as eps grows")
        if attack == "seg-pgd":
            check(r, by.get((*key, "seg-fgsm", adaptive, eps)), "success",
                  "iterative attack weaker than single-step")  # fmt: skip
        if attack == "noise" and adaptive == "none":
            for white in WHITE_BOX:
                check(by.get((*key, white, "none", eps)), r, "success",
                      "random noise beats a white-box attack (gradient masking?)")  # fmt: skip
        if adaptive == "eot":
            check(r, r, "adaptive_success", "EOT attack weaker than plain", "plain_success")
        if adaptive == "evade":
            check(r, r, "adaptive_undetected_success", "detector-aware attack weaker than plain",
                  "plain_undetected_success")  # fmt: skip
    return found + quality_flags(list(by.values()))


def quality_flags(records: list[CellRecord]) -> list[dict[str, str]]:
    """Flags that a model or detector is of no use, so that the cells over it mean little:
    a reconstruction whose clean SSIM lies wholly below its zero-filled input's (95 %
    intervals separate); a classifier whose clean accuracy is not shown above chance (its
    interval reaches down to 1 / classes); a detector whose AUROC against a plain attack lies
    wholly below 0.5 (a detector-aware attack drives it there on purpose: that is the
    attack's success, read in its cell). The model's flags are raised once a row (its first
    cell), the detector's once a cell."""
    found: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for r in records:
        first = (r.task, r.model, r.defence) not in seen
        seen.add((r.task, r.model, r.defence))
        if first and (no_use := useless(r)):
            found.append(_flag_line(r, USELESS_FLAGS[no_use[0]], no_use[1]))
        auroc = r.estimate("detection_auroc")  # plain attacks: an adaptive one aims low
        if r.adaptive == "none" and auroc is not None and auroc.high < 0.5:
            found.append(_flag_line(r, "detector below chance",
                                    f"detection AUROC {auroc} below 0.5"))  # fmt: skip
    return found


def _against(flag: dict[str, str]) -> str:
    """`` against `ID``` where a flag compares two cells."""
    return f" against `{flag['against']}`" if flag["against"] else ""


def _flag_line(record: CellRecord, name: str, detail: str) -> dict[str, str]:
    return {"flag": name, "cell": record.id, "against": "", "detail": detail}


def _flag(stronger: CellRecord, metric: str, weaker: CellRecord, weaker_metric: str,
          name: str) -> list[dict[str, str]]:  # fmt: skip
    """The flag ``name`` where ``stronger``'s ``metric`` lies wholly below ``weaker``'s
    ``weaker_metric`` (95 % intervals separate), else none."""
    a, b = stronger.estimate(metric), weaker.estimate(weaker_metric)
    if a is None or b is None or not separated(a, b):
        return []
    what = metric if metric == weaker_metric else f"{metric} against {weaker_metric}"
    detail = f"{what} {a} against {b}"
    against = "" if weaker is stronger else weaker.id  # a cell's two measurements: no other
    return [{"flag": name, "cell": stronger.id, "against": against, "detail": detail}]


def write_results(out: Path, records: list[CellRecord]) -> dict[str, Any]:
    """``matrix.csv``, ``matrix.md`` and ``flags.json`` from the records (plan order)."""
    write_csv(out / "matrix.csv", csv_rows(records), CSV_COLUMNS)
    raised = flags(records)
    failed = [r for r in records if not r.ok]
    text = ["# defend matrix", "", tables(records)]
    text += ["## sanity flags (Carlini et al. 2019)", ""]
    text += [f"- {f['flag']}: `{f['cell']}`" + _against(f) + f" ({f['detail']})"
             for f in raised] or ["- none raised"]  # fmt: skip
    if failed:
        text += ["", "## failed cells", ""]
        text += [f"- `{r.id}`: {r.error or '?'}" for r in failed]
    write_text(out / "matrix.md", "\n".join(text) + "\n")

    write_report(out, records, raised)
    write_json(out / "flags.json", raised)
    return {"flags": raised, "failed": [r.id for r in failed]}
