"""The plan of a matrix run and its time, said before the run starts.

The estimate counts the model passes a run needs and multiplies them by the time of one pass
measured now, on this device, at the data's shape (a randomly initialised model of each
configured architecture; its weights do not change its speed):

* ``forward`` (s a sample): one forward pass without gradients, in a batch of up to
  :data:`FORWARD_BATCH` (noisy copies and queries go through in large passes);
* ``step`` (s a sample): an attack's step, the training loss's gradient with respect to the
  input (weights frozen), in a batch of a cell's samples (at most :data:`STEP_BATCH`; the
  attacks take a cell's samples together);
* ``train_step`` (s a sample): a training step (forward and backward with the weights'
  gradients) in a training batch (:data:`TRAIN_BATCH`), for the builds that train (a
  detector's examples are attacks: ``step``).

Passes counted per sample, from the configuration, each piece of work once (the matrix
computes each once, :mod:`~defend.matrix.reuse`; :func:`cell_passes` counts it at the first
cell that needs it):

* a row's clean stage: its system's answer and certificate of each clean input
  (:func:`evaluation_passes`: one forward; smoothing ``n`` and ``n0 + n`` noisy copies,
  center smoothing ``n0 + 2 recon_n`` and ``n0 + 3 recon_n``);
* an attack: its gradient steps (``hallucination``/``seg-pgd`` ``max_iter``,
  ``art-pgd``/``inside-radius`` ``steps``, ``seg-fgsm`` one; each times ``smoothing.eot``
  draws for ``+eot`` and ``inside-radius``) and queries (``dgde`` ``max_queries``, times
  ``query_draws`` for ``+eot``; all of them, though DGDE stops at its first success); a
  plain attack once a model, an adaptive one in its cell; a registered attack counts as
  nothing but its evaluation;
* a row's answer to each attacked batch (an adaptive cell: its adaptive attack's and, once
  a row, the plain attack's);
* a model build: ``epochs x`` training samples steps (adversarial training: ``x (steps + 1)``
  with its method's default steps); a denoiser the same at ``denoiser_epochs``; a detector
  the attacks that make its examples (train and val): recon :data:`DETECTOR_COPIES`
  attacks of ``max_iter`` steps a slice, seg and cls :data:`DETECTOR_STEPS` an image.

A smoothing row's denoiser is timed too (a forward a sample, ``PassTimes.denoise``; a step
through it counts as three). It leaves out data loading, data synthesis, bookkeeping and the
detectors' own small networks: it is the run's model time, a floor
(:mod:`defend.bench.matrix_time` sets the measured run against it; ``docs/benchmark.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from defend.data import synthesize
from defend.data.arrays import load_dataset
from defend.data.synth import split_counts
from defend.device import pick_device
from defend.errors import DefendError
from defend.matrix.builds import Build, model_build
from defend.matrix.cells import INSIDE, Cell
from defend.matrix.rows import Row
from defend.memory import samples_per_pass
from defend.models import build_model, default_model_config
from defend.models.dncnn import build_denoiser
from defend.smooth.denoiser import denoiser_config
from defend.tasks import Batch, get_task, kind_of
from defend.train import TrainConfig
from defend.train.from_folder import describe_data, model_data_args
from defend.train.loop import to_device
from defend.train.methods import DEFAULT_STEPS

#: samples in the timed forward passes, at most
FORWARD_BATCH = 128
#: a timed pass's length to aim for (seconds): batches are cut to it, repeats skipped past it
TIMING_SECONDS = 1.0
#: a training step's time over a forward's, taken where a forward alone passes
#: :data:`TIMING_SECONDS` (forward + backward is about three forwards)
BACKWARD_RATIO = 3.0
#: samples in the timed attack steps, at most (a cell's samples go through an attack together)
STEP_BATCH = 32
#: samples in the timed training steps: the training batch (``TrainConfig``'s default)
TRAIN_BATCH = TrainConfig().batch_size
#: timed repeats of each pass after one warm-up (the median is kept)
REPEATS = 3
#: an estimate past this on a CPU is said as a warning (seconds)
LONG = 3600.0
#: attack steps an image of a seg / cls detector's examples (seg FGSM + PGD-10, cls PGD-20;
#: cls DGDE's queries are forwards, left out)
DETECTOR_STEPS = {"seg": 11, "cls": 20}
#: attacks a slice in a recon detector's examples (2-3 hallucinations and one PGD)
DETECTOR_COPIES = 4


@dataclass
class PassTimes:
    """Seconds a sample of one ``forward``, one attack ``step`` (the gradient with respect to
    the input, in a batch of a cell's samples) and one ``train_step`` (forward and backward
    with weight gradients, in a training batch), and of one forward of the row's denoiser
    (``denoise``; 0 where none is timed) (module doc)."""

    forward: float
    step: float
    denoise: float = 0.0
    train_step: float = 0.0


@dataclass
class Passes:
    """What one sample of a cell costs: ``steps`` and ``forwards`` of the model, of which
    ``denoised_steps`` and ``denoised_forwards`` also go through the row's denoiser."""

    steps: float = 0.0
    forwards: float = 0.0
    denoised_steps: float = 0.0
    denoised_forwards: float = 0.0

    def seconds(self, pace: PassTimes) -> float:
        """Seconds a sample at ``pace`` (a backward through the denoiser: two forwards)."""
        through = (3 * self.denoised_steps + self.denoised_forwards) * pace.denoise
        return self.steps * pace.step + self.forwards * pace.forward + through


def time_passes(task: str, model: str, options: dict[str, Any], data: Path, split: str,
                device: str | None, samples: int,
                denoiser: tuple[int, int] | None = None) -> PassTimes:  # fmt: skip
    """:class:`PassTimes` of ``model`` (its ``options``) on ``task``'s ``split`` in ``data``,
    ``samples`` a cell: forwards in batches of up to :data:`FORWARD_BATCH`, steps of up to a
    cell's samples (at most :data:`STEP_BATCH`), each as many as take about
    :data:`TIMING_SECONDS` and the memory budget holds (:func:`_per_sample`); ``denoiser``
    ``(depth, width)``: also the forward of the task's denoiser of that size."""
    runner, dataset = get_task(task), load_dataset(task, data, split)
    config = default_model_config(task, model, **model_data_args(task, describe_data(
        task, dataset, None)))  # fmt: skip
    dev = pick_device(device)
    net = build_model(task, {**config, **options}).to(dev).eval()  # batch norm takes a batch of 1

    def batch(k: int) -> Batch:
        return to_device(default_collate([dataset[0]] * k), dev)

    one = _seconds(_forward_pass(runner, net, batch(1)))  # also the warm-up
    if one > TIMING_SECONDS:  # a large model on a slow device: neither a backward nor the
        slow = BACKWARD_RATIO * one  # memory measurement is spent on it
        return PassTimes(one, slow, train_step=slow)
    fits = samples_per_pass(lambda x: runner.forward(net, {**batch(1), "input": x}),
                            batch(1)["input"][0], dev, owner=net)  # fmt: skip
    at = lambda make: lambda k: make(runner, net, batch(k))  # noqa: E731
    found = PassTimes(_per_sample(at(_forward_pass), min(FORWARD_BATCH, fits)),
                      _per_sample(at(_attack_step), min(samples, STEP_BATCH, fits)),
                      train_step=_per_sample(at(_train_step), min(TRAIN_BATCH, fits)))  # fmt: skip
    if denoiser is not None:
        shape = tuple(batch(1)["input"].shape[1:])
        denoise = build_denoiser(denoiser_config(task, shape, *denoiser)).to(dev).eval()
        found.denoise = _per_sample(
            lambda k: partial(_no_grad, denoise, batch(k)["input"]), min(FORWARD_BATCH, fits)
        )  # the batch made untimed
    return found


def _forward_pass(runner: Any, net: torch.nn.Module, inputs: Batch) -> Callable[[], Any]:
    """One forward of ``inputs`` without gradients."""
    return lambda: _no_grad(runner.forward, net, inputs)


def _attack_step(runner: Any, net: torch.nn.Module, inputs: Batch) -> Callable[[], Any]:
    """An attack's step: the loss's gradient with respect to the inputs, the weights frozen
    (no weight gradients: cheaper than a training step)."""
    x = inputs["input"].detach().clone().requires_grad_(True)

    def run() -> Any:
        net.requires_grad_(False)
        try:
            loss = runner.loss(runner.forward(net, {**inputs, "input": x}), inputs).mean()
            return torch.autograd.grad(loss, x)
        finally:
            net.requires_grad_(True)

    return run


def _train_step(runner: Any, net: torch.nn.Module, inputs: Batch) -> Callable[[], Any]:
    """A training step's forward and backward (weight gradients)."""
    return lambda: runner.loss(runner.forward(net, inputs), inputs).mean().backward()


def _per_sample(run_at: Callable[[int], Callable[[], Any]], most: int) -> float:
    """Seconds a sample of ``run_at(k)()``: one sample first (also the warm-up), then as
    many samples as take about :data:`TIMING_SECONDS`, up to ``most``."""
    one = _seconds(run_at(1))
    batch = max(1, min(most, int(TIMING_SECONDS / max(one, 1e-9))))
    if batch == 1 and one > TIMING_SECONDS:
        return one  # a large model on a CPU: one pass says enough
    return _median_seconds(run_at(batch)) / batch


def _no_grad(function: Callable[..., Any], *args: Any) -> Any:
    with torch.no_grad():
        return function(*args)


def _seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _median_seconds(run: Callable[[], Any]) -> float:
    """The median of :data:`REPEATS` timed runs after a warm-up; one run when it takes over
    :data:`TIMING_SECONDS` (a large model on a CPU: the estimate should not take minutes)."""
    first = _seconds(run)
    if first > TIMING_SECONDS:
        return first
    return sorted(_seconds(run) for _ in range(REPEATS))[REPEATS // 2]


def evaluation_passes(config: dict[str, Any], row: Row) -> tuple[float, float]:
    """``(predict, certify)`` forwards a sample of ``row``'s system takes to answer one input
    and to certify it: 1 and 0 without smoothing; smoothing ``n`` and ``n0 + n`` (cls, seg),
    center smoothing ``n0 + 2 recon_n`` and ``n0 + 3 recon_n`` (its candidates, their
    distances, the test; the bound's draws)."""
    if not row.smoothing:
        return 1.0, 0.0
    s = config["smoothing"]
    if kind_of(row.task) == "recon":
        return float(s["n0"] + 2 * s["recon_n"]), float(s["n0"] + 3 * s["recon_n"])
    return float(s["n"]), float(s["n0"] + s["n"])


def attack_passes(config: dict[str, Any], attack: str, adaptive: str) -> tuple[float, float]:
    """``(steps, queries)`` a sample of one run of ``attack`` (its ``adaptive`` variant)."""
    smoothing, settings = config["smoothing"], config["attack"].get(attack, {})
    draws = smoothing["eot"] if adaptive == "eot" or attack == INSIDE else 1
    steps = {"hallucination": settings.get("max_iter", 0), "seg-fgsm": 1,
             "seg-pgd": settings.get("max_iter", 0), "art-pgd": settings.get("steps", 0),
             INSIDE: settings.get("steps", 0)}.get(attack, 0) * draws  # fmt: skip
    queries = settings.get("max_queries", 0) if attack == "dgde" else 0
    if adaptive == "eot" and attack == "dgde":
        queries *= smoothing["query_draws"]
    return float(steps), float(queries)


def cell_passes(config: dict[str, Any], cells: list[Cell]) -> dict[str, Passes]:
    """``{cell id: Passes}`` a sample (module doc), in the order of ``cells``: work the
    matrix does once (:mod:`~defend.matrix.reuse`) is counted at the first cell that needs
    it: a row's clean outputs and certificates, a plain attack of a model, a row's outputs of
    that attack. A smoothing row's draws and its adaptive attacks' steps go through its
    denoiser where it has one (``smoothing.denoiser_epochs`` > 0)."""
    seen: set[tuple] = set()

    def first(key: tuple) -> bool:
        new = key not in seen
        seen.add(key)
        return new

    denoised = config["smoothing"]["denoiser_epochs"] > 0
    found = {}
    for cell in cells:
        predict, certify = evaluation_passes(config, cell.row)
        own, evaluated = (0.0, 0.0), predict + certify if first(("row", cell.row)) else 0.0
        if cell.adaptive != "none" or cell.attack == INSIDE:
            steps, queries = attack_passes(config, cell.attack, cell.adaptive)
            own, evaluated = (steps, queries), evaluated + predict
        plain = (0.0, 0.0)
        if cell.attack != INSIDE:
            row = cell.row
            model = model_build(config, row.task, row.model, row.method).key
            key = (model, row if row.registered else None, cell.attack, cell.eps)
            plain = attack_passes(config, cell.attack, "none") if first(("attack", key)) else plain
            evaluated += predict if first(("outputs", row, key)) else 0.0
        through = denoised and cell.row.smoothing
        found[cell.id] = Passes(own[0] + plain[0], evaluated + own[1] + plain[1],
                                own[0] if through else 0.0,
                                evaluated + own[1] if through else 0.0)  # fmt: skip
    return found


def build_passes(build: Build, task: str, sizes: dict[str, int]) -> float:
    """Training steps of ``build`` of a ``task`` model (module doc); ``sizes``: samples a
    split of ``task`` (``train``; ``all``: the splits a detector's examples are made of,
    train and val, recon's val twice for its tune split)."""
    s = build.settings
    if build.kind in ("model", "denoiser"):
        return s["epochs"] * sizes["train"]
    if build.kind == "hardened":
        return s["epochs"] * sizes["train"] * (DEFAULT_STEPS[s["method"]] + 1)
    if build.kind == "detector":
        steps = DETECTOR_STEPS.get(kind_of(task), s.get("max_iter", 0) * DETECTOR_COPIES)
        return sizes["all"] * steps
    return 0.0


@dataclass
class Estimate:
    """Seconds of model time of each build to make and each cell to run (module doc)."""

    builds: dict[str, float]
    cells: dict[str, float]
    device: str
    #: samples a cell, per task
    samples: dict[str, int]

    @property
    def seconds(self) -> float:
        return sum(self.builds.values()) + sum(self.cells.values())


def estimate(config: dict[str, Any], cells: list[Cell], builds: list[Build], data: Path,
             device: str | None, scale: dict[str, float] | None = None) -> Estimate:  # fmt: skip
    """The model time of making ``builds`` and running ``cells`` on the data in ``data``
    (module doc; ``scale``: each split's samples are ``data``'s times ``scale[split]``, for a
    sample of the data, :func:`sample_data`). Each configured model's passes are timed once,
    now."""
    times: dict[tuple[str, str], PassTimes] = {}

    def passes(task: str, model: str) -> PassTimes:
        if (task, model) not in times:
            options = config[task]["model_options"].get(model, {})
            split = config["run"]["split"]
            s = config["smoothing"]
            denoised = s["denoiser_epochs"] > 0 and any(
                c.row.smoothing and c.row.task == task for c in cells)  # fmt: skip
            denoiser = (s["denoiser_depth"], s["denoiser_width"]) if denoised else None
            times[task, model] = time_passes(task, model, options, data, split, device, n[task],
                                             denoiser)  # fmt: skip
        return times[task, model]

    tasks = dict.fromkeys(c.row.task for c in cells)  # in the run's order

    def size(task: str, split: str) -> int:
        return round(_size(task, data, split) * (scale or {}).get(split, 1.0))

    n = {t: min(config["run"]["n"], size(t, config["run"]["split"])) for t in tasks}
    cell_seconds = {}
    counted = cell_passes(config, cells)
    for cell in cells:
        pace = passes(cell.row.task, cell.row.model)
        cell_seconds[cell.id] = n[cell.row.task] * counted[cell.id].seconds(pace)
    build_seconds = {}
    for build in builds:
        task, model = _trained(build)
        if task is None:
            continue
        tune = ("val",) if kind_of(task) == "recon" else ()  # recon's tune split: val again
        sizes = {"train": size(task, "train"),  # a detector: its examples' splits
                 "all": sum(size(task, s) for s in ("train", "val", *tune))}  # fmt: skip
        pace = passes(task, model)  # a detector's examples are attacks: attack steps
        step = pace.step if build.kind == "detector" else pace.train_step
        build_seconds[build.key] = build_passes(build, task, sizes) * step
    return Estimate(build_seconds, cell_seconds, str(pick_device(device)), n)


def sample_data(settings: dict[str, Any], folder: Path) -> tuple[Path, dict[str, float]]:
    """A sample of the synthetic data of ``settings`` (a data build's: size, coils, volumes,
    slices, seed) in ``folder``: one slice of one volume a split, at the data's size and
    coils, and the factor from its samples to the data's per split (volumes x slices; the
    seg and cls sets are counted as growing with the slices too). Seconds, where making the
    data itself can take minutes (the paper preset's 320 px on a CPU)."""
    synthesize(folder, size=settings["size"], coils=settings["coils"], volumes=3, slices=1,
               seed=settings["seed"], progress=False)  # fmt: skip
    counts = split_counts(settings["volumes"], settings.get("test_volumes", 0))
    return folder, {split: count * settings["slices"] for split, count in counts.items()}


def _trained(build: Build) -> tuple[str | None, str | None]:
    """The task and model a build trains or attacks (None, None: data)."""
    if build.kind in ("model", "hardened"):
        return build.settings["task"], build.settings["model"]
    if build.kind in ("denoiser", "detector"):
        return _trained(build.needs[1])
    return None, None


def _size(task: str, data: Path, split: str) -> int:
    try:
        return len(load_dataset(task, data, split))
    except DefendError:  # a split that is not there has no samples
        return 0


def plan_lines(config: dict[str, Any], cells: list[Cell], builds: list[Build],
               estimate: Estimate) -> list[str]:  # fmt: skip
    """What a run will do and how long its model time is, in a few lines (module doc)."""
    kinds: dict[str, int] = {}
    for build in builds:
        kinds[build.kind] = kinds.get(build.kind, 0) + 1
    made = ", ".join(f"{k} {v}" for k, v in kinds.items()) or "none, all cached"
    attack, smoothing = config["attack"], config["smoothing"]
    used = {c.attack for c in cells}
    settings = [f"{name} {attack[name][key]} {word}" for name, key, word in _SETTINGS
                if name in used and key in attack.get(name, {})]  # fmt: skip
    if any(c.row.smoothing for c in cells):
        settings.append(f"smoothing n0 {smoothing['n0']} + n {smoothing['n']} (recon "
                        f"{smoothing['recon_n']}), eot {smoothing['eot']} draws")  # fmt: skip
    parts = {k: _duration(sum(v.values())) for k, v in (("builds", estimate.builds),
                                                       ("cells", estimate.cells))}  # fmt: skip
    samples = ", ".join(f"{task} {n}" for task, n in estimate.samples.items())
    lines = [f"plan: builds to make: {made}; {len(cells)} cells (samples a cell: {samples})",
             f"plan: {'; '.join(settings)}",
             f"estimate: {_duration(estimate.seconds)} of model time on {estimate.device} "
             f"(builds {parts['builds']}, cells {parts['cells']}; passes "
             f"timed now, data loading and bookkeeping not counted)"]  # fmt: skip
    if estimate.device == "cpu" and estimate.seconds > LONG:
        lines.append(
            f"warning: about {_duration(estimate.seconds)} on this CPU: the "
            f"configuration is sized for a GPU (a smaller one: the quick preset)"
        )
    return lines


#: the attack settings a plan names: (attack, key, word)
_SETTINGS = (("hallucination", "max_iter", "iterations"), ("seg-pgd", "max_iter", "iterations"),
             ("art-pgd", "steps", "steps"), ("dgde", "max_queries", "queries"),
             (INSIDE, "steps", "steps"))  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
