"""The matrix's HTML report: ``OUT/report.html``, one self-contained page.

Every figure is an inline base64 PNG (matplotlib, Agg) and the style sheet is inline, so the
page opens anywhere without its folder or a network. Per task: a heatmap per metric (model /
defence rows against attack columns, each value with its 95 % interval, missing or NaN
cells grey), the detector cells' ROC
curves, success against eps per (defence, attack) series, and the example images of each
cell; then the sanity flags (Carlini et al. 2019) and the failed cells.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from defend.io import write_text  # noqa: E402
from defend.matrix.measures import SUCCESS_MEANS  # noqa: E402
from defend.matrix.outcomes import SHOWN  # noqa: E402
from defend.matrix.record import CellRecord  # noqa: E402
from defend.matrix.verdict import Verdict, sentence, verdicts  # noqa: E402
from defend.tasks import TASKS  # noqa: E402

#: the heatmaps of a task, in order (metric, title): matrix.md's tables but the clean
#: quality and the adaptive cells' two own attacks
HEATMAPS = tuple(
    (metric, title)
    for metric, title in SHOWN
    if metric not in ("clean_quality", "adaptive_success", "plain_success")
)
#: the checklist of Carlini et al. 2019, §5, the flags come from (each raised only where the
#: two measurements' 95 % intervals separate)
CHECKLIST = (
    "attack success does not fall as eps grows",
    "the iterative attack (seg-pgd) is at least as strong as the single step (seg-fgsm)",
    "random noise is weaker than each white-box attack at the same eps "
    "(else gradient masking is suspected)",
    "the adaptive attack on its own is at least as strong as the plain one on its own "
    "(EOT: success; evade: success undetected)",
)
#: how the verdict is reached (matrix/verdict.py)
VERDICT_RULE = (
    "Each defence is judged by the strongest attack known against it (Carlini et al. 2019): "
    "at each budget, its worst case over every attack column, adaptive ones included, "
    "against the same model undefended. It holds where the 95 % intervals separate below "
    "the undefended worst case; where the undefended model is not beaten at all, there is "
    "nothing to defend and the defence is untested."
)
#: the heatmaps' grey cells, explained
GREY = (
    "Grey cells: the column does not apply to the row (e.g. an adaptive attack against a "
    "row without that defence), or no sample could be judged (success is judged only on "
    "samples the defended model gets right when clean: none did)."
)
#: list classes and figure colours of the verdicts' outcomes
OUTCOME_CLASS = {"holds": "ok", "does not hold": "flag", "nothing to defend": "caveat",
                 "not judged": "caveat", "at chance": "flag", "worse than no model": "flag",
                 "undefended": ""}  # fmt: skip
OUTCOME_COLOUR = {"holds": "#1a7f37", "does not hold": "#c62828", "nothing to defend": "#888888",
                  "not judged": "#bbbbbb", "at chance": "#e08000",
                  "worse than no model": "#e08000", "undefended": "#222222"}  # fmt: skip
#: a run below these is a pipeline check (the report says so)
MIN_EPOCHS, MIN_SAMPLES = 2, 8
#: the arrays of a cell's examples npz
EXAMPLE_KEYS = ("input", "attacked", "output", "attacked_output")
#: resolution of the charts (their 8-point labels are 11 px on screen) and of the examples
DPI = 100
#: an example image's side in the report, about (pixels)
EXAMPLE_PIXELS = 96
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-top: .5em; }
img { max-width: 100%; display: block; margin: .3em 0; }
figure { display: inline-block; margin: .4em 1em .4em 0; vertical-align: top; }
figcaption { font-size: 85%; color: #555; }
details { margin: .2em 0; } summary { cursor: pointer; font-family: monospace; }
code { background: #f3f3f3; padding: 0 .2em; } .flag { color: #a00; } .ok { color: #070; }
.caveat { background: #fff4d6; padding: .3em .5em; border-left: 4px solid #d9a400; }
"""


def write_report(out: Path, records: list[CellRecord], flags: list[dict[str, str]]) -> Path:
    """``OUT/report.html`` of the records (plan order) and the flags raised, atomically."""
    out = Path(out)
    ok = [r for r in records if r.ok]
    config = _config(out)
    body = [_header(records, config), _verdict(ok)]
    for task in dict.fromkeys(r.task for r in ok):
        body.append(_task(out, task, [r for r in ok if r.task == task]))
    body += [_flags(flags, ok), _failed(records)]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>defend matrix</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    return write_text(out / "report.html", page)


def _config(out: Path) -> dict[str, Any]:
    """``OUT/config.json`` (empty where missing or unreadable)."""
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _header(records: list[CellRecord], config: dict[str, Any]) -> str:
    """The title, the configuration's source, the cell counts and, for a run too small for
    its numbers to mean anything, a caveat saying so."""
    failed = sum(not r.ok for r in records)
    head = ("<h1>defend matrix</h1>"
            f"<p>configuration: <code>{_e(config.get('source', '?'))}</code> &middot; "
            f"{len(records)} cells, {len(records) - failed} ok, {failed} failed</p>")  # fmt: skip
    caveat = _caveat(config)
    return head + (f'<p class="caveat">{_e(caveat)}</p>' if caveat else "")


def _caveat(config: dict[str, Any]) -> str:
    """Why this run's numbers say nothing about robustness, or "" where they may: models
    trained for fewer than :data:`MIN_EPOCHS` epochs, or fewer than :data:`MIN_SAMPLES`
    samples a cell."""
    run = config.get("run") or {}
    epochs = [config[t]["epochs"] for t in run.get("tasks", []) if "epochs" in config.get(t, {})]
    short = bool(epochs) and min(epochs) < MIN_EPOCHS
    few = run.get("n", MIN_SAMPLES) < MIN_SAMPLES
    if not (short or few):
        return ""
    why = []
    if short:
        why.append(f"models trained for {min(epochs)} epoch(s)")
    if few:
        why.append(f"{run['n']} samples a cell")
    return (
        f"A pipeline check, not a study: {' and '.join(why)}. The numbers below say "
        "nothing about robustness; every interval is wide."
    )


def _verdict(ok: list[CellRecord]) -> str:
    """The first section: per task, each defence's worst case at each budget against its
    undefended model, in words (:func:`~defend.matrix.verdict.sentence`) and one figure;
    what attack success means on the task."""
    found = verdicts(ok)
    if not found:
        return ""
    parts = ["<h2>verdict</h2>", f"<p>{_e(VERDICT_RULE)}</p>"]
    for task in dict.fromkeys(v.task for v in found):
        means = SUCCESS_MEANS.get(TASKS[task].kind if task in TASKS else task, "")
        parts.append(f"<h3>{_e(task)}</h3><p><b>attack success</b>: {_e(means)}; an "
                     "abstention counts against the defence.</p>")  # fmt: skip
        items = "".join(f'<li class="{OUTCOME_CLASS[v.outcome]}">{_e(sentence(v))}</li>'
                        for v in found if v.task == task)  # fmt: skip
        parts.append(f"<ul>{items}</ul>")
    caption = "worst-case attack success per defence and budget, with 95 % intervals"
    parts.append(_figure(_verdict_figure(found), caption))
    return "\n".join(parts)


def _verdict_figure(found: list[Verdict]) -> str:
    """One panel a task: each row's worst-case success at each budget, with its interval,
    coloured by outcome."""
    tasks = list(dict.fromkeys(v.task for v in found))
    heights = [len([v for v in found if v.task == t]) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8.5, 1.2 + 0.3 * sum(heights) + 0.6 *
                             len(tasks)), squeeze=False, height_ratios=heights)  # fmt: skip
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        mine = [v for v in found if v.task == task][::-1]
        for i, v in enumerate(mine):
            value, low, high = v.success.value, v.success.low, v.success.high
            if math.isfinite(value) and math.isfinite(low) and math.isfinite(high):
                ax.errorbar(value, i, xerr=[[value - low], [high - value]], fmt="o",
                            color=OUTCOME_COLOUR[v.outcome], capsize=3)  # fmt: skip
        ax.set_yticks(range(len(mine)), [f"{v.row} @ {v.budget}" for v in mine], fontsize=8)
        ax.set_xlim(-0.03, 1.03)
        ax.set_title(f"{task}: worst-case attack success", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=o)
               for o, c in OUTCOME_COLOUR.items()]  # fmt: skip
    axes[0, 0].legend(handles=handles, fontsize=8, loc="lower right")
    return _png(fig)


def _task(out: Path, task: str, cells: list[CellRecord]) -> str:
    """A task's section: heatmaps, ROC curves, eps sweeps and example images."""
    unit = cells[0].metrics.get("quality_metric", "")
    parts = [f"<h2>{_e(task)}</h2><p>quality: {_e(unit)}, {cells[0].n} samples a cell</p>"]
    parts.append("<h3>metrics</h3>")
    parts.append(f"<p>{_e(GREY)}</p>")
    for metric, title in HEATMAPS:
        having = [r for r in cells if metric in r.metrics]
        if having:
            parts.append(_figure(_heatmap(having, metric, title), f"{task}: {title}"))
    roc = [r for r in cells if r.roc]
    if roc:
        parts += ["<h3>detector ROC</h3>", _figure(_roc(roc, task), f"{task}: ROC curves")]
    sweep = _sweep(cells, task)
    if sweep:
        parts += ["<h3>success against eps</h3>", _figure(sweep, f"{task}: success vs eps")]
    parts += ["<h3>examples</h3>", _examples(out, cells)]
    return "\n".join(parts)


def _heatmap(cells: list[CellRecord], metric: str, title: str) -> str:
    """A heatmap of ``metric``: rows model / defence, columns attack @eps, values written."""
    columns = list(dict.fromkeys(r.column for r in cells))
    rows = list(dict.fromkeys(r.row for r in cells))
    grid = np.full((len(rows), len(columns)), np.nan)
    spans: dict[tuple[int, int], str] = {}
    for r in cells:
        found = r.estimate(metric)
        if found is not None:
            at = rows.index(r.row), columns.index(r.column)
            grid[at] = found.value
            if math.isfinite(found.low) and math.isfinite(found.high):
                spans[at] = f"\n[{found.low:.2f}, {found.high:.2f}]"
    width, height = 3.2 + 0.95 * len(columns), 1.9 + 0.55 * len(rows)
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    finite = grid[np.isfinite(grid)]
    unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    low, high = (0.0, 1.0) if unit else (finite.min(), finite.max())
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            dark = (value - low) / ((high - low) or 1) < 0.6
            ax.text(j, i, f"{value:.2f}{spans.get((i, j), '')}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    return _png(fig)


def _roc(cells: list[CellRecord], task: str) -> str:
    """The ROC curves of the detector cells, one a cell, AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=0.8)
    for r in cells:
        auroc = r.metrics.get("detection_auroc")
        label = f"{r.row} | {r.column}"
        if isinstance(auroc, int | float) and math.isfinite(auroc):
            label += f" (AUROC {auroc:.3f})"
        ax.plot(r.roc["fpr"], r.roc["tpr"], linewidth=1, label=label)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.set_title(f"{task}: detector ROC", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _sweep(cells: list[CellRecord], task: str) -> str | None:
    """Success against eps per (model / defence, attack) series of >= 2 eps; None if none."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in cells:
        value = r.metrics.get("success")
        if r.eps is None or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        series.setdefault(f"{r.row} | {r.attack_name}", []).append((r.eps, value))
    series = {k: sorted(v) for k, v in series.items() if len({e for e, _ in v}) >= 2}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, points in series.items():
        eps, success = zip(*points, strict=True)
        ax.plot(eps, success, marker="o", markersize=3, linewidth=1, label=label)
    ax.set_xlabel("eps", fontsize=8)
    ax.set_ylabel("attack success", fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{task}: success against eps", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _examples(out: Path, cells: list[CellRecord]) -> str:
    """A collapsible block of example images per cell (a note where the file is missing)."""
    parts = []
    for r in cells:
        path = out / r.examples if r.examples else None
        if path is None or not path.exists():
            body = "<p>no example images</p>"
        else:
            try:
                image, amp = _example_figure(path)
            except (OSError, ValueError, KeyError) as error:
                body = f"<p>example images unreadable: {_e(str(error))}</p>"
            else:
                caption = (f"clean input, attacked input, |difference| ×{amp:.3g} (amplified "
                           "to the input's range), clean output, attacked output")  # fmt: skip
                body = _figure(image, caption)
        parts.append(f"<details><summary>{_e(r.id)}</summary>{body}</details>")
    return "\n".join(parts)


def _example_figure(path: Path) -> tuple[str, float]:
    """The example images of one cell as a PNG ``data:`` URI (a row per sample, the five
    panels of :func:`_examples`' caption, nearest-neighbour enlarged to about
    :data:`EXAMPLE_PIXELS` a side; drawn with PIL, not matplotlib: a report holds one a
    cell) and the difference's amplification."""
    with np.load(path) as data:
        x, adv, y, y_adv = (np.nan_to_num(data[k].astype(np.float32)) for k in EXAMPLE_KEYS)
    diff = np.abs(adv - x)
    span = float(x.max() - x.min()) or 1.0
    amp = span / float(diff.max()) if diff.max() > 0 else 1.0
    rows = []
    for i in range(len(x)):
        lo, hi = float(x[i].min()), float(x[i].max())
        olo, ohi = float(min(y[i].min(), y_adv[i].min())), float(max(y[i].max(), y_adv[i].max()))
        panels = ((x[i], lo, hi), (adv[i], lo, hi), (diff[i] * amp, 0, span),
                  (y[i], olo, ohi), (y_adv[i], olo, ohi))  # fmt: skip
        rows.append(_strip([_gray(image, vmin, vmax) for image, vmin, vmax in panels], axis=1))
    grid = _strip(rows, axis=0)
    scale = max(1, EXAMPLE_PIXELS // max(x.shape[1:]))
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), amp


def _gray(image: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(h, w) uint8 of ``image`` between ``vmin`` (black) and ``vmax`` (white)."""
    scaled = (image - vmin) / (vmax - vmin if vmax > vmin else 1.0)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def _strip(images: list[np.ndarray], axis: int) -> np.ndarray:
    """``images`` side by side along ``axis``, 2 white pixels between them (smaller ones
    padded white)."""
    other = 1 - axis
    size = max(im.shape[other] for im in images)
    padded = []
    for k, im in enumerate(images):
        pad = [(0, 0), (0, 0)]
        pad[other] = (0, size - im.shape[other])
        pad[axis] = (0, 0 if k == len(images) - 1 else 2)
        padded.append(np.pad(im, pad, constant_values=255))
    return np.concatenate(padded, axis=axis)


def _flags(flags: list[dict[str, str]], ok: list[CellRecord]) -> str:
    """The checklist of Carlini et al. 2019 and the flags raised against it; "none raised"
    shows as good news only where some attack succeeded (else the comparisons had nothing
    to compare)."""
    items = "".join(f"<li>{_e(c)}</li>" for c in CHECKLIST)
    parts = [f"<h2>sanity flags (Carlini et al. 2019)</h2><p>checked:</p><ul>{items}</ul>"]
    succeeded = any((r.metrics.get("success") or 0) > 0 for r in ok)
    if not flags and succeeded:
        parts.append('<p class="ok">none raised</p>')
    elif not flags:
        parts.append('<p class="caveat">none raised, but no attack succeeded on any sample: '
                     "the checks compare successes and had none to compare</p>")  # fmt: skip
    else:
        raised = "".join(
            f'<li class="flag">{_e(f["flag"])}: <code>{_e(f["cell"])}</code>'
            + (f" against <code>{_e(f['against'])}</code>" if f["against"] else "")
            + f" ({_e(f['detail'])})</li>"
            for f in flags
        )
        parts.append(f"<p>{len(flags)} raised:</p><ul>{raised}</ul>")
    return "\n".join(parts)


def _failed(records: list[CellRecord]) -> str:
    """The failed cells and their errors (a line saying none failed otherwise)."""
    failed = [r for r in records if not r.ok]
    if not failed:
        return "<h2>failed cells</h2><p>none</p>"
    items = "".join(
        f"<li><code>{_e(r.id)}</code>: <pre>{_e(str(r.error or '?'))}</pre></li>" for r in failed
    )
    return f"<h2>failed cells</h2><ul>{items}</ul>"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _png(fig: plt.Figure, dpi: int = DPI) -> str:
    """The figure as a ``data:`` URI of a PNG (the figure is closed)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(uri: str, caption: str) -> str:
    """An inline image with its (plain text) caption."""
    return (f'<figure><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")  # fmt: skip
