"""The attack base shared by every ``defend`` attack, and the per-sample randomness it uses.

:class:`TorchAttack` is an ART :class:`~art.attacks.EvasionAttack` that does the
bookkeeping once: numpy <-> torch at the ART boundary only (torch inputs stay on the
estimator's device), batching with an optional progress bar, per-sample randomness, and a
per-sample report (``attack.report``) that the CLI writes as CSV/JSON. A subclass implements
:meth:`TorchAttack._generate_batch` on torch tensors.

**Reproducible whatever the batching.** Every sample draws its random numbers from its own
generator, seeded from ``(seed, sample index)`` (:class:`SampleRNG`), and each sample's
computation depends on no other sample of its batch. So the same seed gives the same
adversarial example for sample ``i`` whatever the batch size, and whether the data set is
attacked in one process or split across many (pass each shard's global ``indices``).
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from tqdm.auto import tqdm

from defend.attacks.params import COMMON, Param, by_name, check_known
from defend.errors import DefendError
from defend.estimators.torch_estimator import model_mode
from defend.memory import MAX_SAMPLES, memory_budget, sample_bytes

Forward = Callable[[torch.Tensor], torch.Tensor]
#: numpy in, numpy out; torch in, torch out
Array = np.ndarray | torch.Tensor
#: what ``_generate_batch`` returns: the attacked batch and its per-sample report
Attacked = tuple[torch.Tensor, dict[str, torch.Tensor]]


def estimator_device(estimator: Any) -> torch.device:
    """The torch device an ART estimator computes on (CPU if it does not say)."""
    device = getattr(estimator, "device", None) or getattr(estimator, "_device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def _identity_preprocessing(estimator: Any) -> bool:
    """Whether ART applies nothing to inputs and outputs (identity standardisation at most)."""
    if getattr(estimator, "postprocessing_defences", None):
        return False
    for op in getattr(estimator, "preprocessing_operations", None) or []:
        mean, std = getattr(op, "mean", None), getattr(op, "std", None)
        if mean is None or std is None:
            return False  # a defence or another preprocessor
        if not (np.all(np.asarray(mean) == 0) and np.all(np.asarray(std) == 1)):
            return False
    return True


def torch_forward(estimator: Any) -> Forward | None:
    """The estimator's prediction as a differentiable torch function, or None if it has none.

    The one place that decides whether an attack may call the model directly (on torch
    tensors on the estimator's device, with autograd) instead of going through ART's numpy
    ``predict`` / ``loss_gradient``:

    * ``defend``'s estimators (:class:`~defend.estimators.TorchEstimator`): their ``forward``.
    * ART's ``PyTorchClassifier`` whose preprocessing is the identity (no defences, mean 0,
      std 1) and without post-processing: its torch ``model`` (run in eval mode, as ART's
      ``predict`` does), returning logits. Exact: ART would compute the same numbers.
    * anything else: None (black box: numpy ``predict`` only).
    """
    model = getattr(estimator, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    if callable(getattr(estimator, "forward", None)):
        return estimator.forward
    from art.estimators.pytorch import PyTorchEstimator  # a sub-package ART loads late

    if not isinstance(estimator, PyTorchEstimator) or not _identity_preprocessing(estimator):
        return None

    def forward(x: torch.Tensor) -> torch.Tensor:
        with model_mode(model, training=False):
            out = model(x)
        return out[-1] if isinstance(out, list | tuple) else out

    return forward


def attack_batch(estimator: Any, x: Array) -> int:
    """Samples of ``x`` (N, ...) one attack pass on ``estimator`` may hold, at most N: what
    the memory budget allows for a pass with gradients (:mod:`defend.memory`; the model's own
    ``sample_bytes`` where it declares one, as EOT's does), or the model's fixed
    ``attack_batch`` (EOT with fresh noise, whose draws follow the batch); N for a black box
    (no torch forward to measure)."""
    forward, model = torch_forward(estimator), getattr(estimator, "model", None)
    if getattr(model, "attack_batch", None):
        return max(1, min(len(x), model.attack_batch))
    if forward is None:
        return len(x)
    first = torch.as_tensor(np.asarray(x[:1], dtype=np.float32) if not torch.is_tensor(x)
                            else x[:1]).to(estimator_device(estimator))[0]  # fmt: skip
    measure = getattr(model, "sample_bytes", None)
    each = measure(first) if measure else sample_bytes(forward, first, owner=model)
    return max(1, min(len(x), MAX_SAMPLES, memory_budget(first.device) // each))


def differentiable(estimator: Any) -> bool:
    """Whether an attack can differentiate the estimator directly (:func:`torch_forward`)."""
    return torch_forward(estimator) is not None


def clip_range(estimator: Any, default: tuple[float, float] | None = None) -> tuple[float, float]:
    """The estimator's valid input range ``(lo, hi)``; ``default`` (or unbounded) if it has none."""
    clip = getattr(estimator, "clip_values", None)
    if clip is None:
        return default or (-float("inf"), float("inf"))
    return float(np.min(clip[0])), float(np.max(clip[1]))


def _doc_lines(params: dict[str, Param]) -> str:
    """The docstring lines of declared parameters: ``name: help (unit; allowed; default)``."""
    lines = []
    for name, p in params.items():
        notes = "; ".join(v for v in (p.unit, p.allowed(), f"default {p.default!r}") if v)
        lines.append(f"        {name}: {p.help} ({notes}).")
    return "\n".join(lines) + "\n"


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``'s generator: a hash of ``(seed, index)`` (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(index)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


class SampleRNG:
    """One torch generator per sample, seeded from ``(seed, sample index)``.

    Draws are made row by row, so a sample's random numbers depend only on its own seed and
    on how many draws *it* has made, not on which other samples share the batch or are still
    active. Every ``rows`` argument selects samples by position in this batch.

    Args:
        seed: the attack's seed.
        indices: the samples' global indices (N,).
        device: where the numbers are drawn.
    """

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device) -> None:
        self.device = torch.device(device)
        self.indices = [int(i) for i in indices]
        self.generators = [
            torch.Generator(device=self.device).manual_seed(sample_seed(seed, i))
            for i in self.indices
        ]

    def __len__(self) -> int:
        return len(self.generators)

    def _rows(self, rows: torch.Tensor | Sequence[int] | None) -> list[int]:
        if rows is None:
            return list(range(len(self.generators)))
        return [int(r) for r in (rows.tolist() if torch.is_tensor(rows) else rows)]

    def _draw(self, draw: Callable[..., torch.Tensor], rows: Any, shape: Sequence[int], **kw):
        picked = self._rows(rows)
        shape = tuple(int(s) for s in shape)
        if not picked:
            return torch.empty((0, *shape), device=self.device, **kw)
        return torch.stack(
            [draw(shape, generator=self.generators[r], device=self.device, **kw) for r in picked]
        )

    def rand(self, shape: Sequence[int], rows: Any = None) -> torch.Tensor:
        """Uniform [0, 1) numbers ``(len(rows), *shape)``."""
        return self._draw(torch.rand, rows, shape)

    def randn(self, shape: Sequence[int], rows: Any = None) -> torch.Tensor:
        """Standard normal numbers ``(len(rows), *shape)``."""
        return self._draw(torch.randn, rows, shape)

    def randint(self, high: int, shape: Sequence[int], rows: Any = None) -> torch.Tensor:
        """Integers in ``[0, high)``, ``(len(rows), *shape)``."""
        return self._draw(lambda s, **kw: torch.randint(0, high, s, **kw), rows, shape)

    def subset(self, rows: slice) -> SampleRNG:
        """The generators of ``rows`` (shared, not copied: draws advance them here too)."""
        sub = SampleRNG.__new__(SampleRNG)
        sub.device, sub.indices, sub.generators = (
            self.device,
            self.indices[rows],
            self.generators[rows],
        )
        return sub


class TorchAttack(EvasionAttack):
    """Base of the toolkit's attacks: batching, devices, per-sample seeding and reports.

    A subclass declares its parameters once, in ``PARAMS`` (:class:`~defend.attacks.params.
    Param`, this class's :data:`~defend.attacks.params.COMMON` first): the constructor takes
    them as keywords, sets each as an attribute (its default where not given) and checks each
    against its declared range; ``attack_params``, the constructor's signature and the
    ``Parameters`` section of the class docstring are derived from it. ``_check_params`` of a
    subclass adds the checks that relate parameters to each other or to the estimator.

    Args:
        estimator: the ART estimator to attack.
        **params: the declared parameters (unknown names are refused in one line).
    """

    PARAMS: ClassVar[tuple[Param, ...]] = COMMON
    attack_params = [p.name for p in COMMON]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = by_name(cls.PARAMS)
        cls.attack_params = list(declared)
        cls.__signature__ = inspect.Signature(
            [inspect.Parameter("estimator", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=p.default)
               for n, p in declared.items()]
        )  # fmt: skip
        if cls.__doc__ and "\n    Parameters:\n" not in cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n\n    Parameters:\n" + _doc_lines(declared)

    def __init__(self, estimator: Any, **params: Any) -> None:
        super().__init__(estimator=estimator)
        declared = by_name(self.PARAMS)
        check_known(declared, params, type(self).__name__)
        for name, param in declared.items():
            setattr(self, name, params.get(name, param.default))
        self.report: dict[str, np.ndarray] = {}
        self._check_params()

    def _check_params(self) -> None:
        for param in by_name(self.PARAMS).values():
            param.check(getattr(self, param.name))

    @property
    def device(self) -> torch.device:
        return estimator_device(self.estimator)

    def iterations(self) -> Iterable[int]:
        """``range(self.max_iter)`` for a batch's attack loop, with a second progress bar
        (when ``verbose``) counting the iterations of the batch in progress: one batch of a
        150-iteration attack at real size takes minutes."""
        return tqdm(range(self.max_iter), desc="iterations, this batch", leave=False,
                    disable=not self.verbose)  # fmt: skip

    def generate(
        self, x: Array, y: Array | None = None, *, seed: int | None = None,
        indices: Sequence[int] | np.ndarray | None = None, **kwargs: Any,
    ) -> Array:  # fmt: skip
        """Adversarial examples for ``x`` (numpy in, numpy out; torch in, torch out).

        Args:
            x: inputs in the estimator's format, e.g. masked k-space (N, coils, H, W, 2).
            y: per-attack targets (ground truth images, masks or labels); see the subclass.
            seed: this call's seed (default: the attack's ``seed``); adversarial training
                passes a fresh one per batch so random starts differ between batches.
            indices: (N,) global indices of the samples, which seed their generators
                (default ``0..N-1``); a shard of a data set passes its own, so that the
                shards together give exactly the result of one run over the whole set.

        After the call, ``self.report`` maps metric names to (N,) arrays, one row a sample.
        """
        as_numpy = not torch.is_tensor(x)
        device = self.device
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if as_numpy else x).to(device)
        yt = None
        if y is not None:
            yt = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).to(device)
            if len(yt) != len(xt):
                raise DefendError(f"x has {len(xt)} samples but y has {len(yt)}")
        if len(xt) == 0:
            raise DefendError("x holds no samples")
        if indices is None:
            indices = range(len(xt))
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if len(indices) != len(xt):
            raise DefendError(f"x has {len(xt)} samples but indices has {len(indices)}")
        rng = SampleRNG(self.seed if seed is None else seed, indices, device)
        outs: list[torch.Tensor] = []
        reports: list[dict[str, torch.Tensor]] = []
        batch = self.batch_size or attack_batch(self.estimator, xt)
        for start in tqdm(range(0, len(xt), batch), desc=type(self).__name__,
                          disable=not self.verbose):  # fmt: skip
            sl = slice(start, start + batch)
            rows = torch.arange(len(xt), device=device)[sl]
            x_adv, report = self._generate_batch(
                xt[sl], None if yt is None else yt[sl], rng.subset(sl), rows, **kwargs
            )
            outs.append(x_adv.detach())
            reports.append({k: torch.as_tensor(v).detach().cpu() for k, v in report.items()})
        self.report = {
            k: torch.cat([r[k].reshape(-1).double() for r in reports]).numpy() for k in reports[0]
        }
        x_adv = torch.cat(outs)
        return x_adv.cpu().numpy() if as_numpy else x_adv

    def report_rows(self) -> list[dict[str, float]]:
        """``self.report`` as one dict per sample (for CSV / JSON)."""
        keys = list(self.report)
        n = len(next(iter(self.report.values()))) if keys else 0
        return [{k: float(self.report[k][i]) for k in keys} for i in range(n)]

    @abc.abstractmethod
    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        """Attack one batch on the estimator's device: ``(x_adv, per-sample report)``.

        ``rng`` holds the batch's per-sample generators; ``rows`` (B,) are the samples'
        positions in the ``x`` given to :meth:`generate` (to pick per-sample options).
        """
