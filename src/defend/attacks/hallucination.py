"""Masked iterative FGSM in k-space that makes a reconstruction hallucinate.

Buğday, Saeys & Peck, "Triggering hallucinations in model-based MRI reconstruction via
adversarial perturbations" (arXiv 2602.18536). The attack perturbs the *sampled* k-space so
that the reconstruction shows a feature inside a chosen image region (by default a bright
horizontal line at 30 % of the image's range) while staying equal to the clean
reconstruction elsewhere:

    target  = y0 + alpha * (max y0 - min y0) * region
    loss(y) = w_in * mean_region (y - target)^2 + w_out * mean_outside (y - y0)^2

minimised by signed-gradient steps (l-inf) or per-coil normalised steps (l2), with early
stopping and the best iterate kept per sample. Budgets are absolute (raw k-space units) or
relative to the measured k-space's norm, so that one eps means the same perturbation size on
64 px phantoms and on 640 x 368 fastMRI k-space: l2 per coil, a fraction of the coil's k-space
norm (Morshuis et al.); l-inf, a fraction of the root-mean-square of the entries the attack may
change, so that a perturbation filling the box has l2 norm ``eps`` times the k-space norm.
(A fraction of max |k| does not travel: the k-space peak grows with the image size, and
0.02 max |k| is 28 dB input PSNR at 64 px but 18 dB on fastMRI knee data.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

from defend.attacks.budget import KspaceBudget
from defend.attacks.declared import HALLUCINATION
from defend.attacks.region import as_region, region_mask
from defend.attacks.torch_attack import Attacked, SampleRNG, TorchAttack, torch_forward
from defend.errors import DefendError
from defend.kspace import acquired_columns, zero_filled
from defend.metrics import image_similarity

#: net strength (:meth:`HallucinationAttack.effect` beyond the feature in the attacked
#: measurement) from which a hallucination counts as a success: half the feature added
SUCCESS_STRENGTH = 0.5


def sampled_columns(x: torch.Tensor, estimator: Any) -> torch.Tensor:
    """Which k-space columns were measured: acquired in x and in the estimator's mask.

    A column that is exactly zero over all coils and rows was not acquired (fastMRI's
    padding columns, or columns the data set's mask left out): the attack never touches it.

    Args:
        x: masked k-space (B, coils, H, W, 2).

    Returns:
        bool (B, 1, 1, W, 1).
    """
    sampled = acquired_columns(x)
    mask = getattr(estimator, "mask", None)
    if mask is not None:
        mask = torch.as_tensor(mask, device=x.device)
        mask = mask.reshape(mask.shape[0] if mask.ndim == 5 else 1, 1, 1, x.shape[-2], 1) != 0
        sampled = sampled & mask
    return sampled


class HallucinationAttack(TorchAttack):
    """Make a k-space -> image estimator hallucinate a feature inside a region.

    Args:
        estimator: an ART estimator with loss gradients whose input is masked k-space
            (B, coils, H, W, 2) and output an image (B, h, w): ``defend``'s
            ``ReconEstimator`` (U-Net or VarNet), or any other (its loss is then assumed to be
            a squared error, see :meth:`_score`).

    ``eps_mode="relative"`` is a fraction of each coil's sampled k-space norm (l2) or of the
    root-mean-square of the sample's movable real components (l-inf), i.e. ``eps * ||k|| /
    sqrt(#movable)``, so that either norm's perturbation is at most about ``eps`` times the
    k-space norm; ``"absolute"`` is in raw k-space units. ``region_mask`` (any (h, w) or
    (N, h, w) mask) overrides ``region``. ``alpha`` may be one contrast per sample (N,)
    (hallucination training draws them at random). ``image_metrics`` adds PSNR / SSIM / NRMSE
    of input and reconstruction, the feature's strength in the zero-filled input
    (:meth:`input_strength`), ``net_strength`` (``strength - input_strength``: what the model
    added beyond what the attacked measurement holds) and ``success`` (``net_strength >=
    SUCCESS_STRENGTH``) to the report (per sample, on the CPU; training turns them off).
    """

    PARAMS = HALLUCINATION
    _estimator_requirements = (BaseEstimator, LossGradientsMixin)

    def __init__(self, estimator: Any, **params: Any) -> None:
        if "norm" in params:  # 2 and "2" alike
            params["norm"] = str(params["norm"])
        super().__init__(estimator, **params)

    def _check_params(self) -> None:
        super()._check_params()
        self.budget  # noqa: B018  (checks eps against eps_mode, norm and part)
        alpha = torch.as_tensor(np.asarray(self.alpha, dtype=np.float64))
        if alpha.ndim > 1 or not bool(((alpha != 0) & alpha.isfinite()).all()):
            raise DefendError(
                f"alpha must be finite and non-zero (the contrast to hallucinate), got {self.alpha}"
            )

    def generate(
        self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None = None, **kwargs
    ) -> np.ndarray | torch.Tensor:
        """See :meth:`TorchAttack.generate`; an (N, h, w) ``region_mask`` must hold one mask
        per sample of ``x`` (a shard passes its own masks with its ``indices``)."""
        masks = self.region_mask
        if masks is not None and np.ndim(masks) == 3 and len(masks) not in (1, len(x)):
            raise DefendError(f"{len(masks)} region masks for {len(x)} samples")
        return super().generate(x, y, **kwargs)

    # ------------------------------------------------------------------ model access
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        forward = torch_forward(self.estimator)
        if forward is not None:
            with torch.no_grad():
                return forward(x)
        return torch.as_tensor(self.estimator.predict(x.cpu().numpy()), device=x.device)

    def _score(
        self, x: torch.Tensor, weight: torch.Tensor, goal: torch.Tensor, gradient: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-sample loss ``sum weight * (f(x) - goal)^2``, the prediction f(x), its gradient.

        ``defend`` estimators are differentiated directly (one forward and backward). Any
        other ART estimator is reached through ``predict`` and ``loss_gradient``: for a
        squared-error loss, the gradient towards ``t' = f - weight * (f - goal)`` is
        proportional to the weighted loss's gradient, so the step direction is exact.
        With ``gradient=False`` only the forward pass runs.
        """
        est = self.estimator
        forward = torch_forward(est)
        if forward is not None and gradient:
            x = x.detach().requires_grad_(True)
            pred = forward(x)
            loss = self.attack_loss(pred, goal, weight)
            (grad,) = torch.autograd.grad(loss.sum(), x)
            return loss.detach(), pred.detach(), grad
        pred = self._predict(x)
        loss = self.attack_loss(pred, goal, weight)
        if not gradient:
            return loss, pred, None
        proxy = pred - weight * (pred - goal)
        grad = est.loss_gradient(x.cpu().numpy(), proxy.cpu().numpy())
        return loss, pred, torch.as_tensor(grad, device=x.device)

    @staticmethod
    def attack_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The loss the attack minimises, per sample (B,): ``sum weight * (pred - target)^2``.

        Args:
            pred: (B, h, w) reconstructions; target, weight: (B, h, w) from :meth:`goal`.
        """
        return (weight * (pred - target).square()).flatten(1).sum(1)

    # ------------------------------------------------------------------ budget
    @property
    def budget(self) -> KspaceBudget:
        """The attack's budget (eps, norm, eps_mode, part) as a :class:`KspaceBudget`."""
        return KspaceBudget(self.eps, self.norm, self.eps_mode, self.part)

    def linf_unit(self, x: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """What relative l-inf eps is a fraction of (:meth:`KspaceBudget.unit`), (B, 1, 1, 1, 1)."""
        return self.budget.unit(x, sampled)

    def initial_delta(
        self, movable: torch.Tensor, bound: torch.Tensor, rng: SampleRNG
    ) -> torch.Tensor:
        """The random start: uniform noise of one step per entry (l-inf, as the paper), or a
        random direction of one step's l2 norm per coil (l2); zero outside ``movable``.

        Args:
            movable: (B, coils, H, W, 2) 0/1: the entries the attack may change.
            bound: the absolute budget (:meth:`KspaceBudget.bound`).
            rng: the batch's per-sample generators.

        Returns:
            (B, coils, H, W, 2) perturbation inside the budget.
        """
        budget = self.budget
        draw = rng.rand if self.norm == "inf" else rng.randn
        start = budget.random_start(movable, self.step * bound, draw(movable.shape[1:]))
        return budget.project(start, bound)

    # ------------------------------------------------------------------ attack
    def regions(
        self, shape: tuple[int, int], n: int, device: torch.device, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (n, h, w) bool target regions of ``n`` samples.

        Args:
            shape: (h, w) of the reconstruction.
            n: number of samples.
            device: where the masks go.
            rows: (n,) positions of the samples in the ``x`` given to ``generate``, which
                select per-sample masks of an (N, h, w) ``region_mask``; None: the first n.
        """
        if self.region_mask is not None:
            region = as_region(self.region_mask, shape)
        else:
            region = region_mask(shape, self.region, self.region_size, self.region_center)
        region = region.to(device)
        if region.ndim == 2 or len(region) == 1:
            return region.reshape(1, *shape).expand(n, *shape)
        rows = torch.arange(n) if rows is None else rows.cpu()
        if len(rows) != n or int(rows.max()) >= len(region):
            raise DefendError(f"{len(region)} region masks for {n} samples")
        return region[rows.to(region.device)]

    def alphas(
        self, n: int, device: torch.device, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (n,) target contrasts of ``n`` samples (``rows`` as in :meth:`regions`)."""
        alpha = torch.as_tensor(np.asarray(self.alpha, dtype=np.float32), device=device)
        if alpha.ndim == 0:
            return alpha.expand(n)
        rows = torch.arange(n) if rows is None else rows
        if len(rows) != n or int(rows.max()) >= len(alpha):
            raise DefendError(f"{len(alpha)} contrasts (alpha) for {n} samples")
        return alpha[rows.to(device)]

    def goal(
        self, y0: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the attack aims at, given the clean reconstructions y0 (N, h, w).

        Args:
            y0: (N, h, w) clean reconstructions.
            rows: (N,) the samples' positions in ``generate``'s ``x`` (see :meth:`regions`).

        Returns:
            ``(region, value_range, target, weight)``: the (N, h, w) bool region, the (N,)
            range max - min of each y0, the (N, h, w) target image
            ``y0 + alpha * range * region``, and the (N, h, w) per-pixel loss weights
            (``weight_inside`` spread over the region, ``weight_outside`` over the rest).
        """
        region = self.regions(tuple(y0.shape[-2:]), len(y0), y0.device, rows)
        inside = region.to(y0.dtype)
        value_range = y0.flatten(1).amax(1) - y0.flatten(1).amin(1)
        alpha = self.alphas(len(y0), y0.device, rows)
        target = y0 + (alpha * value_range).view(-1, 1, 1) * inside
        weight = self.weight_inside * inside / inside.flatten(1).sum(1).view(-1, 1, 1) + (
            self.weight_outside
            * (1 - inside)
            / (1 - inside).flatten(1).sum(1).clamp_min(1).view(-1, 1, 1)
        )
        return region, value_range, target, weight

    def _generate_batch(
        self, x: torch.Tensor, y: torch.Tensor | None, rng: SampleRNG, rows: torch.Tensor,
        **kwargs: Any,
    ) -> Attacked:  # fmt: skip
        if x.ndim != 5 or x.shape[-1] != 2:
            raise DefendError(f"expected masked k-space (N, coils, H, W, 2), got {tuple(x.shape)}")
        n = len(x)
        budget = self.budget
        sampled = sampled_columns(x, self.estimator).to(x.dtype)
        movable = budget.movable(sampled).expand_as(x)
        y0 = self._predict(x)
        region, _, target, weight = self.goal(y0, rows)

        bound = budget.bound(x, sampled)
        step = self.step * bound
        delta = torch.zeros_like(x)
        if self.random_start:
            delta = self.initial_delta(movable, bound, rng)
        best_loss = torch.full((n,), float("inf"), device=x.device)
        best_delta, best_pred = delta.clone(), y0.clone()
        since = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)

        def keep_best(loss: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
            nonlocal best_loss, best_delta, best_pred
            improved = loss < best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_delta = torch.where(improved.view(-1, 1, 1, 1, 1), delta, best_delta)
            best_pred = torch.where(improved.view(-1, 1, 1), pred, best_pred)
            return improved

        for _ in self.iterations():
            loss, pred, grad = self._score(x + delta, weight, target)
            improved = keep_best(loss, pred)
            since = torch.where(improved, 0, since + 1)
            if self.patience:
                active &= since < self.patience
            if not bool(active.any()):
                break
            iterations += active
            moved = delta - step * budget.direction(grad * movable) * movable
            delta = torch.where(active.view(-1, 1, 1, 1, 1), budget.project(moved, bound), delta)
        else:  # the last update has not been scored yet: a forward pass, no gradient
            keep_best(*self._score(x + delta, weight, target, gradient=False)[:2])

        x_adv = x + best_delta
        report = self._report(x, x_adv, y0, best_pred, region, rows, sampled)
        report["loss"] = best_loss
        report["iterations"] = iterations.float()
        return x_adv, report

    # ------------------------------------------------------------------ report
    def effect(
        self,
        y0: torch.Tensor,
        y_adv: torch.Tensor,
        region: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """How far a reconstruction moved towards the attack's goal, per sample.

        Args:
            y0: (N, h, w) clean reconstructions.
            y_adv: (N, h, w) reconstructions of the perturbed input (any perturbation).
            region: (N, h, w) bool target regions (:meth:`regions`).
            rows: the samples' positions (per-sample ``alpha``, see :meth:`regions`).

        Returns:
            ``(strength, error_outside)``, each (N,): the mean change inside the region over
            the intended change (``alpha`` x the range of y0; 1 = feature fully inserted), and
            the root-mean-square change outside the region over the range of y0.
        """
        inside = region.to(y0.dtype)
        outside = 1 - inside
        change = y_adv - y0
        value_range = y0.flatten(1).amax(1) - y0.flatten(1).amin(1)
        mean_inside = (change * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
        outside_rms = (
            (change.square() * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)
        ).sqrt()
        alpha = self.alphas(len(y0), y0.device, rows)
        return mean_inside / (alpha * value_range), outside_rms / value_range

    def _report(
        self,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y0: torch.Tensor,
        y_adv: torch.Tensor,
        region: torch.Tensor,
        rows: torch.Tensor,
        sampled: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-sample hallucination strength, collateral error, image metrics, norms."""
        effect = self.effect(y0, y_adv, region, rows)
        report: dict[str, Any] = dict(zip(("strength", "error_outside"), effect, strict=True))
        delta = x_adv - x
        report["linf"] = delta.abs().flatten(1).amax(1)
        report["linf_rel"] = report["linf"] / self.linf_unit(x, sampled).flatten()
        report["l2_rel"] = delta.flatten(1).norm(dim=1) / (x * sampled).flatten(1).norm(dim=1)
        coil_rel = delta.flatten(2).norm(dim=2) / (x * sampled).flatten(2).norm(dim=2).clamp_min(
            1e-30
        )
        report["l2_rel_coil_max"] = coil_rel.amax(1)
        if self.image_metrics:
            crop = tuple(y0.shape[-2:])
            inputs = (zero_filled(x * sampled, crop), zero_filled(x_adv * sampled, crop))
            report["input_strength"] = self.input_strength(y0, *inputs, region, rows)
            report["net_strength"] = report["strength"] - report["input_strength"]
            report["success"] = (report["net_strength"] >= SUCCESS_STRENGTH).float()
            report.update(self._image_metrics(y0, y_adv, *inputs, region))
        return report

    def input_strength(
        self,
        y0: torch.Tensor,
        zf: torch.Tensor,
        zf_adv: torch.Tensor,
        region: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """How much of the feature the perturbation put into the measurement itself, (N,).

        The strength (:meth:`effect`, in the units of the reconstruction's) of the change of
        the zero-filled image, ``zf_adv - zf``, inside the region. A reconstruction faithful
        to its measurement shows about this much of the feature; a strength well above it is
        the model adding what was not measured, one well below it the model removing what was.

        Args:
            y0: (N, h, w) clean reconstructions (their range is the unit of strength).
            zf, zf_adv: (N, h, w) zero-filled images of the clean and perturbed k-space.
            region: (N, h, w) bool regions. rows: as in :meth:`regions`.
        """
        return self.effect(y0, y0 + (zf_adv - zf), region, rows)[0]

    @staticmethod
    def _image_metrics(
        y0: torch.Tensor,
        y_adv: torch.Tensor,
        zf: torch.Tensor,
        zf_adv: torch.Tensor,
        region: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """PSNR / SSIM / NRMSE of reconstruction (y0, y_adv) and zero-filled input (zf,
        zf_adv), each (N, h, w), whole image and region (N, h, w), per sample."""
        images = {"recon": (y0, y_adv), "input": (zf, zf_adv)}
        rows: dict[str, list[float]] = {}
        region_np = region.cpu().numpy()
        for name, (clean, adv) in images.items():
            clean_np, adv_np = clean.float().cpu().numpy(), adv.float().cpu().numpy()
            for i in range(len(y0)):
                for where, mask in (("", None), ("_region", region_np[i])):
                    for metric, value in image_similarity(clean_np[i], adv_np[i], mask).items():
                        rows.setdefault(f"{name}{where}_{metric}", []).append(value)
        return {k: torch.tensor(v) for k, v in rows.items()}
