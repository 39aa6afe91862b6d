"""``defend matrix --engine ray``: the cells as Ray tasks, on a local Ray or a cluster.

The design keeps the local engine's results:

1. **Builds first, level by level.** The builds the cells need (data, models, denoisers,
   detectors) are collected and run as Ray tasks in dependency order, one level at a time
   (a level's builds need only earlier levels), so two cells never train the same model at
   once. Each build declares one CPU and, where the driver sees CUDA, :data:`BUILD_GPUS`;
   a model trained under torchrun (``run.train_processes = N``) declares N of each.
2. **Then the cells**, one task each (one CPU, :data:`CELL_GPUS` of a GPU where the driver
   sees CUDA). All builds are done, so a cell only resolves their paths. The driver stamps
   each record with its provenance (:func:`~defend.matrix.run.provenance`) and writes it the
   moment it arrives (``OUT/cells/<id>.json``, atomically), so a killed run
   resumes as the local one does; a task Ray loses (a worker died) becomes a failed record,
   and the other cells go on.

Every cell is seeded by its own settings and each task runs with one torch thread, so a
Ray run gives the same ``matrix.csv`` as the local engine (``seconds`` aside).

On a cluster (``address``) every node must have ``defend`` installed and see the cache and
``OUT`` at the same paths (a shared file system): builds and the cells' row stages and
examples are written by the workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from defend.errors import DefendError
from defend.matrix.builds import Build, Builder, levels
from defend.matrix.cells import Cell, new_record, run_cell
from defend.matrix.provenance import cell_paths, provenance
from defend.matrix.record import CellRecord
from defend.matrix.results import write_cell
from defend.matrix.rows import run_builds

#: the GPUs a build (training) asks for where the driver sees CUDA (else none)
BUILD_GPUS = 1.0
#: the share of a GPU a cell asks for where the driver sees CUDA (else none)
CELL_GPUS = 0.5


def _gpus(share: float) -> float:
    """``share`` where the driver sees CUDA, else 0."""

    return share if torch.cuda.is_available() else 0.0


def _make(cache: Path, device: str | None, build: Build) -> str:
    """A Ray task: make one build (its needs are done)."""

    torch.set_num_threads(1)
    return str(Builder(cache, device, log=lambda _: None).make(build))


def _cell(config: dict[str, Any], cell: Cell, cache: Path, device: str | None,
          out: Path) -> dict[str, Any]:  # fmt: skip
    """A Ray task: one cell's record (its builds are done)."""

    torch.set_num_threads(1)
    paths, data = cell_paths(config, cell, Builder(cache, device, log=lambda _: None))
    return run_cell(config, cell, paths, out, data)


def run_ray(
    config: dict[str, Any],
    todo: list[Cell],
    builder: Builder,
    out: Path,
    address: str | None,
    progress: bool,
    log: Callable[[str], None],
    *,
    num_cpus: int | None = None,
) -> None:
    """Run ``todo`` on Ray (module doc): on the cluster at ``address``, or on a local Ray
    started for the run (``num_cpus``: its CPUs, default all) and shut down after it; a Ray
    already initialised is used as it is (and left running). Nothing to run starts nothing."""
    try:
        import ray  # an optional extra (pip install .[ray])
    except ImportError:
        raise DefendError("--engine ray needs Ray: pip install 'defend[ray]'") from None
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **options)
    try:
        _builds(ray, config, todo, builder, log)
        _cells(ray, config, todo, builder, out, progress)
    finally:
        if started:
            ray.shutdown()


def _builds(ray: Any, config: dict[str, Any], todo: list[Cell], builder: Builder,
            log: Callable[[str], None]) -> None:  # fmt: skip
    wanted = run_builds(config, [c.row for c in todo])
    make = ray.remote(num_cpus=1, num_gpus=_gpus(BUILD_GPUS))(_make)
    most = max(b.settings.get("processes", 1) for b in wanted)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if most > cpus:  # Ray would wait for them forever
        raise DefendError(f"run.train_processes = {most} needs {most} CPUs a build; "
                          f"the Ray cluster has {cpus:g}")  # fmt: skip
    for level in levels(wanted):
        missing = [b for b in level if not builder.done(b)]
        for build in missing:
            log(f"== building {build.key} on Ray")
        ray.get([_needs(make, b).remote(builder.cache, builder.device, b) for b in missing])


def _needs(make: Any, build: Build) -> Any:
    """The build's task with its resources: a model trained under torchrun
    (``run.train_processes``) asks for a CPU and, on CUDA, a GPU per process."""
    processes = build.settings.get("processes", 1)
    return make.options(num_cpus=processes, num_gpus=_gpus(BUILD_GPUS * processes))


def _cells(ray: Any, config: dict[str, Any], todo: list[Cell], builder: Builder, out: Path,
           progress: bool) -> None:  # fmt: skip

    task = ray.remote(num_cpus=1, num_gpus=_gpus(CELL_GPUS), max_retries=0)(_cell)
    pending = {task.remote(config, c, builder.cache, builder.device, out): c for c in todo}
    bar = tqdm(total=len(pending), desc="matrix (ray)", unit="cell", disable=not progress)
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ready)
        try:
            record = ray.get(ready)
        except Exception as error:  # noqa: BLE001 - a lost task is a failed cell
            record = lost(config, cell, error)
        write_cell(out, record, provenance(config, cell))
        bar.update()
    bar.close()


def lost(config: dict[str, Any], cell: Cell, error: BaseException) -> CellRecord:
    """The failed record of a cell whose task Ray lost (``run_cell`` records its own errors)."""
    record = new_record(config, cell)
    record.status, record.seconds = "failed", 0.0
    record.error = f"ray: {type(error).__name__}: {error}".splitlines()[0]
    return record
