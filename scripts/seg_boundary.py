"""Where segmentation attacks change pixels: on the lesions' boundary, or inside them.

    python scripts/seg_boundary.py RUN_DIR seg-standard seg-trades-eps0.1 --eps 0.008 0.1

For each checkpoint ``RUN_DIR/NAME.pt`` (as ``scripts/harden.py`` leaves them) and eps, PGD-10
of ``defend attack seg-fgsm`` on the first 16 test samples of ``RUN_DIR/data``: how many pixels
the attack flips, how many of those lie within one pixel of the true lesion boundary, and the
pixels wrong before and after (all images together).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

import defend
from defend.attacks.apply import attack_arrays


def boundary(masks: np.ndarray) -> np.ndarray:
    """(N, K, H, W) bool: pixels within one pixel of a mask's edge, inside or outside."""
    out = np.zeros_like(masks, dtype=bool)
    for index in np.ndindex(masks.shape[:2]):
        m = masks[index].astype(bool)
        out[index] = binary_dilation(m) & ~binary_erosion(m)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("names", nargs="+")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.008, 0.1])
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    x, y = defend.load_arrays(args.run / "data", "seg", "test", args.n)
    edge, truth = boundary(y), y.astype(bool)
    print(
        f"{'model':24s} {'eps':>6s} {'flipped':>8s} {'on edge':>8s} {'wrong':>6s} {'wrong adv':>9s}"
    )
    for name in args.names:
        estimator = defend.load_estimator(args.run / f"{name}.pt")
        clean = estimator.predict(x) > 0
        for eps in args.eps:
            x_adv, _ = attack_arrays(estimator, "seg-fgsm", x, y, {"eps": eps, "max_iter": 10})
            adv = estimator.predict(x_adv) > 0
            flipped = clean != adv
            print(
                f"{name:24s} {eps:6g} {flipped.sum():8d} {(flipped & edge).sum():8d} "
                f"{(clean != truth).sum():6d} {(adv != truth).sum():9d}"
            )


if __name__ == "__main__":
    main()
