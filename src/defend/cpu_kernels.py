"""Reproducible CPU numbers on x86-64 Linux: oneDNN, MKL and ATen pinned to AVX2 kernels.

PyTorch picks its CPU kernels by the widest vectors the processor has. AVX-512 kernels add
in another order than AVX2 ones, so the same seed rounds differently, and over a training
run the differences grow into another model (README, Quick start: the CPU kernels).
:func:`pin_cpu_kernels` caps the three kernel libraries at AVX2, which most x86-64 CPUs of
the last decade have; its cost in time is measured in docs/matrix.md.

``import defend`` calls it, before torch computes anything; every process that imports
``defend`` (the CLI, torchrun and Ray workers) sets it again, and child processes inherit it.
It only sets variables the user has not set (oneDNN's older ``DNNL_MAX_CPU_ISA`` counts),
and ``DEFEND_CPU_KERNELS=native`` turns it off. It applies on Linux x86-64 CPUs with AVX2;
elsewhere the machine's own kernels run. A notebook that ran torch on the CPU before
importing ``defend`` may keep some of the kernels it started with. Equal numbers need the
same torch release (its oneDNN and MKL) as well, and oneDNN may block its loops by cache
size, which no variable pins: an Intel Xeon and an AMD EPYC, both pinned, give different last
digits (tests/test_cpu_kernels.py records each). Nor does the pin make every training
independent of the thread count: some convolution kernels (those of the ResNet-18 encoders)
reduce gradients in per-thread parts, so their training at 1 and at 2 threads ends in other
last digits (README); the probe of tests/test_cpu_kernels.py does not. GPU kernels are not
affected.
"""

from __future__ import annotations

import os
import platform

#: The variables that cap each library's instruction set, and the AVX2 value of each.
PINNED = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: convolutions, pooling, batch norm
    # MKL: matrix products and FFTs, reproducible mode; STRICT also makes the sums
    # independent of the thread count (without it, 1 and 2 threads round differently on an
    # Intel Xeon)
    "MKL_CBWR": "AVX2,STRICT",
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

    Only unset variables are set, and only on x86-64 Linux CPUs with AVX2. Returns whether
    the pin applies (it takes effect only if torch has not yet run a CPU kernel).
    """
    if os.environ.get("DEFEND_CPU_KERNELS", "").lower() == "native" or not _has_avx2():
        return False
    for name, value in PINNED.items():
        if name == "ONEDNN_MAX_CPU_ISA" and "DNNL_MAX_CPU_ISA" in os.environ:
            continue  # the user capped oneDNN under its older name
        os.environ.setdefault(name, value)
    return True


def cpu_kernels() -> str:
    """The CPU kernels, as benchmarks print them: ATen's capability, then ``(pinned)`` when
    all three libraries are capped at AVX2, else the caps that are set, e.g. ``avx512``,
    ``avx2 (pinned)``, ``avx2 (ONEDNN_MAX_CPU_ISA=AVX512_CORE)``."""
    import torch  # this module is imported before torch (the caps must come first)

    capability = torch.backends.cpu.get_cpu_capability().lower()
    caps = {n: os.environ[n] for n in (*PINNED, "DNNL_MAX_CPU_ISA") if n in os.environ}
    pinned = all(caps.get(n, "").lower() == v.lower() for n, v in PINNED.items())
    if capability == "avx2" and pinned:
        return "avx2 (pinned)"
    caps.pop("ATEN_CPU_CAPABILITY", None)  # the capability itself says it
    named = ", ".join(f"{n}={v}" for n, v in caps.items())
    return f"{capability} ({named})" if named else capability
