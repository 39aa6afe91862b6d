"""Training objectives: what one training step minimises, and how a model is validated.

The training loop (:func:`defend.train.loop.fit`) is one loop for every kind of training; an
:class:`Objective` is the seam where they differ. Each batch, the loop calls
``objective.loss(task, model, batch, epoch)`` with the model in training mode and minimises the
mean of the returned per-sample losses; each epoch it adds ``objective.robust_metrics(...)`` to
the validation metrics and keeps the best checkpoint by ``objective.monitor``.

* :class:`Standard`: the task's loss on the batch as given.
* :class:`Adversarial`: adversarial training. A ``perturb(task, model, batch, eps, steps)``
  function (:mod:`defend.train.perturb`) makes adversarial inputs for a fraction ``mix`` of
  each batch with the model in eval mode, at an eps that warms up linearly over the first
  epochs. With ``beta == 0`` the step minimises the task's loss on the mixed batch (Madry et
  al.), in one forward pass: the batch it trains on is the mixture (all adversarial at
  ``mix`` 1), so BatchNorm's statistics are those of that one training distribution, as in
  the mixed batches of Goodfellow et al. 2015 and Kurakin et al. 2017. With ``beta > 0`` it
  minimises the clean loss plus ``beta`` times the task's divergence between the adversarial
  and the clean output (TRADES, Zhang et al. 2019), the clean and the adversarial inputs in
  separate forward passes (:meth:`Adversarial._trades`): the clean output is a reference and
  must not be normalised by adversarial statistics. Robust validation attacks every
  validation batch at the full eps with more steps, in full precision.

Each method of ``defend train --adversarial`` is built from its settings in
:mod:`defend.train.methods`, with :func:`step_fraction` the step size of its attacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from defend.attacks.budget import KspaceBudget
from defend.device import model_mode
from defend.errors import DefendError
from defend.tasks import Batch, Task
from defend.train import perturb
from defend.train.distributed import Share, batch_share, current_share, unwrap

#: ``perturb(task, model, batch, eps, steps) -> inputs`` of the shape of ``batch["input"]``
Perturb = Callable[[Task, nn.Module, Batch, float, int], torch.Tensor]


class Objective:
    """What a training step minimises; the default is the task's own loss (standard training).

    Subclasses override :meth:`loss`, :meth:`config` and, to validate robustly,
    :meth:`robust_metrics` and :meth:`monitor`.
    """

    name = "standard"
    #: whether :meth:`probe` checks robustness on a training batch after each epoch
    guard = False

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """Per-sample training losses ``(B,)`` of one batch (the model in training mode).

        Args:
            task: the task (forward pass and loss).
            model: the model being trained.
            batch: the batch on the model's device (``docs/design.md``).
            epoch: the 0-based epoch (for warm-ups).
        """
        return task.loss(task.forward(model, batch), batch)

    def robust_metrics(
        self, task: Task, model: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """Validation metrics under attack (``robust_*``), the model in eval mode; none here."""
        return {}

    def monitor(self, task: Task) -> tuple[str, bool]:
        """The validation metric that picks the best checkpoint, and whether higher is better."""
        return task.monitor, True

    def floor(self, task: Task) -> tuple[str, float] | None:
        """The clean-quality floor of the best checkpoint: ``(clean metric, margin)`` (the
        metric higher-is-better), or None for none. With a floor, an epoch can be the best
        only while its clean validation metric is within ``margin`` of the highest seen in the
        run so far (:func:`defend.train.guards.above_floor`)."""
        return None

    def probe(self, task: Task, model: nn.Module, batch: Batch) -> tuple[float, float] | None:
        """A robustness check on a training batch after each epoch: ``(robust, clean)`` values
        of the task's monitor on it (None: no check)."""
        return None

    def config(self) -> dict[str, Any]:
        """The settings that identify this objective in a checkpoint's run configuration."""
        return {"name": self.name}


class Standard(Objective):
    """Standard training: the task's loss on the batch as given."""


def _take(batch: Batch, rows: torch.Tensor) -> Batch:
    """The samples ``rows`` (k,) (positions) of a batch (tensors and lists alike)."""
    picks = rows.tolist()

    def take(v: Any) -> Any:
        if torch.is_tensor(v):
            return v[rows.to(v.device)]
        return [v[i] for i in picks] if isinstance(v, list) else v

    return {k: take(v) for k, v in batch.items()}


def _spread(total: int, mix: float) -> torch.Tensor:
    """(total,) bool: row ``i`` of a global batch is attacked iff ``ceil((i + 1) * mix) >
    ceil(i * mix)``: ``ceil(mix * total)`` rows spread evenly, the first always."""
    i = torch.arange(total, dtype=torch.float64)
    return torch.ceil((i + 1) * mix) > torch.ceil(i * mix)


class Adversarial(Objective):
    """Adversarial training on inputs that ``perturb`` makes per batch (see the module doc).

    Args:
        perturb: ``(task, model, batch, eps, steps) -> inputs``, run in eval mode.
        name: the method's name in the run configuration.
        eps: the training budget (the units of ``perturb``).
        steps: attack steps per training batch.
        mix: the fraction of each batch that is attacked (:meth:`attacked`: rows spread
            evenly over the shuffled global batch); the rest trains clean.
        warmup_epochs: eps grows linearly from ``eps / (W + 1)`` to ``eps`` over the first W
            epochs.
        beta: 0 trains on the attacked inputs; > 0 adds ``beta`` times the divergence of the
            adversarial from the clean output to the clean loss (TRADES).
        val_steps: attack steps of robust validation (default ``max(2 * steps, 10)``).
        val_perturb: the attack of robust validation (default ``perturb``).
        guard: check robustness on a training batch after each epoch (:meth:`probe`) and
            stop when it collapses (FGSM-RS's catastrophic overfitting).
        settings: other settings for the run configuration (e.g. the step size).
    """

    def __init__(
        self,
        perturb: Perturb,
        name: str,
        eps: float,
        steps: int,
        mix: float = 1.0,
        warmup_epochs: int = 0,
        beta: float = 0.0,
        val_steps: int | None = None,
        val_perturb: Perturb | None = None,
        guard: bool = False,
        **settings: Any,
    ) -> None:
        if not 0 < eps < math.inf:
            raise DefendError(f"--eps must be a finite number > 0, got {eps}")
        if steps < 1:
            raise DefendError(f"--steps must be >= 1, got {steps}")
        if not 0 < mix <= 1:
            raise DefendError(f"--mix must be in (0, 1] (the attacked fraction), got {mix}")
        if warmup_epochs < 0:
            raise DefendError(f"--warmup-epochs must be >= 0, got {warmup_epochs}")
        if not 0 <= beta < math.inf:
            raise DefendError(f"--beta must be a finite number >= 0, got {beta}")
        self.perturb = perturb
        self.name = name
        self.eps, self.steps, self.mix = eps, steps, mix
        self.warmup_epochs, self.beta = warmup_epochs, beta
        self.val_steps = val_steps or max(2 * steps, 10)
        self.val_perturb = val_perturb or perturb
        self.guard = guard
        self.settings = settings

    def eps_at(self, epoch: int) -> float:
        """The training eps in (0-based) ``epoch``: linear warm-up, then ``eps``."""
        if epoch >= self.warmup_epochs:
            return self.eps
        return self.eps * (epoch + 1) / (self.warmup_epochs + 1)

    def attacked(self, batch: Batch) -> torch.Tensor:
        """Which samples of a batch are attacked, (B,) bool (CPU).

        Chosen by position in the global batch of ``G`` rows
        (:func:`~defend.train.distributed.current_share`; one process: the batch itself):
        row ``i`` iff ``ceil((i + 1) * mix) > ceil(i * mix)``, i.e. ``ceil(mix * G)`` rows
        spread evenly, the first always. So the picks do not depend on how a global batch is
        split between processes.
        """
        share = current_share(len(batch["input"]))
        return share.select(_spread(share.total, self.mix))[0]

    def loss(self, task: Task, model: nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """Per-sample losses ``(B,)``; ``model`` may be a DistributedDataParallel wrapper: the
        attack runs on the module inside (no gradients reduced between processes), the
        training forward through the wrapper (gradients reduced in ``backward``)."""
        share = current_share(len(batch["input"]))
        mask, picked = share.select(_spread(share.total, self.mix))
        clean = batch["input"]
        rows = mask.nonzero()[:, 0].to(clean.device)
        adversarial = self._attack(task, unwrap(model), batch, rows, picked, epoch)
        if self.beta == 0:
            inputs = clean.index_put((rows,), adversarial)
            return task.loss(task.forward(model, {**batch, "input": inputs}), batch)
        return self._trades(task, model, batch, rows, adversarial)

    def _trades(
        self,
        task: Task,
        model: nn.Module,
        batch: Batch,
        rows: torch.Tensor,
        adversarial: torch.Tensor,
    ) -> torch.Tensor:
        """TRADES' per-sample losses ``(B,)``: the clean loss plus ``beta`` times the divergence
        of the adversarial outputs ``(k, ...)`` of ``rows`` (k,) from their clean outputs.

        The clean batch and the adversarial rows go through the model in two training-mode
        forward passes, clean first, as in Zhang et al.'s reference code: BatchNorm normalises
        each with its own batch statistics, so the clean outputs (those of the clean loss and
        the divergence's reference) are what a clean-only forward gives, and the running
        statistics take one update from each pass. (One forward of both concatenated would
        normalise the clean images by statistics of clean and adversarial images together.)

        Under DistributedDataParallel the clean pass goes through the wrapper (one wrapper
        forward per step, as the other objectives) and the adversarial pass through the module
        inside: the gradients of both still reach the parameters' reduction hooks in
        ``backward``. A process holding none of the global batch's attacked rows skips the
        adversarial pass, unless the model has SyncBatchNorm layers, whose training forward is
        a collective: it then forwards an empty batch, which SyncBatchNorm counts as no rows.
        """
        pred_clean = task.forward(model, batch)
        losses = task.loss(pred_clean, batch)
        attacked, net = _take(batch, rows), unwrap(model)
        if not len(rows) and not _synced(net):
            return losses
        pred_adv = task.forward(net, {**attacked, "input": adversarial})
        if not len(rows):
            return losses
        divergence = task.divergence(pred_adv, pred_clean[rows], attacked)
        return losses + self.beta * divergence.new_zeros(len(losses)).index_put((rows,), divergence)

    def _attack(
        self,
        task: Task,
        net: nn.Module,
        batch: Batch,
        rows: torch.Tensor,
        picked: Share,
        epoch: int,
    ) -> torch.Tensor:
        """Adversarial inputs ``(k, ...)`` for the batch's ``rows`` (k,), which hold
        ``picked`` of the global batch's attacked rows, made on ``net`` in eval mode.

        A process that holds none of the attacked rows attacks one of its rows and drops the
        result: every attack draws its random numbers for all the attacked rows of the global
        batch, so its random-number stream stays in step with the other processes'.
        """
        none = not len(rows)
        head = _take(batch, rows.new_zeros(1) if none else rows)
        with batch_share(Share(0, 1, picked.total) if none else picked):
            with model_mode(net, training=False):
                adversarial = self.perturb(task, net, head, self.eps_at(epoch), self.steps)
        return adversarial[:0] if none else adversarial

    def robust_inputs(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A validation batch attacked at the full eps with ``val_steps`` steps."""
        with torch.enable_grad(), model_mode(model, training=False):
            return self.val_perturb(task, model, batch, self.eps, self.val_steps)

    def robust_metrics(
        self, task: Task, model: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """The task's validation metrics on attacked inputs, prefixed ``robust_``."""

        def attacked() -> Iterator[Batch]:
            for batch in batches:
                yield {**batch, "input": self.robust_inputs(task, model, batch)}

        return _robust(task.evaluate(model, attacked()))

    def monitor(self, task: Task) -> tuple[str, bool]:
        return f"robust_{task.monitor}", True

    def probe(self, task: Task, model: nn.Module, batch: Batch) -> tuple[float, float] | None:
        """The monitor on one training batch under the validation attack and clean (None
        without ``guard``): the catastrophic-overfitting check of FGSM-RS (Wong et al.)."""
        if not self.guard:
            return None
        with torch.no_grad():
            robust = self.robust_metrics(task, model, [batch])[f"robust_{task.monitor}"]
            return robust, task.evaluate(model, [batch])[task.monitor]

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "eps": self.eps,
            "steps": self.steps,
            "mix": self.mix,
            "warmup_epochs": self.warmup_epochs,
            "beta": self.beta,
            "val_steps": self.val_steps,
            **self.settings,
        }


def _synced(model: nn.Module) -> bool:
    """Whether ``model`` has SyncBatchNorm layers (a training forward is then a collective)."""
    return any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def _robust(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics of attacked inputs as ``robust_*`` (the zero-filled baseline's are left out)."""
    return {f"robust_{k}": v for k, v in metrics.items() if not k.startswith("zf_")}


#: the default clean floor of hallucination training's best checkpoint, in SSIM: the margin
#: of the hardening target (docs/hardening.md: validation SSIM >= the twin's - 0.03)
CLEAN_FLOOR = 0.03


class Hallucination(Adversarial):
    """Hallucination training: robust validation adds the hallucination strength of
    ``defend attack hallucination``'s default target (a line at the centre, contrast 0.3) at
    the training eps, and the best checkpoint is the one with the lowest strength among the
    epochs whose clean validation SSIM is within ``clean_floor`` of the best seen so far.

    The floor is needed because a model that gives up clean quality (a blurred
    reconstruction) also shows less of any inserted feature: without it, a collapsed epoch
    would be "most robust".

    Args:
        budget: the training budget.
        clean_floor: the floor's margin in SSIM (>= 0; ``inf``: no floor).
        kwargs: as :class:`Adversarial`.
    """

    def __init__(
        self,
        perturb: Perturb,
        budget: KspaceBudget,
        clean_floor: float = CLEAN_FLOOR,
        **kwargs: Any,
    ) -> None:
        if not clean_floor >= 0:
            raise DefendError(f"--clean-floor must be >= 0 (SSIM), got {clean_floor}")
        super().__init__(perturb, clean_floor=clean_floor, **kwargs)
        self.budget = budget
        self.clean_floor = clean_floor

    def floor(self, task: Task) -> tuple[str, float] | None:
        return task.monitor, self.clean_floor

    def robust_metrics(
        self, task: Task, model: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        strengths = []

        def attacked() -> Iterator[Batch]:
            for batch in batches:
                with torch.enable_grad(), model_mode(model, training=False):
                    x = batch["input"]
                    step = step_fraction(None, self.val_steps)
                    attack = perturb.hallucination_attack(
                        model, x, self.budget, self.val_steps, step, seed=len(strengths)
                    )
                    x_adv = attack.generate(x)
                strengths.append(torch.as_tensor(attack.report["strength"]))
                yield {**batch, "input": x_adv}

        metrics = _robust(task.evaluate(model, attacked()))
        return {"robust_strength": float(torch.cat(strengths).mean()), **metrics}

    def monitor(self, task: Task) -> tuple[str, bool]:
        return "robust_strength", False


def step_fraction(step: float | None, steps: int) -> float:
    """Step size as a fraction of eps: given, or 1.25 for one step (FGSM-RS, Wong et al.)
    and ``2.5 / steps`` for PGD (Madry et al.), so the walk can cross the eps-ball."""
    if step is not None:
        if not 0 < step < math.inf:
            raise DefendError(f"--step must be a finite number > 0 (a fraction of eps), got {step}")
        return step
    return 1.25 if steps == 1 else 2.5 / steps
