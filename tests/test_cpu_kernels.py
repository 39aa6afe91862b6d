"""CPU kernels pinned to AVX2 by ``import defend``, so that x86-64 machines agree to the digit.

Each check runs in a fresh interpreter: the kernel choice is made once per process, at torch's
first CPU kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from defend.cpu_kernels import PINNED, _has_avx2

pytestmark = pytest.mark.skipif(not _has_avx2(), reason="pinning applies to x86-64 with AVX2")

#: a seeded conv net's loss and weight sum after 3 AdamW steps (convolutions, FFTs, a matrix
#: product, reductions), printed as exact hex floats beside the kernels that ran
PROBE = """
import defend, torch
from defend.cpu_kernels import cpu_kernels
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
    torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
    torch.nn.Linear(16 * 32 * 32, 2),
)
x, y = torch.randn(8, 2, 32, 32), torch.randint(0, 2, (8,))
x = torch.fft.ifft2(torch.fft.fft2(x) * 0.5).real
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
for _ in range(3):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
weights = sum(p.double().sum() for p in net.parameters())
print(cpu_kernels(), loss.item().hex(), weights.item().hex(), sep=";")
"""

#: PROBE's numbers with the pinned kernels, measured on an AVX-512 AMD EPYC with 1, 2, 4 and
#: 8 threads (the same digits each time); its own AVX-512 kernels give 0x1.43817e0000000p-4
#: and 0x1.9d01b18002e00p+3, ATen's scalar ones 0x1.4381720000000p-4 and 0x1.9cf5a83a15c00p+3
RECORDED = ("0x1.43817a0000000p-4", "0x1.9cf37b0cfd200p+3")


def _run(env: dict[str, str]) -> list[str]:
    """PROBE's output, ``[kernels, loss, weights]``, run with ``env`` and no pinning variable
    of this process's own."""
    clean = {k: v for k, v in os.environ.items() if k not in PINNED and k != "DEFEND_CPU_KERNELS"}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().split(";")


def test_import_defend_pins_avx2_and_gives_the_recorded_numbers():
    kernels, *numbers = _run({})
    assert kernels == "avx2 (pinned)"
    assert tuple(numbers) == RECORDED, "this machine's AVX2 kernels round differently"


def test_native_opts_out_and_a_users_setting_is_kept():
    assert "pinned" not in _run({"DEFEND_CPU_KERNELS": "native"})[0]
    assert _run({"ATEN_CPU_CAPABILITY": "default"})[0] == "default"
