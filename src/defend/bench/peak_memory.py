"""``defend bench memory``: the peak host memory of each command at fastMRI's real size,
against a budget (default 8 GiB, the target of a 2-core CPU machine).

It writes a real-size fastMRI-layout set (:func:`defend.data.fastmri_files.write_real_size_set`,
:data:`ANATOMIES`: knee 15 coils, 640 x 368 and 640 x 372 k-space; brain 16 coils, 640 x 320
and a narrower 640 x 288, as FLAIR's; 320 x 320 targets) and runs each command in a
process of its own, with its defaults but for the sample counts (memory does not grow with
them: every pass is sized by :mod:`defend.memory`):

* ``train recon`` (1 epoch), ``attack hallucination`` (2 samples, one of each width),
  ``certify`` (1 sample, with the fewest Monte Carlo samples center smoothing accepts: 4
  candidates, n 420 at alpha 0.49; each noisy copy at real size costs a U-Net pass, ~0.3 s
  on 2 cores, so the default n 2000 takes half an hour a sample), ``train detector`` (4
  slices of attacked data), ``matrix`` (one recon cell, 2 samples, ``data.path`` the set).

The peak is the process's maximum resident set size (``os.wait4``'s ``ru_maxrss``): what the
machine had to hold, libraries and data included. ``quick`` cuts the attacks to 2 iterations and the
detector to 1 epoch (a first look).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defend.data.fastmri_files import write_real_size_set
from defend.errors import DefendError
from defend.io import write_json, write_text

#: the real-size sets: coils and k-space widths (640 rows), two volumes of mixed widths
ANATOMIES = {"knee": {"coils": 15, "widths": (368, 372)},
             "brain": {"coils": 16, "widths": (320, 288)}}  # fmt: skip
#: how a step's process starts: the CLI of the running interpreter
_MAIN = "from defend.cli import main; main()"


def _matrix_config(data: Path, quick: bool) -> str:
    """The matrix of one recon cell on ``data`` (TOML)."""
    iterations = "\n[attack.hallucination]\nmax_iter = 2\n" if quick else ""
    return (f'[run]\ntasks = ["recon"]\nn = 2\nadaptive = false\n\n[data]\npath = "{data}"\n\n'
            '[recon]\nepochs = 1\ndefences = ["none"]\nattacks = ["hallucination"]\n'
            f"eps = [0.1]\n{iterations}")  # fmt: skip


def steps(data: Path, out: Path, quick: bool) -> dict[str, list[str]]:
    """The ``defend`` arguments of each measured step (module doc)."""
    model = out / "unet.pt"
    write_text(out / "matrix.toml", _matrix_config(data, quick))
    attack = ["--max-iter", "2"] if quick else []
    certify = ["--n0", "4", "--n", "420", "--alpha", "0.49"]  # the fewest center smoothing takes
    detector = ["--max-iter", "2", "--epochs", "1"] if quick else []
    return {
        "train recon": ["train", "recon", "--data", data, "--out", model, "--epochs", "1"],
        "attack hallucination": ["attack", "hallucination", "--checkpoint", model, "--data",
                                 data, "--n", "2", "--out", out / "attack", *attack],
        "certify": ["certify", "--checkpoint", model, "--data", data, "--sigma", "0.25",
                    "--n-samples", "1", "--out", out / "certify", *certify],
        "train detector": ["train", "detector", "--checkpoint", model, "--data", data,
                           "--slices", "4", "--out", out / "detector", *detector],
        "matrix": ["matrix", out / "matrix.toml", "--out", out / "matrix", "--cache",
                   out / "cache"],
    }  # fmt: skip


def peak_of(argv: list[Any], log_file: Path) -> tuple[int, float, int]:
    """Run ``defend ARGV`` in a process of its own (output to ``log_file``): ``(exit code,
    seconds, peak resident bytes)``."""
    start = time.perf_counter()
    with open(log_file, "w") as log:
        child = subprocess.Popen([sys.executable, "-c", _MAIN, *map(str, argv), "--no-progress"],
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024


def run_memory_bench(out: Path, budget_gib: float = 8.0, quick: bool = False,
                     log: Callable[[str], None] = print,
                     anatomy: str = "knee") -> list[dict[str, Any]]:  # fmt: skip
    """Measure each step (module doc) on the ``anatomy`` set (:data:`ANATOMIES`) under
    ``out``; rows ``{step, code, seconds, peak_gib, budget_gib, ratio}`` (also
    ``out/memory.json``). A step that fails is reported with its exit code and log file, and
    the later steps that need its model still run (and fail)."""
    if anatomy not in ANATOMIES:
        raise DefendError(f"--anatomy must be {' or '.join(ANATOMIES)}, got {anatomy!r}")
    out = Path(out)
    data = write_real_size_set(out / "data", **ANATOMIES[anatomy])
    rows = []
    for name, argv in steps(data, out, quick).items():
        log_file = out / f"{name.replace(' ', '-')}.log"
        code, seconds, peak = peak_of(argv, log_file)
        rows.append({"step": name, "code": code, "seconds": round(seconds, 1),
                     "peak_gib": round(peak / 2**30, 2), "budget_gib": budget_gib,
                     "ratio": round(peak / 2**30 / budget_gib, 3)})  # fmt: skip
        log(format_row(rows[-1]) + ("" if code == 0 else f"  (failed: see {log_file})"))
    write_json(out / "memory.json", {"quick": quick, "anatomy": anatomy, **ANATOMIES[anatomy],
                                     "rows": rows})  # fmt: skip
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One line of the table: step, time, peak and its share of the budget."""
    return (f"{row['step']:<22} {row['seconds']:>7.1f} s  peak {row['peak_gib']:>5.2f} GiB  "
            f"= {row['ratio']:.2f} x the {row['budget_gib']:g} GiB budget")  # fmt: skip
