"""DGDE: decrease-group differential evolution, a few-pixel black-box attack.

"Attacking medical images with minimal noise: exploiting vulnerabilities in medical
deep-learning systems". Only the classifier's predicted probabilities are used, and every
solution is a subset of the previous one, so the pixel count never grows:

1. **Random noise.** Noise of rising strength until the label flips (the seed's Table 1
   reports how often this alone succeeds). ``"salt_pepper"`` (default) sets a rising
   fraction of the pixels to the range's ends, in square blocks whose size changes from
   try to try (a block can look like a lesion); each try of a level also has its own share
   of bright pixels, from all dark to all bright. ``"uniform"`` is the seed's: uniform
   noise on every pixel. Of the tries that flip the label the one with the lowest
   true-class probability is kept; its support S is the set of pixels it changed.
2. **Decrease group DE.** A population of ``population`` individuals encodes subsets of S
   (gene in [0, 1] per pixel; a pixel is kept when its gene > 0.5); the initial individuals
   keep S whole or a share of it from 1/2 to almost all. Mutation
   ``v = g_a + F (g_b - g_c)``, binomial crossover with rate ``CR``, and greedy selection
   on a fitness with a pixel-count term (adversarial: its pixel count; not: ``P + 1 +``
   true-class probability). Whenever the best individual is an adversarial subset smaller
   than S, S shrinks to it. Stops after ``patience`` generations without shrinking.
3. **Group pruning** (``prune``): S is split at random into groups, and removing each of up
   to ``prune_groups`` groups is tried in one batch; of the removals that keep the label
   flipped, ranked by true-class probability, the largest union of the first 2, 4, 8, ...
   or all of them that still keeps it flipped (else the first) is applied. Without success
   the group size halves, down to single pixels; a single pixel whose removal undoes the
   flip is kept, and tried again only if pixels went after it was tried. Ends at a support
   from which no single pixel can be removed.

A pixel is a spatial location (all its channels). Each image's candidates are scored in one
batched forward pass, and the images of a batch share that pass. ``queries`` counts every
image sent to the classifier.

**Draws keyed by the sample.** Every random draw comes from the image's own generator
(:class:`~defend.attacks.torch_attack.SampleRNG`), seeded from ``(seed, the image's key)``,
the key a hash of the image itself (:func:`~defend.attacks.sample_keys.sample_keys`): two
different images never share draws, and an image gets the same draws at any position of any
batch, in any shard, whatever ``indices`` the caller passes (they are accepted and not used).
:mod:`defend.attacks.sample_keys` says why (a detector's training and evaluation images never
share their noise).

Images the classifier gets wrong when clean are left unchanged and reported apart
(``clean_correct`` 0, ``success`` NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator

from defend.attacks.declared import DGDE as DGDE_PARAMS
from defend.attacks.sample_keys import sample_keys
from defend.attacks.torch_attack import (
    Array,
    Attacked,
    SampleRNG,
    TorchAttack,
    clip_range,
    torch_forward,
)
from defend.errors import DefendError


@dataclass
class _State:
    """One batch's attack state: B images of C channels and P = H x W pixels."""

    x: torch.Tensor  # (B, C, H, W) clean images
    labels: torch.Tensor  # (B,) the labels to move away from
    delta: torch.Tensor  # (B, C, H, W) the noise found (zero where none)
    support: torch.Tensor  # (B, P) bool: perturbed pixels
    found: torch.Tensor  # (B,) bool: an adversarial support exists
    queries: torch.Tensor  # (B,) images sent to the classifier

    @property
    def pixels(self) -> int:
        return self.x.shape[-2] * self.x.shape[-1]

    def true_prob(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Probability of each row's label: probs (R, ..., K) -> (R, ...)."""
        idx = self.labels[rows].view(-1, *[1] * (probs.ndim - 1))
        return probs.gather(-1, idx.expand(*probs.shape[:-1], 1)).squeeze(-1)


class DGDE(TorchAttack):
    """Black-box few-pixel attack on any ART classifier (e.g. a ``PyTorchClassifier``).

    Args:
        estimator: an ART classifier; only its predicted probabilities are used.

    ``noise_max`` and ``noise_min`` are fractions of the pixels (``salt_pepper``: pixels set
    to the range's ends) or of the clip range (``uniform``: the seed's uniform noise on every
    pixel); ``noise_blocks`` draws salt and pepper in square blocks of these sizes, one size
    per try in turn: larger blocks look like (or hide) a lesion with fewer draws.

    The defaults aim at few pixels within about 400 queries per image (docs/reproduction.md
    has the measured figures). The seed's DE alone is about ``noise="uniform", prune=False,
    population=20, max_iter=1000, patience=200, max_queries=20_000``.
    """

    PARAMS = DGDE_PARAMS
    _estimator_requirements = (BaseEstimator, ClassifierMixin)

    def __init__(self, estimator: Any, **params: Any) -> None:
        if isinstance(params.get("noise_blocks"), list | tuple):
            params["noise_blocks"] = tuple(params["noise_blocks"])
        super().__init__(estimator, **params)

    def _check_params(self) -> None:
        super()._check_params()
        if self.noise_min > self.noise_max:
            raise DefendError(
                f"noise_min must be in (0, noise_max={self.noise_max}], got {self.noise_min}"
            )

    def generate(
        self, x: Array, y: Array | None = None, *, seed: int | None = None,
        indices: Sequence[int] | np.ndarray | None = None, **kwargs: Any,
    ) -> Array:  # fmt: skip
        """:meth:`TorchAttack.generate <defend.attacks.torch_attack.TorchAttack.generate>` with each
        image's generator seeded from ``(seed, sample_keys(x))``: keyed by the image, not by
        ``indices`` (checked for length only), so the draws follow the sample (module doc)."""
        given = None if indices is None else len(np.asarray(indices).reshape(-1))
        if given is not None and given != len(x):
            raise DefendError(f"x has {len(x)} samples but indices has {given}")
        return super().generate(x, y, seed=seed, indices=sample_keys(x), **kwargs)

    # ------------------------------------------------------------------ black box
    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes) of images x (N, C, H, W): the attack's only signal.

        Computed on the device without a host copy where the classifier's torch model gives
        exactly ART's prediction (:func:`defend.attacks.torch_attack.torch_forward`), else through
        ART's numpy ``predict``.
        """
        forward = torch_forward(self.estimator)
        if forward is not None:
            out = forward(x)
        else:
            out = torch.as_tensor(self.estimator.predict(x.cpu().numpy()), device=x.device)
        out = out.float()
        # per row, so that an image's probabilities never depend on its batch
        is_probability = (out >= 0).all(1) & ((out.sum(1) - 1).abs() <= 1e-3)
        return torch.where(is_probability[:, None], out, torch.softmax(out, dim=1))

    @torch.no_grad()
    def _query(
        self,
        st: _State,
        rows: torch.Tensor,
        keep: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score candidate supports of the images ``rows`` (R,) in one forward pass.

        Args:
            keep: (R, K, P) bool, the pixels of each candidate that keep their noise.
            valid: (R, K) bool, the candidates to send (default all); the others are
                neither sent nor counted, and come back not fooled.

        Returns:
            ``(fooled, p_true)``, each (R, K); ``p_true`` is inf where not sent.
        """
        r, k, _ = keep.shape
        if valid is None:
            valid = torch.ones((r, k), dtype=torch.bool, device=keep.device)
        ri, ki = valid.nonzero(as_tuple=True)
        fooled = torch.zeros((r, k), dtype=torch.bool, device=keep.device)
        p_true = torch.full((r, k), float("inf"), device=keep.device)
        if len(ri):
            img = rows[ri]
            mask = keep[ri, ki].view(len(ri), 1, *st.x.shape[-2:])
            probs = self.probabilities(st.x[img] + st.delta[img] * mask)
            fooled[ri, ki] = probs.argmax(1) != st.labels[img]
            p_true[ri, ki] = st.true_prob(probs, img)
        st.queries[rows] += valid.sum(1).to(st.queries.dtype)
        return fooled, p_true

    # ------------------------------------------------------------------ 1. noise
    def _noise(
        self,
        x: torch.Tensor,
        level: float,
        lo: float,
        hi: float,
        rng: SampleRNG,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """``noise_tries`` perturbations per image x (R, C, H, W): (R, tries, C, H, W).

        Inside [lo, hi]. Salt and pepper: a ``level`` share of the pixels, in square blocks
        of ``noise_blocks[j % len(noise_blocks)]`` pixels a side for try ``j``, set to ``lo``
        or ``hi``; try ``j`` makes a share ``j / (tries - 1)`` of them ``hi`` (1/2 if one try).
        """
        _, c, h, w = x.shape
        t = self.noise_tries
        x = x[:, None]
        if self.noise == "uniform":
            noise = rng.rand((t, c, h, w), rows) * 2 - 1
            return (x + noise * level * (hi - lo)).clamp(lo, hi) - x
        hits = []
        for j in range(t):
            s = self.noise_blocks[j % len(self.noise_blocks)]
            hit = rng.rand((1, 1, -(-h // s), -(-w // s)), rows) < level
            hits.append(hit.repeat_interleave(s, -2).repeat_interleave(s, -1)[..., :h, :w])
        bright = torch.linspace(0, 1, t, device=x.device) if t > 1 else x.new_full((1,), 0.5)
        salt = rng.rand((t, c, h, w), rows) < bright.view(1, t, 1, 1, 1)
        extreme = torch.where(salt, hi, lo).to(x.dtype)
        return torch.where(torch.cat(hits, 1), extreme - x, torch.zeros_like(extreme))

    def _noise_phase(self, st: _State, done: torch.Tensor, rng: SampleRNG, lo: float, hi: float):
        """Noise of rising strength until each image (B,) not ``done`` is misclassified.

        Sets ``st.delta``, ``st.found`` and ``st.support``; returns the strength that
        worked per image (B,), NaN where none did.
        """
        b = len(st.x)
        level_found = torch.full((b,), float("nan"), device=st.x.device)
        t = self.noise_tries
        levels = np.geomspace(self.noise_min, self.noise_max, self.noise_levels)
        for level in levels:
            rows = (~done & (st.queries + t <= self.max_queries)).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            candidate = self._noise(st.x[rows], float(level), lo, hi, rng, rows)
            probs = self.probabilities((st.x[rows, None] + candidate).flatten(0, 1))
            probs = probs.view(len(rows), t, -1)
            st.queries[rows] += t
            fooled = probs.argmax(-1) != st.labels[rows, None]
            score = torch.where(fooled, st.true_prob(probs, rows), 2.0)
            pick = score.argmin(1)
            hit = fooled.any(1)
            st.delta[rows[hit]] = candidate[hit, pick[hit]]
            level_found[rows[hit]] = float(level)
            st.found[rows[hit]] = True
            done[rows[hit]] = True
        st.support = (st.delta != 0).any(1).flatten(1) & st.found[:, None]
        return level_found

    # ------------------------------------------------------------------ 2. decrease group DE
    def _fitness(self, st: _State, rows: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """Fitness (R, NP) of genes (R, NP, P): pixel count if adversarial, else P + 1 + p_true."""
        keep = (genes > 0.5) & st.support[rows, None]
        fooled, p_true = self._query(st, rows, keep)
        return torch.where(fooled, keep.sum(-1).float(), st.pixels + 1 + p_true)

    def _de_init(
        self, st: _State, rng: SampleRNG, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial genes (R, NP, P) and fitness (R, NP) of the images ``rows``.

        Individual 0 keeps all of S (adversarial: fitness |S|, no query); individual ``j``
        keeps each pixel with probability from 1/2 (j = 1) to almost 1 (the last).
        """
        n, p = self.population, st.pixels
        share = torch.linspace(0.5, 1 - 0.5 / n, n - 1, device=st.x.device)
        genes = (rng.rand((n - 1, p), rows) + share.view(1, -1, 1) - 0.5).clamp(0, 1)
        genes = torch.cat([torch.ones_like(genes[:, :1]), genes], 1)
        fitness = torch.empty(genes.shape[:2], device=st.x.device)
        fitness[:, 0] = st.support[rows].sum(1).float()
        if len(rows):
            fitness[:, 1:] = self._fitness(st, rows, genes[:, 1:])
        return genes, fitness

    def _de_children(self, genes: torch.Tensor, rng: SampleRNG, rows: torch.Tensor):
        """DE/rand/1/bin children (R, NP, P) of genes (R, NP, P)."""
        r, n, p = genes.shape
        order = rng.rand((n, n), rows)
        order[:, torch.arange(n), torch.arange(n)] = 2.0  # never pick yourself
        a, b, c = order.argsort(-1)[..., :3].unbind(-1)
        ga, gb, gc = (genes.gather(1, i[..., None].expand(-1, -1, p)) for i in (a, b, c))
        mutant = (ga + self.F * (gb - gc)).clamp(0, 1)
        cross = rng.rand((n, p), rows) < self.CR
        cross.scatter_(-1, rng.randint(p, (n, 1), rows), True)
        return torch.where(cross, mutant, genes)

    def _de_phase(self, st: _State, rng: SampleRNG) -> torch.Tensor:
        """Decrease group DE on every image with a support; returns generations run (B,)."""
        b, n = len(st.x), self.population
        generations = torch.zeros(b, device=st.x.device)
        if self.max_iter == 0:
            return generations
        start = (st.found & (st.queries + 2 * n <= self.max_queries)).nonzero().squeeze(1)
        genes = torch.zeros((b, n, st.pixels), device=st.x.device)
        fitness = torch.full((b, n), float("inf"), device=st.x.device)
        genes[start], fitness[start] = self._de_init(st, rng, start)
        stale = torch.zeros(b, dtype=torch.long, device=st.x.device)
        stale[~torch.isfinite(fitness[:, 0])] = self.patience
        for _ in self.iterations():
            size = st.support.sum(1)
            active = (stale < self.patience) & (st.queries + n <= self.max_queries) & (size > 1)
            rows = active.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            generations[rows] += 1
            child = self._de_children(genes[rows], rng, rows)
            child_fitness = self._fitness(st, rows, child)
            better = child_fitness <= fitness[rows]
            genes[rows] = torch.where(better[..., None], child, genes[rows])
            fitness[rows] = torch.where(better, child_fitness, fitness[rows])
            best, best_i = fitness[rows].min(1)
            shrink = best < size[rows]
            stale[rows] = torch.where(shrink, 0, stale[rows] + 1)
            srows, si = rows[shrink], best_i[shrink]
            st.support[srows] &= genes[srows, si] > 0.5
            # the others' subsets of the new S are unscored: any child replaces them
            fitness[srows] = float("inf")
            fitness[srows, si] = best[shrink]
        return generations

    # ------------------------------------------------------------------ 3. group pruning
    def _partition(
        self, free: torch.Tensor, size: torch.Tensor, rng: SampleRNG, rows: torch.Tensor
    ) -> torch.Tensor:
        """Random groups of ``size`` (R,) pixels among the ``free`` (R, P) ones.

        Returns (R, P) group ids: 0, 1, ... for free pixels (the last group may be smaller),
        -1 for the others.
        """
        key = rng.rand((free.shape[1],), rows).masked_fill(~free, 2.0)
        rank = key.argsort(1).argsort(1)
        return torch.where(free, torch.div(rank, size[:, None], rounding_mode="floor"), -1)

    def _prune_round(
        self, st: _State, rows: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Try removing each of the first ``prune_groups`` groups (R, P) from S, then unions.

        Applies the largest removal that keeps each image adversarial. Returns (R,) whether
        any group could go, and (R, K) which groups were tried and could not.
        """
        k = self.prune_groups
        ids = torch.arange(k, device=group.device)
        support = st.support[rows]
        tried = (group[:, None, :] == ids[None, :, None]).any(-1)  # (R, K): group non-empty
        keep = support[:, None] & (group[:, None, :] != ids[None, :, None])
        fooled, p_true = self._query(st, rows, keep, tried)
        ok = fooled.sum(1)
        # the union of the ``j + 1`` removals that kept the flip with the lowest p_true
        order = torch.where(fooled, p_true, float("inf")).argsort(1)
        rank = order.argsort(1)  # (R, K) place of each group in that order
        tested = (group >= 0) & (group < k)
        pixel_rank = torch.where(tested, rank.gather(1, group.clamp(0, k - 1)), k)
        unions = support[:, None] & (pixel_rank[:, None, :] > ids[None, :, None])  # (R, K, P)
        # unions of 2, 4, 8, ... and all of them
        length = ids[None, :] + 1
        more = ((length & ids[None, :]) == 0) | (length == ok[:, None])
        more &= (ids[None, :] >= 1) & (length <= ok[:, None])
        union_fooled, _ = self._query(st, rows, unions, more)
        union_fooled[:, 0] = ok > 0  # the best single removal, already scored
        last = torch.where(union_fooled, ids, -1).max(1).values
        removed = pixel_rank <= last[:, None]
        st.support[rows] = support & ~removed
        return ok > 0, tried & ~fooled

    def _prune_phase(self, st: _State, rng: SampleRNG) -> torch.Tensor:
        """Group pruning of every image's support; returns pruning rounds run (B,).

        Ends for an image when each of its pixels, tried alone against its final support,
        undoes the flip (or when its budget is spent).
        """
        b, k = len(st.x), self.prune_groups
        rounds = torch.zeros(b, device=st.x.device)
        if not self.prune:
            return rounds
        needed = torch.zeros_like(st.support)  # single pixels whose removal undid the flip
        pinned = torch.zeros(st.support.shape, device=st.x.device)  # in which round
        cut = torch.zeros(b, device=st.x.device)  # the last round that removed pixels
        size = torch.div(st.support.sum(1) + k - 1, k, rounding_mode="floor").clamp(min=1)
        while True:
            # pixels pinned before a later removal are tried again against the smaller S
            stale = (~(st.support & ~needed).any(1))[:, None] & (pinned <= cut[:, None])
            needed &= ~stale
            free = st.support & ~needed
            budget = st.queries + 2 * k - 1 <= self.max_queries
            rows = (st.found & budget & free.any(1)).nonzero().squeeze(1)
            if len(rows) == 0:
                return rounds
            rounds[rows] += 1
            group = self._partition(free[rows], size[rows], rng, rows)
            progress, failed = self._prune_round(st, rows, group)
            ids = torch.arange(k, device=group.device)
            lost = (group[:, None, :] == ids[None, :, None]) & failed[..., None]
            lost = lost.any(1) & (size[rows] == 1)[:, None]
            needed[rows] |= lost
            pinned[rows] = torch.where(lost, rounds[rows, None], pinned[rows])
            cut[rows] = torch.where(progress, rounds[rows], cut[rows])
            size[rows] = torch.where(progress, size[rows], (size[rows] // 2).clamp(min=1))

    # ------------------------------------------------------------------ attack
    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        """Attack images x (B, C, H, W) with labels y (B,) or one-hot (B, K) (default: the
        model's predictions): ``(x_adv (B, C, H, W), per-image report)``."""
        if x.ndim != 4:
            raise DefendError(f"expected images (N, C, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        lo, hi = clip_range(self.estimator, default=(0.0, 1.0))
        clean = self.probabilities(x)
        labels = clean.argmax(1) if y is None else (y.argmax(1) if y.ndim == 2 else y).long()
        correct = clean.argmax(1) == labels  # the others are left alone, reported apart
        st = _State(
            x=x,
            labels=labels,
            delta=torch.zeros_like(x),
            support=torch.zeros((b, h * w), dtype=torch.bool, device=x.device),
            found=torch.zeros(b, dtype=torch.bool, device=x.device),
            queries=torch.ones(b, device=x.device),
        )
        noise_level = self._noise_phase(st, ~correct, rng, lo, hi)
        noise_success, noise_queries = st.found.clone(), st.queries.clone()
        initial = st.support.sum(1).float()
        generations = self._de_phase(st, rng)
        after_de, de_queries = st.support.sum(1).float(), st.queries - noise_queries
        rounds = self._prune_phase(st, rng)
        keep = st.support.view(b, 1, h, w)
        x_adv = torch.where(st.found.view(-1, 1, 1, 1), (x + st.delta * keep).clamp(lo, hi), x)
        final = self.probabilities(x_adv)
        st.queries += 1
        report = self._report(st, correct, final.argmax(1) != labels)
        all_rows = torch.arange(b, device=x.device)
        report.update(
            noise_success=torch.where(correct, noise_success.float(), math.nan),
            noise_level=noise_level,
            pixels_initial=torch.where(st.found, initial, math.nan),
            pixels_de=torch.where(st.found, after_de, math.nan),
            p_true_clean=st.true_prob(clean, all_rows),
            p_true=st.true_prob(final, all_rows),
            iterations=generations,
            prune_rounds=rounds,
            queries_noise=noise_queries,
            queries_de=de_queries,
        )
        return x_adv, report

    @staticmethod
    def _report(
        st: _State, correct: torch.Tensor, success: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Success and pixel counts (B,), defined only for images classified right clean."""
        count = torch.where(success & correct, st.support.sum(1).float(), math.nan)
        return {
            "success": torch.where(correct, success.float(), math.nan),
            "clean_correct": correct.float(),
            "pixels": count,
            "pixels_pct": 100 * count / st.pixels,
            "queries": st.queries,
            "label": st.labels.float(),
        }
