"""The matrix's defence rows: what a defended system outputs, flags and certifies.

A row is ``none`` (the standard model), ``adv-METHOD`` (the model hardened by ``defend train
--adversarial METHOD``), ``smoothing`` (the standard model smoothed at the task's sigma, behind
a denoiser when ``smoothing.denoiser_epochs`` > 0), ``detector`` (the standard model guarded by
the hallucination detector (recon) or the input detector (seg, cls)) and
``adv-METHOD+detector``, and the defences plugins register
(:mod:`~defend.matrix.defence_registry`: the standard model, changed by the defence's
``apply``). :func:`rows` lists a task's rows from the configuration,
:func:`row_builds` names what each needs, and :class:`System` is the defended model as a cell
sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defend.adaptive.eot import eot_estimator
from defend.detect.detector import load_detector
from defend.detect.inputs import input_detector_classifier, input_scores, input_threshold
from defend.estimators import load_estimator
from defend.matrix.builds import Build, data_build, denoiser_build, detector_build, model_build
from defend.matrix.defence_registry import BUILT_IN, defence
from defend.matrix.measures import Outputs, zero_filled_images
from defend.matrix.phases import timed
from defend.metrics import predicted_masks
from defend.smooth import smoothed, training_unit
from defend.smooth.certify import EPS_IN
from defend.smooth.denoiser import load_denoiser
from defend.tasks import kind_of


@dataclass(frozen=True)
class Row:
    """One defence row: ``task``, ``model`` and the ``defence`` name (module doc)."""

    task: str
    model: str
    defence: str

    @property
    def method(self) -> str | None:
        """The adversarial-training method, or None (the standard model)."""
        if not self.defence.startswith("adv-"):
            return None
        return self.defence[4:].removesuffix("+detector")

    @property
    def smoothing(self) -> bool:
        return self.defence == "smoothing"

    @property
    def detector(self) -> bool:
        return self.defence == "detector" or self.defence.endswith("+detector")

    @property
    def registered(self) -> bool:
        """Whether a plugin registered this row's defence (:func:`register_defence`)."""
        return self.defence not in BUILT_IN and self.method is None


def rows(config: dict[str, Any], task: str) -> list[Row]:
    """The defence rows of ``task``, per model, in the configuration's order."""
    section, out = config[task], []
    for model in section["models"]:
        for kind in section["defences"]:
            if kind in ("adversarial", "adversarial+detector"):
                suffix = "+detector" if kind.endswith("detector") else ""
                out += [Row(task, model, f"adv-{m}{suffix}") for m in section["hardening"]]
            else:
                out.append(Row(task, model, kind))
    return out


def run_builds(config: dict[str, Any], rows_run: list[Row]) -> list[Build]:
    """Everything the rows ``rows_run`` need built, the data first, each once, in order."""
    wanted = [data_build(config)]
    for row in rows_run:
        wanted += row_builds(config, row).values()
    return list(dict.fromkeys(wanted))


def row_builds(config: dict[str, Any], row: Row) -> dict[str, Build]:
    """What ``row`` needs built: ``model``, and ``denoiser`` / ``detector`` where it has one;
    a recon smoothing row also ``data`` (its noise's k-space unit is the training split's)."""
    base = model_build(config, row.task, row.model, row.method)
    needs = {"model": base}
    if row.smoothing:
        if kind_of(row.task) == "recon":
            needs["data"] = data_build(config)
        denoiser = denoiser_build(config, row.task, base)
        if denoiser is not None:
            needs["denoiser"] = denoiser
    if row.detector:
        needs["detector"] = detector_build(config, base)
    if row.registered and defence(row.defence).builds is not None:
        needs.update(defence(row.defence).builds(config, row))
    return needs


@dataclass
class System:
    """A defended model: the base ``estimator`` (what a non-adaptive attacker sees), its
    ``outputs(x, positions)`` (:class:`~defend.matrix.measures.Outputs`), and
    where present a ``smooth`` model and a detector (``scores(x, outputs) -> (N,)``,
    flagged above ``threshold``). A system that may abstain declares its ``fallback(x,
    shape)``: recon, the images it shows instead (the zero-filled images of the inputs);
    seg and cls abstentions are scored as wrong labels (:func:`measures.resolve`)."""

    task: str
    estimator: Any
    outputs: Callable[[np.ndarray, np.ndarray], Outputs]
    smooth: Any = None
    denoiser: Any = None
    scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    threshold: float | None = None
    detector_path: Path | None = None
    fallback: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None

    def eot(self, draws: int, seed: int, frozen: bool = False) -> Any:
        """The smoothed model's EOT estimator (the adaptive attacker's view); ``frozen``:
        the same ``draws`` noise images for every query (a black-box attacker's
        deterministic estimate, :mod:`defend.adaptive.eot`)."""

        torch.manual_seed(seed)
        frozen_seed = seed if frozen else None
        unit = self.smooth.noise.unit if kind_of(self.task) == "recon" else None  # the same noise
        return eot_estimator(self.estimator, self.smooth.sigma, draws, self.denoiser, frozen_seed,
                             unit)  # fmt: skip


def system(config: dict[str, Any], row: Row, paths: dict[str, Path],
           input_shape: tuple[int, ...] | None = None) -> System:  # fmt: skip
    """The defended model of ``row`` from its built ``paths`` (:func:`row_builds`' keys), for
    inputs of ``input_shape`` (recon: the estimator reshaped to that k-space, its mask of
    that width; None: the checkpoint's shape)."""

    device = config_device(config)
    estimator = load_estimator(paths["model"], device=device)
    if input_shape is not None and kind_of(row.task) == "recon":
        estimator = estimator.reshaped(tuple(input_shape))
    out = System(row.task, estimator, lambda x, _: base_outputs(row.task, estimator, x))
    if row.smoothing:
        _add_smoothing(out, config, paths, device)
    if row.detector:
        _add_detector(out, paths["detector"], device)
    if row.registered:
        defence(row.defence).apply(out, config, paths)
    out.outputs = timed("outputs" if out.smooth is None else "smoothing")(out.outputs)
    if out.scores is not None:
        out.scores = timed("detection")(out.scores)
    return out


def config_device(config: dict[str, Any]) -> str | None:
    """``run.device`` as a torch device name, None for ``auto`` (CUDA if present)."""
    device = config["run"]["device"]
    return None if device == "auto" else device


def base_outputs(task: str, estimator: Any, x: np.ndarray) -> Outputs:
    """The base model's outputs: recon images, seg the masks its logits predict, cls the
    labels; no abstention."""
    pred = estimator.predict(x, batch_size=len(x))
    if kind_of(task) == "seg":
        pred = predicted_masks(torch.as_tensor(pred)).numpy()
    return Outputs.answered(pred.argmax(1) if kind_of(task) == "cls" else pred, task)


def _add_smoothing(out: System, config: dict[str, Any], paths: dict[str, Path],
                   device: str | None) -> None:  # fmt: skip

    task, s = out.task, config["smoothing"]
    out.denoiser = load_denoiser(paths["denoiser"], paths["model"]) if "denoiser" in paths else None
    options = {}
    if kind_of(task) == "recon":  # the noise fixed before any input: std sigma x the training unit
        options = {"delta": s["delta"], "unit": training_unit(paths["data"], paths["model"])}
    out.smooth = smoothed(out.estimator, config[task]["sigma"], out.denoiser, **options)
    n = s["recon_n"] if kind_of(task) == "recon" else s["n"]
    seed = config["run"]["seed"]

    def outputs(x: np.ndarray, positions: np.ndarray) -> Outputs:
        return Outputs.stack([smoothed_output(task, out.smooth, xi, n, s, seed + int(p))
                              for xi, p in zip(x, positions, strict=True)])  # fmt: skip

    out.outputs = outputs
    if kind_of(task) == "recon":
        out.fallback = lambda x, shape: zero_filled_images(out.estimator, x, shape)


def smoothed_output(task: str, smooth: Any, x: np.ndarray, n: int, s: dict[str, Any],
                    seed: int) -> Outputs:  # fmt: skip
    """One smoothed prediction (a leading axis of 1), its abstention explicit."""
    if kind_of(task) == "cls":
        label = int(smooth.predict(x, n, s["alpha"], seed=seed))
        gave_up = label == smooth.ABSTAIN
        return Outputs(np.array([0 if gave_up else label]), np.array([gave_up]))
    if kind_of(task) == "seg":
        labels = smooth.predict(x, n, s["alpha"], seed=seed)[None]
        return Outputs(labels == 1, labels == smooth.ABSTAIN)
    center = smooth.predict(x, n, s["alpha"], seed=seed, n0=s["n0"])
    if center is None:
        shape = smooth.forward(torch.as_tensor(x)[None].to(smooth.device)).shape
        return Outputs(np.zeros(shape, np.float32), np.array([True]))
    return Outputs(center.cpu().numpy()[None], np.array([False]))


def _add_detector(out: System, path: Path, device: str | None) -> None:
    out.detector_path = path
    if kind_of(out.task) == "recon":
        detector = load_detector(path, device=device)
        out.scores = lambda x, outputs: detector.score(x, outputs.values)
        out.threshold = detector.threshold
        return

    classifier = input_detector_classifier(path, device=device)
    out.scores = lambda x, _: input_scores(classifier, x)
    out.threshold = input_threshold(path)  # calibrated at its false-positive rate


@timed("smoothing")
def certificates(system: System, config: dict[str, Any], x: np.ndarray, y: np.ndarray,
                 positions: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """The smoothed model's certificates of clean samples, per sample.

    Returns:
        cls ``label`` (N,) (the smoothed model's ``ABSTAIN`` where it abstains), ``radius``
        (N,) l2 pixel units; seg ``labels`` (N, K, H, W) (``ABSTAIN`` pixels), ``radius``
        (N,); recon ``center`` (N, h, w) (0 where it abstains), ``center_abstained`` (N,)
        bool, ``eps_in`` (E,) the grid of input radii (the noise's units), ``eps_out``
        (N, E) the bounds (inf where none).
    """

    s, seed, smooth = config["smoothing"], config["run"]["seed"], system.smooth
    found: dict[str, list] = {}
    for xi, p in zip(x, positions, strict=True):
        common = {"n0": s["n0"], "alpha": s["alpha"], "seed": seed + int(p)}
        if kind_of(system.task) == "recon":
            grid = [e * smooth.sigma for e in (*EPS_IN, 2.0, 4.0)]
            center, bounds = smooth.certify(xi, n=s["recon_n"], eps_in=grid, **common)
            found.setdefault("center_abstained", []).append(center is None)
            found.setdefault("center", []).append(
                np.zeros(y.shape[1:], np.float32) if center is None else center.cpu().numpy()
            )
            found.setdefault("eps_out", []).append(bounds)
            found["eps_in"] = [grid]
            continue
        label, radius = smooth.certify(xi, n=s["n"], **common)
        found.setdefault("labels" if kind_of(system.task) == "seg" else "label", []).append(label)
        found.setdefault("radius", []).append(radius)
    out = {k: np.asarray(v) for k, v in found.items()}
    if "eps_in" in out:
        out["eps_in"] = out["eps_in"][0]
    return out
