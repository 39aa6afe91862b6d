"""The same CPU numbers on every x86-64 machine: oneDNN, MKL and ATen pinned to AVX2 kernels.

PyTorch picks its CPU kernels by the widest vectors the processor has. AVX-512 kernels add
in another order than AVX2 ones, so the same seed rounds differently, and over a training
run the differences grow into another model. Measured on an AVX-512 AMD EPYC: a 16-epoch
U-Net on the built-in data reaches validation SSIM 0.8730 with its own kernels and 0.8715
with AVX2 ones, the value docs/hardening.md recorded on another machine, to every digit;
108 of the 275 numbers of ``defend matrix smoke`` change. :func:`pin_cpu_kernels` caps the
three kernel libraries at AVX2, which every x86-64 CPU of the last decade has. The cost
there: the quick matrix took 9 min 23 s against 8 min 29 s, 3-epoch trainings 0.9-1.25x.

``import defend`` calls it, before torch computes anything, and child processes (torchrun,
Ray workers) inherit the setting. It only sets variables the user has not set, and
``DEFEND_CPU_KERNELS=native`` turns it off. A notebook that ran torch on the CPU before
importing ``defend`` keeps the kernels it started with: :func:`cpu_kernels` says which.
GPU kernels are not affected.
"""

from __future__ import annotations

import os
import platform

#: The variables that cap each library's instruction set, and the AVX2 value of each.
PINNED = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: convolutions, pooling, batch norm
    "MKL_CBWR": "AVX2",  # MKL: matrix products and FFTs, reproducible mode
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen: element-wise and reduction kernels
}


def _has_avx2() -> bool:
    """Whether this machine's CPU has AVX2 (read from ``/proc/cpuinfo``; False elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and " avx2" in line for line in info)
    except OSError:
        return False


def pin_cpu_kernels() -> bool:
    """Cap oneDNN, MKL and ATen at AVX2 kernels, unless ``DEFEND_CPU_KERNELS=native``.

    Only unset variables are set, and only on x86-64 CPUs with AVX2. Returns whether the
    pin applies (it takes effect only if torch has not yet run a CPU kernel).
    """
    if os.environ.get("DEFEND_CPU_KERNELS", "").lower() == "native" or not _has_avx2():
        return False
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)
    return True


def cpu_kernels() -> str:
    """The CPU kernels torch runs, as benchmarks print them: ``avx2 (pinned)``, ``avx512``..."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().lower()
    pinned = all(os.environ.get(name, "").lower() == v.lower() for name, v in PINNED.items())
    return f"{capability} (pinned)" if pinned and capability == "avx2" else capability
