"""The GPU path's figures: throughput and peak memory at fastMRI's sizes, on one device.

``defend bench device [OUT]`` (:func:`run_device_figures`) writes a fastMRI-layout slice set
at real size (:func:`~defend.data.fastmri_files.write_real_size_set`: 15 coils, 640 x 368
k-space, 320 x 320 targets) and times, on the run's device (CUDA when present), randomly
initialised models of the ``paper`` preset's sizes (their weights do not change their speed):

* ``varnet forward``: :class:`~defend.models.ReconVarNet` (12 cascades) on single slices,
  no gradients: **slices/s**;
* ``hallucination attack``: :class:`~defend.attacks.HallucinationAttack` on that VarNet,
  ``max_iter`` iterations (``patience=0``, so every iteration runs) on one slice:
  **iterations/s**;
* ``certify``: center smoothing (:class:`~defend.smooth.core.CenterSmoothing`) of the paper
  U-Net (32 channels, 4 pools) on one slice with ``n0`` + ``n`` noisy copies: **noisy copies/s**,
  and the seconds one certified sample takes at the paper preset's ``recon_n`` (2000) and
  ``n0`` (100) at that rate.

Each figure's row carries the **peak memory** of its step: on CUDA the device's
(``torch.cuda.max_memory_allocated``, reset before each step), on the CPU the process's peak
resident set so far (``ru_maxrss``; it only grows). The forward and the attack are medians
over ``repeats`` after one warm-up, certify one timed run (its copies already number
hundreds); all synchronised on CUDA. ``quick`` shrinks everything (2 coils, 320 x 320 k-space,
2 cascades, 2 iterations, 8 copies) to check the path on a CPU in seconds; its figures are
not the GPU figures.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

from defend.attacks import HallucinationAttack
from defend.attacks.torch_attack import torch_forward
from defend.bench.certify_speed import counted_base
from defend.bench.timing import median, timed
from defend.data.arrays import load_dataset
from defend.data.fastmri_files import write_real_size_set
from defend.device import pick_device
from defend.estimators.recon import ReconEstimator
from defend.models import ReconUnet, ReconVarNet
from defend.smooth import smoothed

#: the ``paper`` preset's recon models and Monte Carlo counts (a test keeps them equal)
PAPER_VARNET = {"num_cascades": 12, "sens_chans": 8, "sens_pools": 4, "chans": 18, "pools": 4}
PAPER_UNET = {"chans": 32, "num_pool_layers": 4}
PAPER_SMOOTHING = {"n0": 100, "recon_n": 2000}
#: the sizes of the quick check (not the GPU figures)
QUICK = {"coils": 2, "height": 320, "widths": (320,), "cascades": 2, "chans": 8, "iterations": 2,
         "copies": 8, "delta": 0.45, "alpha": 0.45}  # fmt: skip
#: the sizes of the figures (``delta``, ``alpha``: the certify's, loose enough that its
#: ``copies`` can pass the centre's test: the throughput is what is measured)
FULL = {"coils": 15, "height": 640, "widths": (368,), "iterations": 20, "copies": 200,
        "delta": 0.2, "alpha": 0.1}  # fmt: skip


def _peak(device: torch.device) -> float:
    """GiB: the device's peak since the last reset (CUDA), else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _models(quick: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The paper preset's VarNet and U-Net (random weights; quick: small ones)."""
    varnet, unet = dict(PAPER_VARNET), dict(PAPER_UNET)
    if quick:
        varnet.update(num_cascades=QUICK["cascades"], chans=QUICK["chans"], sens_chans=4)
        unet.update(chans=QUICK["chans"], num_pool_layers=2)
    torch.manual_seed(0)
    return ReconVarNet(**varnet).eval(), ReconUnet(**unet).eval()


def _estimator(model: torch.nn.Module, sample: dict[str, Any], device: torch.device) -> Any:
    shape = tuple(sample["input"].shape)
    return ReconEstimator(model.to(device), sample["mask"], shape, device=device)


def run_device_figures(out: Path, quick: bool = False, repeats: int = 3,
                       device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The figures of the module doc, measured now. Returns ``{"device", "rows": [{"step",
    "rate", "unit", "seconds", "peak_gib", ...}]}``."""
    dev = pick_device(device)
    sizes = QUICK if quick else FULL
    data = write_real_size_set(Path(out) / "data", coils=sizes["coils"], widths=sizes["widths"],
                               slices=1, height=sizes["height"])  # fmt: skip
    dataset = load_dataset("recon", data, "test")
    sample = dataset[0]
    x = sample["input"][None].numpy()
    varnet, unet = _models(quick)
    rows = [_forward_row(_estimator(varnet, sample, dev), x, repeats, dev),
            _attack_row(_estimator(varnet, sample, dev), x, sizes["iterations"], repeats, dev),
            _certify_row(_estimator(unet, sample, dev), x, sizes, dev)]  # fmt: skip
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": name, "input_shape": list(sample["input"].shape), "quick": quick,
            "rows": rows}  # fmt: skip


def _forward_row(estimator: Any, x: Any, repeats: int, device: torch.device) -> dict[str, Any]:
    xt, model_forward = torch.as_tensor(x, device=device), torch_forward(estimator)

    def forward() -> None:
        with torch.no_grad():
            model_forward(xt)

    _reset(device)
    forward()  # warm-up
    seconds = median([timed(forward, device)[0] for _ in range(repeats)])
    return {"step": "varnet forward", "rate": 1 / seconds, "unit": "slices/s",
            "seconds": seconds, "peak_gib": _peak(device)}  # fmt: skip


def _attack_row(estimator: Any, x: Any, iterations: int, repeats: int,
                device: torch.device) -> dict[str, Any]:  # fmt: skip
    attack = HallucinationAttack(estimator, max_iter=iterations, patience=0, batch_size=1)
    _reset(device)
    attack.generate(x)  # warm-up
    seconds = median([timed(lambda: attack.generate(x), device)[0] for _ in range(repeats)])
    return {"step": "hallucination attack", "rate": iterations / seconds,
            "unit": "iterations/s", "seconds": seconds, "iterations": iterations,
            "peak_gib": _peak(device)}  # fmt: skip


def _certify_row(estimator: Any, x: Any, sizes: dict[str, Any],
                 device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Center smoothing at sigma 0.25 of the sample's k-space unit (the RMS of its sampled
    entries); the noisy copies through the model are counted, not derived."""
    sampled = torch.as_tensor(x)[torch.as_tensor(x) != 0]
    unit = float(sampled.pow(2).mean().sqrt())
    smooth = smoothed(estimator, 0.25, unit=unit, delta=sizes["delta"])
    n0, n = sizes["copies"] // 4, sizes["copies"] - sizes["copies"] // 4
    _reset(device)
    with counted_base(smooth) as counted:
        seconds, _ = timed(lambda: smooth.certify(x[0], n0, n, sizes["alpha"]), device)
    rate = counted[0] / seconds
    per_sample = (PAPER_SMOOTHING["n0"] + 3 * PAPER_SMOOTHING["recon_n"] + 1) / rate
    return {"step": "certify", "rate": rate, "unit": "noisy copies/s", "seconds": seconds,
            "copies": counted[0], "paper_sample_seconds": per_sample,
            "peak_gib": _peak(device)}  # fmt: skip


def format_figures(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [f"device: {result['device']}, k-space {result['input_shape']}"
             + (" (quick: not the GPU figures)" if result["quick"] else ""),
             "", "| step | rate | seconds | peak memory |", "|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        extra = ""
        if "paper_sample_seconds" in row:
            extra = f" ({row['paper_sample_seconds']:.0f} s a sample at n0 100, n 2000)"
        lines.append(f"| {row['step']} | {row['rate']:.3g} {row['unit']}{extra} | "
                     f"{row['seconds']:.3g} | {row['peak_gib']:.2f} GiB |")  # fmt: skip
    return "\n".join(lines)
