"""defend: attack and harden deep networks for medical imaging.

Notebook entry points::

    import defend
    est = defend.load_estimator("runs/bench/recon-unet.pt")      # an ART estimator
    x, y = defend.load_arrays("runs/bench/data", "recon", "val", 8)  # its input format
    smoothed = defend.load_smoothed("runs/bench/cls-resnet18.pt", sigma=0.25)  # certify()
    detector = defend.load_detector("runs/det.pt")        # score(x, recon), heatmap(x, recon)
"""

from __future__ import annotations

from typing import Any

from defend.cpu_kernels import pin_cpu_kernels

pin_cpu_kernels()  # the same CPU numbers on every x86-64 machine (before torch computes)

__version__ = "0.1.0"
__all__ = ["load_arrays", "load_detector", "load_estimator", "load_smoothed"]


def __getattr__(name: str) -> Any:  # lazy: `import defend` stays cheap
    if name == "load_estimator":
        from defend.estimators import load_estimator

        return load_estimator
    if name == "load_smoothed":
        from defend.smooth import load_smoothed

        return load_smoothed
    if name == "load_detector":
        from defend.detect.detector import load_detector

        return load_detector
    if name == "load_arrays":
        from defend.data import load_arrays

        return load_arrays
    raise AttributeError(f"module 'defend' has no attribute '{name}'")
