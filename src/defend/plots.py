"""Figures of attacks: what a reader would rather look at than read.

Each function takes numpy arrays and writes one PNG atomically; none touches a model.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from defend.io import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def _grid(rows: int, cols: int, size: float = 2.3) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_hallucination(
    path: Path,
    clean: np.ndarray,
    adv: np.ndarray,
    input_clean: np.ndarray,
    input_adv: np.ndarray,
    region: np.ndarray,
    scores: list[dict[str, float]] | None = None,
) -> Path:
    """Clean and adversarial reconstructions, their difference with the region outlined, and
    the zero-filled input difference.

    Args:
        clean / adv: (N, h, w) reconstructions of the clean and attacked k-space.
        input_clean / input_adv: (N, h, w) zero-filled images of the same k-space.
        region: (N, h, w) or (h, w) target region.
        scores: per-sample report rows (strength, PSNR, SSIM) for the titles.
    """
    n = len(clean)
    region = np.broadcast_to(region, clean.shape)
    fig, axes = _grid(n, 4)
    for i in range(n):
        lo, hi = clean[i].min(), clean[i].max()
        diff = adv[i] - clean[i]
        input_diff = input_adv[i] - input_clean[i]
        axes[i, 0].imshow(clean[i], cmap="gray", vmin=lo, vmax=hi)
        axes[i, 1].imshow(adv[i], cmap="gray", vmin=lo, vmax=hi)
        limit = max(np.abs(diff).max(), 1e-12)
        axes[i, 2].imshow(diff, cmap="seismic", vmin=-limit, vmax=limit)
        axes[i, 2].contour(region[i], levels=[0.5], colors="lime", linewidths=0.8)
        limit = max(np.abs(input_diff).max(), 1e-12)
        axes[i, 3].imshow(input_diff, cmap="seismic", vmin=-limit, vmax=limit)
        if scores:
            s = scores[i]
            axes[i, 1].set_title(
                f"SSIM {s['recon_ssim']:.3f} PSNR {s['recon_psnr']:.1f}", fontsize=7
            )
            axes[i, 2].set_title(f"strength {s['strength']:.2f}", fontsize=7)
            axes[i, 3].set_title(f"input PSNR {s['input_psnr']:.1f} dB", fontsize=7)
    for ax, title in zip(
        axes[0],
        ("clean recon", "adversarial recon", "difference", "zero-filled input diff"),
        strict=True,
    ):
        ax.set_title(title + ("\n" + ax.get_title() if ax.get_title() else ""), fontsize=8)
    return _save(fig, path)


def _overlay(ax: plt.Axes, image: np.ndarray, masks: np.ndarray, color: str) -> None:
    ax.imshow(image.mean(0) if image.ndim == 3 else image, cmap="gray", vmin=0, vmax=1)
    for k in range(masks.shape[0]):
        if masks[k].any():
            ax.contour(masks[k], levels=[0.5], colors=color, linewidths=0.9)


def plot_segmentation(
    path: Path,
    image: np.ndarray,
    image_adv: np.ndarray,
    truth: np.ndarray,
    pred_clean: np.ndarray,
    pred_adv: np.ndarray,
    scores: list[dict[str, float]] | None = None,
) -> Path:
    """Ground truth, clean and adversarial predictions as outlines, and the perturbation.

    Args:
        image / image_adv: (N, C, H, W) in [0, 1].
        truth / pred_clean / pred_adv: (N, K, H, W) binary masks.
    """
    n = len(image)
    fig, axes = _grid(n, 4)
    for i in range(n):
        _overlay(axes[i, 0], image[i], truth[i], "lime")
        _overlay(axes[i, 1], image[i], pred_clean[i], "yellow")
        _overlay(axes[i, 2], image_adv[i], pred_adv[i], "red")
        pert = (image_adv[i] - image[i]).mean(0)
        limit = max(np.abs(pert).max(), 1e-12)
        axes[i, 3].imshow(pert, cmap="seismic", vmin=-limit, vmax=limit)
        if scores:
            axes[i, 1].set_title(f"Dice {scores[i]['dice_clean']:.2f}", fontsize=7)
            axes[i, 2].set_title(f"Dice {scores[i]['dice_adv']:.2f}", fontsize=7)
    for ax, title in zip(
        axes[0],
        ("truth", "clean prediction", "adversarial prediction", "perturbation"),
        strict=True,
    ):
        ax.set_title(title + ("\n" + ax.get_title() if ax.get_title() else ""), fontsize=8)
    return _save(fig, path)


def plot_pixels(
    path: Path,
    image: np.ndarray,
    image_adv: np.ndarray,
    scores: list[dict[str, float]] | None = None,
    classes: list[str] | None = None,
) -> Path:
    """Clean and adversarial images with the perturbed pixels circled.

    Args:
        image / image_adv: (N, C, H, W) in [0, 1].
    """
    n = len(image)
    fig, axes = _grid(n, 2, size=2.8)
    for i in range(n):
        clean, adv = image[i].mean(0), image_adv[i].mean(0)
        axes[i, 0].imshow(clean, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(adv, cmap="gray", vmin=0, vmax=1)
        rows, cols = np.nonzero(np.abs(image_adv[i] - image[i]).max(0) > 0)
        axes[i, 1].scatter(cols, rows, s=40, facecolors="none", edgecolors="red", linewidths=0.8)
        if scores and {"label", "p_true_clean", "p_true"} <= set(scores[i]):  # DGDE's report
            s = scores[i]
            label = classes[int(s["label"])] if classes else int(s["label"])
            axes[i, 0].set_title(f"{label}: p={s['p_true_clean']:.2f}", fontsize=8)
            axes[i, 1].set_title(f"{len(rows)} px, p(true)={s['p_true']:.2f}", fontsize=8)
    return _save(fig, path)


def plot_sweep(
    path: Path,
    x: list[float],
    series: dict[str, list[float]],
    xlabel: str,
    title: str,
    log_x: bool = True,
    ylabel: str | None = None,
) -> Path:
    """Line plot of several metrics over a parameter sweep (or a certificate's curve)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in series.items():
        ax.plot(x, values, marker="o", label=name)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_roc(
    path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, dashed: tuple = ()
) -> Path:
    """ROC curves ``{name: (fpr, tpr)}``; the names in ``dashed`` drawn dashed (e.g. the
    baselines that need a reference)."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, "--" if name in dashed else "-", label=name)
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
