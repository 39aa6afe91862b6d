"""Attack benchmark: each attack's wall time against a floor of pure model time, and against ART.

Three measurements, all taken in one process, interleaved and as the median of repeats after a
warm-up (:mod:`defend.bench.timing`):

1. **Overhead over the model** (:mod:`defend.bench.floors`): each attack's wall time over the
   model time it cannot avoid (``iterations x`` forward + backward with the attack's own loss
   and target for the gradient attacks; DGDE's query count in its own batch size).
2. **HallucinationAttack vs ART's ProjectedGradientDescent** and
3. **DGDE vs ART's PixelAttack** (:mod:`defend.bench.versus_art`), on the same estimators and
   inputs.

:func:`bench_attacks` runs everything on a ``defend bench models`` folder; :func:`bench_suite` on
estimators and arrays you already hold (:mod:`defend.bench.suite`); :func:`format_bench`
prints the result (:mod:`defend.bench.tables`) and :func:`defend.io.jsonable` makes it strict
JSON.

:func:`bench_train` (``defend bench train``, :mod:`defend.bench.train_speed`) times each
adversarial-training method's epoch over the standard epoch, against the ideal steps + 1;
:func:`format_train_bench` prints it.
"""

from __future__ import annotations

from defend.bench.floors import (
    BENCH_DGDE,
    FLOOR_GOAL,
    hallucination_vs_floor,
    seg_pgd_vs_floor,
)
from defend.bench.suite import bench_attacks, bench_suite
from defend.bench.tables import format_bench, format_train_bench
from defend.bench.timing import count_forward_rows, interleaved, timed
from defend.bench.train_speed import TRAIN_BENCH_TASKS, bench_train
from defend.bench.versus_art import (
    PIXEL_SPEEDUP_GOAL,
    art_pgd_vs_hallucination,
    dgde_vs_floor_and_pixel_attack,
    hallucination_strength,
)
from defend.io import jsonable  # re-exported: the CLI writes the result with it

__all__ = [
    "BENCH_DGDE",
    "FLOOR_GOAL",
    "PIXEL_SPEEDUP_GOAL",
    "TRAIN_BENCH_TASKS",
    "art_pgd_vs_hallucination",
    "bench_attacks",
    "bench_suite",
    "bench_train",
    "count_forward_rows",
    "dgde_vs_floor_and_pixel_attack",
    "format_bench",
    "format_train_bench",
    "hallucination_strength",
    "hallucination_vs_floor",
    "interleaved",
    "jsonable",
    "seg_pgd_vs_floor",
    "timed",
]
