"""A matrix cell: one defence row against one attack column at one eps.

:func:`plan` lists the cells of a configuration: for every task, defence row
(:func:`defend.matrix.rows.rows`) and attack, one cell per eps (DGDE, a few-pixel attack
without an eps: one cell), and where ``run.adaptive`` is on the adaptive columns: ``eot``
(the gradient attacks and DGDE against the smoothed model's expectation, Carlini et al.
2019, §5: EOT gradients from ``smoothing.eot`` fresh draws a step, DGDE's queries answered by
``smoothing.query_draws`` fixed draws) on smoothing rows, ``evade`` (the detector-aware
attack: the hallucination attack, seg-pgd or ART's PGD with the detector's score in the
loss, :data:`ATTACKS`' ``NAME+evade``) on detector rows. An adaptive cell also runs the
column's plain attack and keeps per sample the worse outcome for the defence (Carlini et
al. 2019, §5: the per-example worst case), so it reports the strongest attack known against
the row. Smoothing rows also get the ``inside-radius`` column (:mod:`inside_radius`) and
recon rows the ``real-feature`` column (a real finding, not an attack) where the task's
``attacks`` list them (the defaults do).

:func:`run_cell` attacks the first ``run.n`` samples of ``run.split`` and returns the cell's
record (a :class:`~defend.matrix.record.CellRecord`, ``OUT/cells/<id>.json``):

* ``id``, ``task``, ``model``, ``defence``, ``attack``, ``adaptive``, ``eps``, ``params``,
  ``seed``, ``n``, ``seconds`` and where they went (``phases``, :mod:`phases`), ``status``
  (``ok`` or ``failed`` with ``error``), on adaptive cells ``worst_case_of`` (the two
  attacks whose per-sample worst it reports);
* ``metrics`` (the mean over the samples judged), ``intervals`` (95 %, ``[low, high]``),
  ``counts`` (samples judged) and ``per_sample`` of each outcome
  (:mod:`defend.matrix.outcomes`): ``clean_quality`` and ``attacked_quality``
  (:data:`measures.QUALITY` of the defended system's outputs, abstentions scored against
  it), ``success`` (:mod:`defend.matrix.measures`), ``linf`` and ``l2`` of the
  perturbation; recon ``strength``, ``input_strength`` (the feature in the attacked
  measurement) and ``net_strength`` (their difference, on which success is judged);
  adaptive cells ``adaptive_success`` and ``plain_success``, each attack's own; with a
  detector ``detected`` (attacked samples flagged), ``false_positive`` (clean flagged),
  ``undetected_success`` and ``detection_auroc``; with smoothing ``abstain`` and
  ``clean_abstain`` (share of samples; seg: of pixels) and the certificates against the
  cell's own perturbations: ``certified`` (cls: certified right with a radius covering the
  perturbation; seg: pixels certified right so; recon: samples with a finite bound) and
  ``certificate_violations`` (samples whose smoothed output under attack broke a
  certificate that covered it: must be 0 but for the certificates' failure probability
  alpha); recon ``certified_bound`` (median output bound);
* ``roc``: the detector's ROC curve; ``examples``: the file of a few example images.

The clean outputs, detector scores and certificates of a row are computed once per row
(``OUT/rows/<row>.npz``) and shared by its cells; each plain attack once for every row of
its model (``OUT/attacks``), and a row's outputs of an input batch once (``OUT/rows/<row>/``,
:mod:`reuse`).
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend import intervals
from defend.attacks import registered_attacks
from defend.data import load_groups
from defend.io import file_sha256, write_npz
from defend.kspace import zero_filled
from defend.matrix import inside_radius, measures, outcomes, reuse
from defend.matrix.columns import ATTACKS, EVADING, GRADIENT, column
from defend.matrix.measures import Outputs
from defend.matrix.outcomes import AttackSpec
from defend.matrix.phases import phase, recording, timed, with_rest
from defend.matrix.record import CellRecord
from defend.matrix.reuse import CachedAttack
from defend.matrix.rows import Row, certificates, rows, system
from defend.memory import budget
from defend.tasks import kind_of

#: example samples kept per cell for the report
EXAMPLES = 2
#: the column of smoothing rows that attacks inside each certificate
INSIDE = "inside-radius"


@dataclass(frozen=True)
class Cell:
    """One cell: a defence ``row``, an ``attack``, its ``adaptive`` variant, an ``eps``."""

    row: Row
    attack: str
    adaptive: str = "none"
    eps: float | None = None

    @property
    def id(self) -> str:
        attack = self.attack + ("" if self.adaptive == "none" else f"+{self.adaptive}")
        eps = "" if self.eps is None else f".eps{self.eps:.4g}"
        return _safe(f"{self.row.task}.{self.row.model}.{self.row.defence}.{attack}{eps}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", name)


def row_id(row: Row) -> str:
    return _safe(f"{row.task}.{row.model}.{row.defence}")


def plan(config: dict[str, Any]) -> list[Cell]:
    """Every cell of the configuration, in a fixed order (module doc)."""
    cells = []
    for task in config["run"]["tasks"]:
        for row in rows(config, task):
            for attack in config[task]["attacks"]:
                if attack == INSIDE:  # only smoothing rows have certificates
                    cells += [Cell(row, attack)] if row.smoothing else []
                    continue
                for adaptive in _variants(config, row, attack):
                    takes_eps = column(attack).takes_eps
                    for eps in config[task]["eps"] if takes_eps else [None]:
                        cells.append(Cell(row, attack, adaptive, eps))
    return cells


def _variants(config: dict[str, Any], row: Row, attack: str) -> list[str]:
    variants = ["none"]
    if not config["run"]["adaptive"]:
        return variants
    if row.smoothing and (attack in GRADIENT or attack == "dgde"):
        variants.append("eot")
    if row.detector and attack in EVADING[kind_of(row.task)]:
        variants.append("evade")
    return variants


def cell_params(config: dict[str, Any], cell: Cell, paths: dict[str, Path]) -> dict[str, Any]:
    """The attack's parameters in this cell (the configuration's, the detector for evade)."""
    params = dict(config["attack"].get(cell.attack, {}))
    if cell.adaptive == "evade":
        params = {**params, **config["attack"]["evade"], "detector": str(paths["detector"])}
    if cell.attack == "real-feature":  # the hallucination attack's feature, as a real one
        params = dict(config["attack"]["hallucination"])
    seeded = ("hallucination", "seg-fgsm", "seg-pgd", "dgde", *registered_attacks())
    if cell.attack in seeded:
        params["seed"] = config["run"]["seed"]
    if cell.attack == "dgde" and cell.adaptive == "eot":
        # pruning to the fewest pixels that flip the fixed-draw estimate lands on its
        # decision boundary, which fresh draws do not keep: the DE's support is kept whole
        params.setdefault("prune", False)
    return params


def new_record(config: dict[str, Any], cell: Cell) -> CellRecord:
    """The record of ``cell`` before it runs: its identity (:class:`CellRecord`)."""
    run = config["run"]
    worst = [f"{cell.attack}+{cell.adaptive}", cell.attack] if cell.adaptive != "none" else None
    return CellRecord(id=cell.id, task=cell.row.task, model=cell.row.model,
                      defence=cell.row.defence, attack=cell.attack, adaptive=cell.adaptive,
                      eps=cell.eps, seed=run["seed"], n=run["n"], split=run["split"],
                      worst_case_of=worst)  # fmt: skip


def run_cell(config: dict[str, Any], cell: Cell, paths: dict[str, Path], out: Path,
             data_dir: Path) -> CellRecord:  # fmt: skip
    """The record of ``cell`` (module doc); a failure is recorded, not raised."""
    start = time.perf_counter()
    record = new_record(config, cell)
    try:
        params = cell_params(config, cell, paths)
        record.params = {k: v for k, v in params.items() if k != "detector"}
        with budget(config["run"]["memory"]), recording() as seconds:  # local or a Ray worker
            measured = _measure(config, cell, paths, out, data_dir)
        for name, value in measured.items():
            setattr(record, name, value)
        record.status = "ok"
    except Exception as error:  # noqa: BLE001 - a failed cell is recorded, the rest go on
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}".splitlines()[0]
        record.traceback = traceback.format_exc(limit=6)
    record.seconds = round(time.perf_counter() - start, 3)
    record.phases = with_rest(seconds, record.seconds) if record.ok else None
    return record


def _measure(config: dict[str, Any], cell: Cell, paths: dict[str, Path], out: Path,
             data_dir: Path) -> dict[str, Any]:  # fmt: skip
    """The cell's measured fields: its first ``run.n`` samples of ``run.split``, every one
    of them, one group per input shape (fastMRI mixes k-space widths and coil counts), each
    against the defended system of its shape; the outcomes of all groups summarised
    together."""
    run = config["run"]
    with phase("data"):
        groups = load_groups(data_dir, cell.row.task, run["split"], run["n"],
                             checkpoint=paths["model"])  # fmt: skip
    builds = {name: file_sha256(p) for name, p in sorted(paths.items()) if Path(p).is_file()}
    parts = [_measure_group(config, cell, paths, builds, out, group, len(groups) > 1)
             for group in groups]  # fmt: skip
    return _merge(cell, parts, out)


def _measure_group(config: dict[str, Any], cell: Cell, paths: dict[str, Path],
                   builds: dict[str, str], out: Path,
                   group: tuple[np.ndarray, np.ndarray, np.ndarray],
                   shaped: bool) -> dict[str, Any]:  # fmt: skip
    """One shape group ``(x, y, positions)`` of the cell (``builds``: the hashes of the row's
    build files, what its cached attacks and outputs are keyed on): ``samples`` (per-sample
    outcomes), ``extra`` (cell metrics), the detector's ``clean_scores`` / ``adv_scores``,
    the recon certificates' ``bounds``, and what the examples show (``shown``)."""
    x, y, positions = group
    task = cell.row.task
    with phase("models"):
        defended = system(config, cell.row, paths, input_shape=x.shape[1:])
    defended.outputs = reuse.remembered(defended.outputs, out / "rows" / row_id(cell.row), builds)
    clean = clean_stage(config, cell.row, defended, x, y, positions, out, shaped)
    judge = outcomes.Judge(config, defended, x, y, clean_outputs(clean))
    x_adv, adv_out, samples = _attacked(
        config, cell, paths, judge, clean, positions, out / reuse.FOLDER, attacker(cell.row, builds)
    )
    samples.update(outcomes.size(x, x_adv))
    extra: dict[str, Any] = {"quality_metric": measures.QUALITY[kind_of(task)]}
    samples.update(_baseline(task, defended, x, y, extra))
    part: dict[str, Any] = {"samples": samples, "extra": extra, "bounds": None}
    if defended.scores is not None:
        part["clean_scores"], part["adv_scores"] = clean["scores"], defended.scores(x_adv, adv_out)
        samples.update(outcomes.detection(clean["scores"], part["adv_scores"],
                                          defended.threshold, samples.get("success")))  # fmt: skip
    if "violated" not in samples and defended.smooth is not None and "success" in samples:
        certified, part["violations"], part["bounds"] = _certified(
            task, defended, clean, x, x_adv, y, adv_out)  # fmt: skip
        samples.update(certified)
    part["shown"] = (x, x_adv, judge.clean, judge.shown(x_adv, adv_out))
    return part


def _merge(cell: Cell, parts: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """The cell's fields from its shape groups' :func:`_measure_group` parts: outcomes
    concatenated in group order and summarised, the detector's AUROC and ROC over all
    scores, the certificates' violations summed and bound's median over all samples."""
    task = cell.row.task
    samples = {k: np.concatenate([p["samples"][k] for p in parts]) for k in parts[0]["samples"]}
    extra = dict(parts[0]["extra"])
    result: dict[str, Any] = {"n": sum(len(p["shown"][0]) for p in parts)}  # may be < run.n
    if "clean_scores" in parts[0]:
        clean, adv = (np.concatenate([p[k] for p in parts]) for k in ("clean_scores", "adv_scores"))
        extra["detection_auroc"] = measures.separation(clean, adv)
        result["roc"] = measures.roc_points(clean, adv)
        auroc = intervals.auroc(extra["detection_auroc"], len(adv), len(clean))
    if "violated" in samples:
        extra["certificate_violations"] = int(np.nansum(samples["violated"]))
    elif "violations" in parts[0]:
        extra["certificate_violations"] = sum(p["violations"] for p in parts)
        if kind_of(task) == "recon":
            bounds = np.concatenate([p["bounds"] for p in parts])
            finite = bounds[np.isfinite(bounds)]
            extra["certified_bound"] = float(np.median(finite)) if len(finite) else float("nan")
    result.update(outcomes.summarise(task, samples))
    result["metrics"].update(extra)
    if "detection_auroc" in extra:
        result["intervals"]["detection_auroc"] = [auroc.low, auroc.high]
        result["counts"]["detection_auroc"] = auroc.n
    result["examples"] = _write_examples(out, cell, *parts[0]["shown"])
    return result


Attacked = tuple[np.ndarray, Outputs, dict[str, np.ndarray]]


@timed("judging")
def _baseline(task: str, defended: Any, x: np.ndarray, y: np.ndarray,
              extra: dict[str, Any]) -> dict[str, np.ndarray]:  # fmt: skip
    """What the model must beat to be of any use, for the quality flags: recon per sample
    ``zero_filled_quality`` (the SSIM of the zero-filled input, (N,)); cls ``chance_quality``
    (1 / classes, into ``extra``); seg nothing."""
    if kind_of(task) == "recon":
        images = measures.zero_filled_images(defended.estimator, x, tuple(y.shape[1:]))
        return {"zero_filled_quality": measures.quality(task, y, images)}
    if kind_of(task) == "cls":
        extra["chance_quality"] = 1 / defended.estimator.nb_classes
    return {}


def _attacked(config: dict[str, Any], cell: Cell, paths: dict[str, Path],
              judge: outcomes.Judge, clean: dict[str, np.ndarray], positions: np.ndarray,
              attacks: Path, who: dict[str, str]) -> Attacked:  # fmt: skip
    """``(x_adv, outputs, samples)`` of the cell's attack: the column's attack, the
    per-sample worst case of it and its adaptive twin, the real feature's recall, or the
    inside-radius check (:mod:`defend.matrix.inside_radius`). The column's plain attack is
    computed once for every row and cell that needs it (:mod:`reuse`: kept in ``attacks``,
    keyed on the model the attacker sees, ``who``)."""
    defended, x, y, seed = judge.defended, judge.x, judge.y, config["run"]["seed"]
    if cell.attack == INSIDE:
        with phase("attack"):
            x_adv = inside_radius.attack(defended, clean, x, y, config)
        adv_out = defended.outputs(x_adv, positions)
        samples = judge(x_adv, adv_out)
        samples.update(inside_radius.outcomes(defended, clean, x, adv_out))
        return x_adv, adv_out, samples
    plain = AttackSpec(column(cell.attack).run, defended.estimator,
                       cell_params(config, replace(cell, adaptive="none"), paths))  # fmt: skip
    plain = CachedAttack(plain, attacks, who, cell.attack)
    if cell.adaptive != "none":
        tries = [_adaptive(config, cell, defended, paths), plain]
        return outcomes.worst_case(judge, tries, x, y, positions, cell.eps, seed)
    x_adv = plain(x, y, cell.eps, positions, seed)
    adv_out = defended.outputs(x_adv, positions)
    real = cell.attack == "real-feature"
    return x_adv, adv_out, judge.recall(x_adv, adv_out) if real else judge(x_adv, adv_out)


def attacker(row: Row, builds: dict[str, str]) -> dict[str, str]:
    """Who a plain attack of ``row`` sees (:func:`reuse.attack_key`): its model's
    checkpoint (its hash in ``builds``), shared by every built-in row of that model; a
    registered defence may change the estimator, so its row is named too."""
    who = {"model": builds["model"]}
    return {**who, "row": row_id(row)} if row.registered else who


def _adaptive(config: dict[str, Any], cell: Cell, defended: Any,
              paths: dict[str, Path]) -> AttackSpec:  # fmt: skip
    """The adaptive attack: the column's attack against
    the smoothed model's EOT estimator (fixed draws for the black-box DGDE, fresh draws a
    step for the gradient attacks), or the detector-aware ``NAME+evade`` attack."""
    params = cell_params(config, cell, paths)
    if cell.adaptive == "evade":
        return AttackSpec(ATTACKS[cell.attack + "+evade"].run, defended.estimator, params)
    black_box = cell.attack not in GRADIENT  # queries predictions: fixed noise draws
    draws = config["smoothing"]["query_draws" if black_box else "eot"]
    seed = config["run"]["seed"]
    return AttackSpec(ATTACKS[cell.attack].run, defended.eot(draws, seed, frozen=black_box), params)


def _certified(
    task: str, defended: Any, clean: dict[str, np.ndarray], x: np.ndarray, x_adv: np.ndarray,
    y: np.ndarray, adv_out: Outputs,
) -> tuple[dict[str, np.ndarray], int, np.ndarray | None]:  # fmt: skip
    """The clean certificates against this cell's perturbations (module doc): per sample
    ``certified`` (N,), the number of violations, and recon the bounds (N,) that covered
    each perturbation (inf where none did; None for the other tasks)."""
    delta = (x_adv - x).reshape(len(x), -1)
    if kind_of(task) == "recon":
        return _recon_certified(defended, clean, x, x_adv, adv_out)
    size = np.linalg.norm(delta, axis=1)
    covered = clean["radius"] >= size
    abstain = defended.smooth.ABSTAIN
    answered = ~adv_out.abstained
    if kind_of(task) == "cls":
        label = clean["label"]
        right = covered & (label == y)
        broken = covered & (label != abstain) & answered & (adv_out.values != label)
        return {"certified": right.astype(np.float64)}, int(broken.sum()), None
    labels = clean["labels"]
    sure = labels != abstain
    right = (sure & (labels == (y > 0.5))).reshape(len(x), -1).mean(1)
    changed = (sure & answered & (adv_out.values != (labels == 1))).reshape(len(x), -1).any(1)
    return {"certified": np.where(covered, right, 0.0)}, int((covered & changed).sum()), None


def _recon_certified(
    defended: Any, clean: dict[str, np.ndarray], x: np.ndarray, x_adv: np.ndarray,
    adv_out: Outputs,
) -> tuple[dict[str, np.ndarray], int, np.ndarray]:  # fmt: skip
    """Center smoothing's bound at the grid's first input radius covering the perturbation
    (in the noise's units), checked against the smoothed outputs' actual distance."""

    unit = defended.smooth.noise.unit  # the noise's: fixed, from the training split
    xt = torch.as_tensor(x)
    size = ((torch.as_tensor(x_adv) - xt).flatten(1).norm(dim=1) / unit).numpy()
    grid, bounds = clean["eps_in"], clean["eps_out"]
    column = np.searchsorted(grid, size)  # first grid radius >= size
    inside = column < len(grid)
    bound = np.where(inside, bounds[np.arange(len(x)), np.minimum(column, len(grid) - 1)], np.inf)
    moved = inside_radius.moved(defended, clean, x, adv_out)
    finite = np.isfinite(bound)
    return {"certified": finite.astype(np.float64)}, int((finite & (moved > bound)).sum()), bound


def clean_stage(config: dict[str, Any], row: Row, defended: Any, x: np.ndarray, y: np.ndarray,
                positions: np.ndarray, out: Path,
                shaped: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """The row's clean outputs (``outputs`` and ``abstained``, :func:`clean_outputs`),
    detector ``scores`` and certificates (:func:`~defend.matrix.rows.certificates`),
    computed once per row (``OUT/rows/<row>.npz``, written atomically; the same numbers
    whoever computes it; ``shaped``: one file per input shape, ``<row>-<shape>.npz``)."""

    shape = "-" + "x".join(map(str, x.shape[1:])) if shaped else ""
    path = out / "rows" / f"{row_id(row)}{shape}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            found = {k: f[k] for k in f.files}
        if np.array_equal(found["positions"], positions) and "abstained" in found:
            return found
    outputs = defended.outputs(x, positions)
    stage = {"positions": positions, "outputs": outputs.values, "abstained": outputs.abstained}
    if defended.scores is not None:
        stage["scores"] = defended.scores(x, outputs)
    if defended.smooth is not None:
        stage.update(certificates(defended, config, x, y, positions))
    write_npz(path, stage)
    return stage


def clean_outputs(clean: dict[str, np.ndarray]) -> Outputs:
    """The row's clean :class:`~defend.matrix.measures.Outputs` from :func:`clean_stage`."""
    return Outputs(clean["outputs"], clean["abstained"])


def _write_examples(out: Path, cell: Cell, x: np.ndarray, x_adv: np.ndarray,
                    clean_out: np.ndarray, adv_out: np.ndarray) -> str:  # fmt: skip
    """A few example images of the cell (``OUT/examples/<id>.npz``: ``input``, ``attacked``,
    ``output``, ``attacked_output``, each (k, h, w) float16); returns the file's path
    relative to ``out``."""

    k = min(EXAMPLES, len(x))
    images = {
        "input": _image(x[:k]),
        "attacked": _image(x_adv[:k]),
        "output": _output_image(clean_out[:k]),
        "attacked_output": _output_image(adv_out[:k]),
    }
    path = Path("examples") / f"{cell.id}.npz"
    write_npz(out / path, {key: v.astype(np.float16) for key, v in images.items()})
    return str(path)


def _image(x: np.ndarray) -> np.ndarray:
    """(k, h, w) images of inputs: recon k-space as its zero-filled magnitude (rss), seg / cls
    their first channel."""
    if x.ndim == 5:
        return zero_filled(torch.as_tensor(x)).numpy()
    return x[:, 0]


def _output_image(out: np.ndarray) -> np.ndarray:
    """(k, h, w) images of scored outputs: recon as is, seg the first label's mask, cls a
    flat image of the label (for a uniform layout)."""
    if out.ndim == 3:
        return out
    if out.ndim == 4:
        return out[:, 0].astype(np.float32)
    return np.broadcast_to(out.reshape(-1, 1, 1).astype(np.float32), (len(out), 8, 8)).copy()
