"""DGDE: decrease-group differential evolution, a few-pixel black-box attack (seed 002).

"Attacking medical images with minimal noise: exploiting vulnerabilities in medical
deep-learning systems". Only the classifier's predicted probabilities are used:

1. **Random noise.** Uniform noise of rising magnitude over the whole image until the label
   flips (the seed's Table 1 reports how often this alone succeeds). Its support S is every
   pixel.
2. **Decrease group DE.** A population of ``population`` individuals encodes subsets of S
   (gene in [0, 1] per pixel; a pixel is kept when its gene > 0.5). Mutation
   ``v = g_a + F (g_b - g_c)``, binomial crossover with rate ``CR``, and greedy selection: a
   child replaces its parent only if it is still misclassified with fewer perturbed pixels
   (or, while neither is, has a lower true-class probability). Whenever the best individual
   is an adversarial subset smaller than S, S shrinks to it: every solution is a subset of
   the previous one, so the pixel count never grows.

A pixel is a spatial location (all its channels). Each image's whole population is scored in
one batched forward pass, and the images of a batch share that pass. ``queries`` counts
images sent to the classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator

from defend.attacks.base import SampleRNG, TorchAttack, clip_range, torch_forward
from defend.errors import DefendError


class DGDE(TorchAttack):
    """Black-box few-pixel attack on any ART classifier (e.g. a ``PyTorchClassifier``).

    Args:
        estimator: an ART classifier; only its predicted probabilities are used.
        noise_max: largest uniform-noise magnitude tried, as a fraction of the clip range.
        noise_levels: magnitudes tried, evenly spaced up to ``noise_max``.
        noise_tries: noise draws per magnitude (scored in one batch).
        population: DE population size per image.
        F: mutation scale factor.
        CR: crossover probability.
        max_iter: DE generations at most.
        patience: stop an image after this many generations without a smaller solution.
        max_queries: query budget per image (noise phase included).
        noise: ``"uniform"`` (the seed: uniform noise on every pixel, magnitude rising to
            ``noise_max`` of the range) or ``"salt_pepper"`` (pixels set to the range's ends,
            density rising to ``noise_max``): fewer, stronger pixels to start DE from.
    """

    attack_params = TorchAttack.attack_params + [
        "noise_max",
        "noise_levels",
        "noise_tries",
        "population",
        "F",
        "CR",
        "max_iter",
        "patience",
        "max_queries",
        "noise",
    ]
    _estimator_requirements = (BaseEstimator, ClassifierMixin)

    def __init__(
        self,
        estimator: Any,
        noise_max: float = 1.0,
        noise_levels: int = 20,
        noise_tries: int = 8,
        population: int = 20,
        F: float = 0.5,  # noqa: N803 - the DE literature's name
        CR: float = 0.7,  # noqa: N803
        max_iter: int = 1000,
        patience: int = 200,
        max_queries: int = 20_000,
        noise: str = "salt_pepper",
        batch_size: int = 8,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.noise_max = noise_max
        self.noise_levels = noise_levels
        self.noise_tries = noise_tries
        self.population = population
        self.F = F
        self.CR = CR
        self.max_iter = max_iter
        self.patience = patience
        self.max_queries = max_queries
        self.noise = noise
        super().__init__(estimator, batch_size=batch_size, seed=seed, verbose=verbose)
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        if not 0 < self.noise_max <= 1:
            raise DefendError(f"noise_max must be in (0, 1], got {self.noise_max}")
        for name in ("noise_levels", "noise_tries", "max_iter", "patience"):
            if getattr(self, name) < 1:
                raise DefendError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise not in ("uniform", "salt_pepper"):
            raise DefendError(f"noise must be uniform or salt_pepper, got '{self.noise}'")
        if self.population < 4:
            raise DefendError(f"population must be >= 4 (DE mutation), got {self.population}")
        if not 0 < self.F <= 2:
            raise DefendError(f"F must be in (0, 2], got {self.F}")
        if not 0 <= self.CR <= 1:
            raise DefendError(f"CR must be in [0, 1], got {self.CR}")
        if self.max_queries < 1:
            raise DefendError(
                f"max_queries must be >= 1 (the query budget), got {self.max_queries}"
            )

    # ------------------------------------------------------------------ black box
    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes) of images x (N, C, H, W): the attack's only signal.

        Computed on the device without a host copy where the classifier's torch model gives
        exactly ART's prediction (:func:`defend.attacks.base.torch_forward`), else through
        ART's numpy ``predict``.
        """
        forward = torch_forward(self.estimator)
        if forward is not None:
            out = forward(x)
        else:
            out = torch.as_tensor(self.estimator.predict(x.cpu().numpy()), device=x.device)
        out = out.float()
        sums = out.sum(1)
        if bool((out >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            return out
        return torch.softmax(out, dim=1)

    def _noise(
        self,
        x: torch.Tensor,
        tries: int,
        level: float,
        lo: float,
        hi: float,
        rng: SampleRNG,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """``tries`` noise perturbations per image (N, tries, C, H, W), inside [lo, hi]."""
        n, c, h, w = x.shape
        x = x[:, None]
        if self.noise == "uniform":
            noise = rng.rand((tries, c, h, w), rows) * 2 - 1
            return (x + noise * level * (hi - lo)).clamp(lo, hi) - x
        hit = rng.rand((tries, 1, h, w), rows) < level
        salt = rng.rand((tries, c, h, w), rows) < 0.5
        extreme = torch.where(salt, hi, lo).to(x.dtype)
        return torch.where(hit, extreme - x, torch.zeros_like(extreme))

    # ------------------------------------------------------------------ attack
    def _generate_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        rng: SampleRNG,
        rows: torch.Tensor,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if x.ndim != 4:
            raise DefendError(f"expected images (N, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        device = x.device
        lo, hi = clip_range(self.estimator, default=(0.0, 1.0))
        clean = self.probabilities(x)
        queries = torch.ones(b, device=device)
        if y is None:
            labels = clean.argmax(1)
        else:
            labels = (y.argmax(1) if y.ndim == 2 else y).long()
        # only images the model gets right can be attacked; the others are reported apart
        correct = clean.argmax(1) == labels

        def true_prob(probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return probs.gather(
                -1, labels[rows].view(-1, *[1] * (probs.ndim - 1)).expand(*probs.shape[:-1], 1)
            ).squeeze(-1)

        # 1. random noise of rising magnitude until the label flips
        delta = torch.zeros_like(x)
        found = torch.zeros(b, dtype=torch.bool, device=device)
        done = ~correct  # found, or never to be attacked
        noise_level = torch.full((b,), float("nan"), device=device)
        t = self.noise_tries
        for level in np.linspace(
            self.noise_max / self.noise_levels, self.noise_max, self.noise_levels
        ):
            rows = (~done & (queries + t <= self.max_queries)).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            candidate = self._noise(x[rows], t, float(level), lo, hi, rng, rows)
            probs = self.probabilities((x[rows, None] + candidate).flatten(0, 1)).view(
                len(rows), t, -1
            )
            queries[rows] += t
            fooled = probs.argmax(-1) != labels[rows, None]
            score = torch.where(
                fooled, true_prob(probs, rows), torch.full_like(fooled, 2.0, dtype=probs.dtype)
            )
            pick = score.argmin(1)
            hit = fooled.any(1)
            delta[rows[hit]] = candidate[hit, pick[hit]]
            noise_level[rows[hit]] = float(level)
            found[rows[hit]] = True
            done[rows[hit]] = True
        noise_success = found.clone()

        # 2. decrease-group differential evolution over subsets of the support
        pixels = h * w
        support = (delta != 0).any(1).flatten(1) & found[:, None]  # (B, P)
        initial_pixels = support.sum(1).float()
        genes = rng.rand((self.population, pixels))

        def score(rows: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            """Fitness (len(rows), NP): pixel count if adversarial, else P + 1 + p_true."""
            keep = (g > 0.5) & support[rows, None]
            adv = x[rows, None] + delta[rows, None] * keep.view(len(rows), -1, 1, h, w)
            probs = self.probabilities(adv.flatten(0, 1)).view(len(rows), g.shape[1], -1)
            queries[rows] += g.shape[1]
            fooled = probs.argmax(-1) != labels[rows, None]
            return torch.where(fooled, keep.sum(-1).float(), pixels + 1 + true_prob(probs, rows))

        fitness = torch.full((b, self.population), float("inf"), device=device)
        rows = found.nonzero().squeeze(1)
        if len(rows):
            fitness[rows] = score(rows, genes[rows])
        stale = torch.zeros(b, dtype=torch.long, device=device)
        iterations = torch.zeros(b, device=device)
        n = self.population
        for _ in range(self.max_iter):
            active = (
                found
                & (queries + 2 * n <= self.max_queries)
                & (stale < self.patience)
                & (support.sum(1) > 1)
            )
            rows = active.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            iterations[rows] += 1
            g = genes[rows]
            # three distinct partners per individual: random permutations of the others
            order = rng.rand((n, n), rows)
            order[:, torch.arange(n), torch.arange(n)] = 2.0  # never pick yourself
            a, bb, cc = order.argsort(-1)[..., :3].unbind(-1)
            ga, gb, gc = (g.gather(1, i[..., None].expand(-1, -1, pixels)) for i in (a, bb, cc))
            mutant = (ga + self.F * (gb - gc)).clamp(0, 1)
            cross = rng.rand((n, pixels), rows) < self.CR
            forced = rng.randint(pixels, (n, 1), rows)
            cross.scatter_(-1, forced, True)
            child = torch.where(cross, mutant, g)
            child_fitness = score(rows, child)
            better = child_fitness <= fitness[rows]
            genes[rows] = torch.where(better[..., None], child, g)
            fitness[rows] = torch.where(better, child_fitness, fitness[rows])
            best, best_i = fitness[rows].min(1)
            shrink = best < support[rows].sum(1)
            stale[rows] = torch.where(shrink, 0, stale[rows] + 1)
            if bool(shrink.any()):
                srows = rows[shrink]
                winner = genes[srows, best_i[shrink]] > 0.5
                support[srows] &= winner
                fitness[srows] = score(srows, genes[srows])

        keep = support.view(b, 1, h, w)
        x_adv = torch.where(found.view(-1, 1, 1, 1), (x + delta * keep).clamp(lo, hi), x)
        final = self.probabilities(x_adv)
        queries += 1
        success = final.argmax(1) != labels
        nan = torch.full_like(queries, float("nan"))
        count = torch.where(success & correct, support.sum(1).float(), nan)
        return x_adv, {
            "success": torch.where(correct, success.float(), nan),
            "clean_correct": correct.float(),
            "noise_success": torch.where(correct, noise_success.float(), nan),
            "noise_level": noise_level,
            "pixels": count,
            "pixels_pct": 100 * count / pixels,
            "pixels_initial": initial_pixels,
            "p_true_clean": true_prob(clean, torch.arange(b, device=device)),
            "p_true": true_prob(final, torch.arange(b, device=device)),
            "queries": queries,
            "iterations": iterations,
            "label": labels.float(),
        }
