"""Randomized smoothing of a classifier, a segmenter and a reconstruction model.

Each class wraps a base model ``f`` (optionally behind a denoiser ``D``: denoised smoothing,
Salman et al. 2020) and answers for the smoothed model ``g``, which sees Gaussian noise on its
input: ``g(x)`` is what ``f(D(x + noise))`` gives most often (classification, per pixel for
segmentation) or the centre of what it gives (reconstruction). The guarantees hold for ``g``,
whatever ``f`` and ``D`` are, with probability at least ``1 - alpha`` over the noise:

* :class:`SmoothClassifier` (Cohen et al. 2019): ``certify`` returns a class and an l2 radius
  ``R = sigma * Phi^-1(pA)``; ``g`` predicts that class for every ``x + delta`` with
  ``||delta||_2 < R``. ``pA`` is a one-sided Clopper-Pearson lower bound on the top class's
  probability from ``n`` samples, the class chosen from ``n0`` other samples. ``predict``
  abstains unless a two-sided binomial test tells the top two classes apart at ``alpha``.
* :class:`SmoothSegmenter` (SegCertify, Fischer et al. 2021): per pixel and label, the
  majority vote over ``n`` samples, certified where the vote's probability is above ``tau``
  by a one-sided binomial test, Holm-corrected over all pixels at ``alpha``; a certified
  pixel keeps its label for every ``||delta||_2 < sigma * Phi^-1(tau)``, the others abstain
  (label :data:`SmoothSegmenter.ABSTAIN`).
* :class:`CenterSmoothing` (Kumar & Goldstein 2021): the output is the sample of ``f`` closest
  (in median l2 distance) to the others, accepted if a ball around it holds half the noisy
  outputs; ``certify`` bounds how far that output moves, ``||g(x + delta) - g(x)||_2 <=
  eps_out`` for every ``||delta||_2 <= eps_in * unit``, by 3 times a quantile of the distances
  of fresh samples to it.

The noise distribution is fixed before any input is seen, as the certificates' shift
argument needs (the noisy copies of ``x`` and ``x + delta`` are one Gaussian shifted by
``delta``): images in [0, 1] get std ``sigma`` on every pixel (not clipped, as Cohen et al.),
radii in pixel units; k-space gets std ``noise_std = sigma * unit`` on the real and the
imaginary part of every entry the acquisition samples, ``unit`` an absolute k-space amplitude
measured once on the training split (:class:`KspaceNoise`), and radii ``eps_in`` are l2 norms
over those components in multiples of ``unit``.

Sampling is batched on the model's device in chunks of ``batch_size`` (default: what the
memory budget holds, :mod:`defend.memory`): ``n = 100_000`` never holds ``n`` copies. The
noise comes in blocks of :data:`BLOCK` draws, each from a CPU generator seeded by ``(seed,
phase, block)``, so a result depends on the seed and not on the batch size or the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import binom, binomtest, norm
from torch import nn

from defend.errors import DefendError
from defend.memory import samples_per_pass
from defend.smooth.draw_checkpoint import DrawCheckpoint
from defend.smooth.noise import ImageNoise

#: noise draws per seeded block (a batch is a whole number of blocks)
BLOCK = 16
Forward = Callable[[torch.Tensor], torch.Tensor]


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    interval = binomtest(successes, trials).proportion_ci(1 - 2 * alpha, method="exact")
    return float(interval.low)


def holm(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down test: which hypotheses to reject, familywise error <= alpha.

    Args:
        p_values: (m,) p-values.

    Returns:
        (m,) bool, True where rejected: the k smallest p-values, k the first rank ``i``
        (0-based) at which ``p_(i) > alpha / (m - i)``.
    """
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    passes = p_values[order] <= alpha / (m - np.arange(m))
    k = m if passes.all() else int(np.argmin(passes))
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:k]] = True
    return rejected


def _block_noise(seed: int, phase: int, block: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(BLOCK, *shape) standard normal draws of one block, the same on every machine."""
    state = np.random.SeedSequence([seed, phase, block]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    return torch.randn((BLOCK, *shape), generator=generator)


class Smooth:
    """Noisy copies of one input through the (denoiser and) base model, in seeded chunks.

    Args:
        base: ``f``: a batch of inputs (B, ...) on ``device`` -> outputs (B, ...).
        sigma: the noise level, in the units of ``noise``.
        noise: :class:`ImageNoise` or :class:`KspaceNoise` (their ``scale(x)``).
        denoiser: ``D``, an nn.Module from noisy inputs (B, ...) to inputs, or None.
        device: where the model runs.
    """

    def __init__(
        self,
        base: Forward,
        sigma: float,
        noise: Any,
        denoiser: nn.Module | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0 < sigma < math.inf:
            raise DefendError(f"--sigma must be a finite number > 0, got {sigma}")
        if noise.sigma != sigma:
            raise DefendError(f"the noise's sigma {noise.sigma} is not the smoothing's {sigma}")
        self.base, self.sigma, self.noise = base, sigma, noise
        self.denoiser, self.device = denoiser, torch.device(device)
        #: called with the number of noisy copies each chunk ran (a progress bar's update)
        self.on_draws: Callable[[int], Any] | None = None
        #: where the Monte Carlo state of the sample is saved as it grows (:meth:`reduce`)
        self.checkpoint: DrawCheckpoint | None = None
        #: the input shape this smoothing is built for, and how to build it for another
        #: (reconstruction: fastMRI mixes k-space widths; :func:`defend.smooth.smoothed`)
        self.input_shape: tuple[int, ...] | None = None
        self.reshape: Callable[[tuple[int, ...]], Smooth] | None = None
        self._shapes: dict[tuple[int, ...], Smooth] = {}

    def reshaped(self, input_shape: tuple[int, ...]) -> Smooth:
        """This smoothing for inputs of ``input_shape``: itself where it needs no other
        (images; the shape it was built for), else the same model and noise level over the
        reshaped estimator (its mask of that width), sharing ``on_draws`` and
        ``checkpoint``."""
        input_shape = tuple(int(s) for s in input_shape)
        if self.reshape is None or input_shape == self.input_shape:
            return self
        if input_shape not in self._shapes:
            self._shapes[input_shape] = self.reshape(input_shape)
        other = self._shapes[input_shape]
        other.on_draws, other.checkpoint = self.on_draws, self.checkpoint
        return other

    @property
    def noise_std(self) -> float:
        """The std of each noisy input component (images: pixel values; k-space: raw
        units), fixed before any input is seen."""
        return self.noise.noise_std

    def _input(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """``f(D(noisy))`` of a batch (B, ...) on the device, no gradient tracking needed."""
        inputs = self.denoiser(noisy) if self.denoiser is not None else noisy
        return self.base(inputs)

    def outputs(
        self,
        x: torch.Tensor,
        n: int,
        batch_size: int | None,
        seed: int,
        phase: int,
        first_block: int = 0,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Base outputs of ``n`` noisy copies of the single input ``x`` (...), in chunks of
        about ``batch_size`` (a whole number of :data:`BLOCK` draws; None: as many as the
        memory budget holds, :func:`defend.memory.samples_per_pass`): ``(blocks done, (k,
        ...))`` each, from block ``first_block`` on (the earlier blocks' draws skipped)."""
        x = x.float().cpu()
        if batch_size is None:
            batch_size = samples_per_pass(self.forward, x.to(self.device), self.device, self)
        if n < 1 or batch_size < 1:
            raise DefendError(f"sample counts and --batch-size must be >= 1, got {n}, {batch_size}")
        scale = self.noise.scale(x[None])[0].to(self.device)
        clean = x.to(self.device)
        per_chunk = max(1, batch_size // BLOCK)
        blocks = math.ceil(n / BLOCK)
        with torch.no_grad():
            for first in range(first_block, blocks, per_chunk):
                last = min(first + per_chunk, blocks)
                draws = [_block_noise(seed, phase, b, tuple(x.shape)) for b in range(first, last)]
                eps = torch.cat(draws)
                eps = eps[: n - first * BLOCK].to(self.device)
                out = self.forward(clean + scale * eps)
                if self.on_draws is not None:
                    self.on_draws(len(eps))
                yield last, out

    def reduce(
        self,
        x: torch.Tensor,
        n: int,
        batch_size: int,
        seed: int,
        phase: int,
        fold: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``fold(state, outputs)`` over the chunks of :meth:`outputs` from ``state = None``.

        With a :class:`~defend.smooth.draw_checkpoint.DrawCheckpoint` in ``self.checkpoint``
        the state is saved as it grows and a saved one is continued from its next block: the
        same result as one uninterrupted run."""
        log = self.checkpoint
        first, state = log.resume(phase, n) if log is not None else (0, None)
        if first and self.on_draws is not None:
            self.on_draws(min(n, first * BLOCK))
        blocks = math.ceil(n / BLOCK)
        for done, out in self.outputs(x, n, batch_size, seed, phase, first_block=first):
            state = fold(state, out)
            if log is not None:
                log.save(phase, n, done, state, done=done == blocks)
        return state


def check_alpha(alpha: float) -> None:
    """A one-line error for a failure probability outside (0, 0.5)."""
    if not 0 < alpha < 0.5:
        raise DefendError(f"--alpha must be in (0, 0.5), got {alpha}")


class SmoothClassifier(Smooth):
    """Cohen et al.'s smoothed classifier over a base returning logits (B, classes).

    Args:
        num_classes: the number of classes; the rest as :class:`Smooth`.
    """

    #: what ``predict`` and ``certify`` return when they abstain
    ABSTAIN = -1

    def __init__(self, base: Forward, num_classes: int, sigma: float, **kwargs: Any) -> None:
        super().__init__(base, sigma, ImageNoise(sigma), **kwargs)
        self.num_classes = num_classes

    def counts(self, x: torch.Tensor, n: int, batch_size: int, seed: int, phase: int) -> np.ndarray:
        """(classes,) how often each class wins over ``n`` noisy copies of ``x`` (C, H, W)."""

        def fold(counts: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
            chunk = torch.bincount(logits.argmax(1).cpu(), minlength=self.num_classes)
            return chunk if counts is None else counts + chunk

        return self.reduce(self._input(x), n, batch_size, seed, phase, fold).numpy()

    def predict(
        self, x: Any, n: int, alpha: float, batch_size: int | None = None, seed: int = 0
    ) -> int:
        """The smoothed prediction for one image ``x`` (C, H, W), or :data:`ABSTAIN`; wrong
        (not abstaining on a class other than ``g(x)``) with probability at most ``alpha``."""
        check_alpha(alpha)
        counts = self.counts(x, n, batch_size, seed, phase=2)
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(count1, count1 + count2, 0.5).pvalue > alpha:
            return self.ABSTAIN
        return int(top2[0])

    def certify(
        self, x: Any, n0: int, n: int, alpha: float, batch_size: int | None = None, seed: int = 0
    ) -> tuple[int, float]:
        """``(class, radius)`` for one image ``x`` (C, H, W): ``g`` predicts ``class`` within
        the l2 ``radius`` (pixel units) with probability >= 1 - alpha; ``(ABSTAIN, 0.0)``
        when the lower bound on the class's probability is below one half."""
        check_alpha(alpha)
        top = int(self.counts(x, n0, batch_size, seed, phase=0).argmax())
        count = int(self.counts(x, n, batch_size, seed, phase=1)[top])
        p_lower = lower_confidence_bound(count, n, alpha)
        if p_lower < 0.5:
            return self.ABSTAIN, 0.0
        return top, float(self.sigma * norm.ppf(p_lower))


class SmoothSegmenter(Smooth):
    """SegCertify over a base returning per-pixel logits (B, K, H, W) (a sigmoid per label:
    each (label, pixel) is a two-class vote, foreground where the probability is > 0.5).

    Args:
        the same as :class:`Smooth`, with images in [0, 1].
    """

    #: the label of a pixel the smoothed model abstains on
    ABSTAIN = 255

    def __init__(self, base: Forward, sigma: float, **kwargs: Any) -> None:
        super().__init__(base, sigma, ImageNoise(sigma), **kwargs)

    def votes(self, x: torch.Tensor, n: int, batch_size: int, seed: int, phase: int) -> np.ndarray:
        """(K, H, W) how many of ``n`` noisy copies of ``x`` (C, H, W) vote foreground."""

        def fold(votes: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
            chunk = (logits > 0).sum(0).cpu()
            return chunk if votes is None else votes + chunk

        return self.reduce(self._input(x), n, batch_size, seed, phase, fold).numpy()

    def _decide(self, top: np.ndarray, p_values: np.ndarray, alpha: float) -> np.ndarray:
        """Labels (K, H, W) uint8: ``top`` where Holm rejects at ``alpha``, else ABSTAIN."""
        certified = holm(p_values.ravel(), alpha).reshape(top.shape)
        return np.where(certified, top, self.ABSTAIN).astype(np.uint8)

    def predict(
        self, x: Any, n: int, alpha: float, batch_size: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """Per-pixel smoothed labels (K, H, W) of one image (C, H, W): the majority where a
        two-sided binomial test (Holm-corrected) separates it from one half, else ABSTAIN."""
        check_alpha(alpha)
        votes = self.votes(x, n, batch_size, seed, phase=2)
        top = (2 * votes > n).astype(np.uint8)
        wins = np.maximum(votes, n - votes)
        # two-sided p-value of `wins` of n at 1/2: 2 P(X >= wins), at most 1
        p_values = np.minimum(1.0, 2 * binom.sf(wins - 1, n, 0.5))
        return self._decide(top, p_values, alpha)

    def certify(
        self,
        x: Any,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        seed: int = 0,
        tau: float = 0.75,
    ) -> tuple[np.ndarray, float]:
        """``(labels, radius)`` for one image (C, H, W): labels (K, H, W) uint8, each pixel
        keeping its label within the l2 ``radius = sigma * Phi^-1(tau)`` (pixel units), all
        certified pixels together with probability >= 1 - alpha; the rest ABSTAIN. The label
        is chosen from ``n0`` samples, its probability > ``tau`` tested on ``n`` others."""
        return self.certify_taus(x, n0, n, alpha, batch_size, seed, (tau,))[0]

    def certify_taus(
        self,
        x: Any,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        seed: int = 0,
        taus: tuple[float, ...] = (0.75,),
    ) -> list[tuple[np.ndarray, float]]:
        """:meth:`certify` at each ``tau`` from the same samples (a certificate per tau,
        each at level ``alpha``): larger tau, larger radius, fewer certified pixels."""
        check_alpha(alpha)
        if not all(0.5 <= tau < 1 for tau in taus):
            raise DefendError(f"--tau must be in [0.5, 1), got {taus}")
        selection = self.votes(x, n0, batch_size, seed, phase=0)
        top = (2 * selection > n0).astype(np.uint8)
        votes = self.votes(x, n, batch_size, seed, phase=1)
        wins = np.where(top == 1, votes, n - votes)
        results = []
        for tau in taus:
            p_values = binom.sf(wins - 1, n, tau)  # one-sided: P(X >= wins) at p = tau
            results.append((self._decide(top, p_values, alpha), float(self.sigma * norm.ppf(tau))))
        return results


def _concatenate(outputs: torch.Tensor | None, chunk: torch.Tensor) -> torch.Tensor:
    """``outputs`` (k, ...) followed by ``chunk`` (m, ...), on the CPU."""
    chunk = chunk.cpu()
    return chunk if outputs is None else torch.cat([outputs, chunk])


class CenterSmoothing(Smooth):
    """Center smoothing of a model with image outputs (B, h, w), e.g. a reconstruction.

    Args:
        delta: how far from one half the probability of the centre's ball may be (the paper:
            0.05); the rest as :class:`Smooth`.
    """

    def __init__(
        self, base: Forward, sigma: float, noise: Any, delta: float = 0.05, **kwargs: Any
    ) -> None:
        super().__init__(base, sigma, noise, **kwargs)
        if not 0 < delta < 0.5:
            raise DefendError(f"delta must be in (0, 0.5), got {delta}")
        self.delta = delta

    def check_samples(self, n: int, alpha: float) -> None:
        """A one-line error when ``n`` samples are too few for any centre to pass its test
        at ``alpha`` (``sqrt(ln(2 / alpha) / (2 n)) > delta``)."""
        needed = math.ceil(math.log(2 / alpha) / (2 * self.delta**2))
        if n < needed:
            raise DefendError(
                f"center smoothing needs --n >= {needed} at this --alpha (got {n}): with "
                "fewer samples every centre abstains"
            )

    def _distances(
        self,
        x: torch.Tensor,
        points: torch.Tensor,
        n: int,
        batch_size: int,
        seed: int,
        phase: int,
    ) -> torch.Tensor:
        """(m, n) l2 distances of ``m`` points (m, h, w) to ``n`` noisy outputs of ``x``."""
        flat = points.flatten(1).to(self.device)

        def fold(distances: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
            chunk = torch.cdist(flat, out.flatten(1)).cpu().double()
            return chunk if distances is None else torch.cat([distances, chunk], dim=1)

        return self.reduce(x, n, batch_size, seed, phase, fold)

    def center(
        self, x: Any, n0: int, n: int, alpha: float, batch_size: int | None = None, seed: int = 0
    ) -> torch.Tensor | None:
        """The smoothed output (h, w) of one input, or None (abstain).

        Of ``n0`` noisy outputs (candidates), the centre is the one with the smallest median
        distance ``r`` to ``n`` other noisy outputs: the centre of a ball holding half of them,
        within twice the radius of the smallest such ball. It is kept if, over ``n`` fresh
        samples, the fraction within ``r`` lowered by ``delta_1 = sqrt(ln(2 / alpha) / (2 n))``
        is at least ``1/2 - delta``, and ``delta_1 <= delta`` (the paper's test, level alpha).
        """
        check_alpha(alpha)
        self.check_samples(n, alpha)
        x = self._input(x)
        candidates = self.reduce(x, n0, batch_size, seed, 0, _concatenate)
        medians = self._distances(x, candidates, n, batch_size, seed, phase=1).median(1).values
        best = int(medians.argmin())
        center, radius = candidates[best], float(medians[best])
        distances = self._distances(x, center[None], n, batch_size, seed, phase=2)[0]
        inside = float((distances <= radius).double().mean())
        delta_1 = math.sqrt(math.log(2 / alpha) / (2 * n))
        if 0.5 - (inside - delta_1) > self.delta:
            return None
        return center

    def predict(
        self,
        x: Any,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        seed: int = 0,
        n0: int = 30,
    ) -> torch.Tensor | None:
        """The smoothed output (h, w) of one input, or None: :meth:`center` (``n0``
        candidates)."""
        return self.center(x, n0, n, alpha, batch_size, seed)

    def certify(
        self,
        x: Any,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        seed: int = 0,
        eps_in: float | Sequence[float] = 1.0,
    ) -> tuple[torch.Tensor | None, Any]:
        """``(center, eps_out)``: the smoothed output (h, w) of one input and a bound on
        ``||g(x + delta) - g(x)||_2 / ||f(D(x))||_2`` for every ``||delta||_2 <= eps_in *
        unit``, with probability >= 1 - alpha (half for the centre's test, half for the
        bound); one bound per value for a sequence ``eps_in`` (a list). ``eps_in`` is in
        multiples of the noise's ``unit`` (:class:`KspaceNoise`: ``delta`` moves the real and
        imaginary parts of the sampled entries only, its l2 norm over all of them).

        ``eps_out`` is 3 times the ``q``-quantile of ``n`` fresh distances to the centre (the
        relaxed triangle inequality of the 2-approximate centre), ``q = Phi(Phi^-1(1/2 +
        delta) + eps_in / sigma) + sqrt(ln(2 / alpha) / (2 n))``, over the norm of the
        noise-free output; infinite when ``q >= 1``. ``(None, nan)`` when the centre abstains.
        """
        values = [eps_in] if np.isscalar(eps_in) else list(eps_in)
        if not all(0 <= e < math.inf for e in values):
            raise DefendError(f"--eps-in must be finite numbers >= 0, got {eps_in}")
        x = self._input(x)
        center = self.center(x, n0, n, alpha / 2, batch_size, seed)
        if center is None:
            return None, (math.nan if np.isscalar(eps_in) else [math.nan] * len(values))
        distances = torch.sort(self._distances(x, center[None], n, batch_size, seed, 3)[0]).values
        with torch.no_grad():
            scale = float(self.forward(x.float()[None].to(self.device)).flatten().norm())
        bounds = []
        for e in values:
            q = norm.cdf(norm.ppf(0.5 + self.delta) + e / self.sigma)
            q += math.sqrt(math.log(2 / alpha) / (2 * n))
            rank = math.ceil(q * n)
            bounds.append(math.inf if q >= 1 else 3 * float(distances[rank - 1]) / scale)
        return center, (bounds[0] if np.isscalar(eps_in) else bounds)
