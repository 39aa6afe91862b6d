"""``defend matrix``: plan the cells, build what they need, run the missing ones, report.

:func:`run_matrix` is the whole job and what the CLI calls:

1. the configuration (:func:`~defend.matrix.config.load_config`) goes to ``OUT/config.json``;
   a folder holding another configuration's cells is refused (one line);
2. :func:`~defend.matrix.cells.plan` lists the cells (``shard=(i, n)``: every n-th from the
   i-th, for machines without a cluster; ``defend report`` merges the shards' folders);
3. the plan and its model time are said (:mod:`~defend.matrix.estimate`; a configuration
   sized for a GPU started on a CPU warns), then the builds of the cells still to run are
   made in ``cache`` (default ``OUT/../cache``, shared by every configuration beside it),
   under a progress bar;
4. each missing cell runs (a cell whose record is there is done; a failed one runs again)
   and its record is written atomically the moment it finishes, so a run killed at any point
   and started again runs only what is missing and ends with the same ``matrix.csv``
   (``seconds`` aside); ``force`` runs every cell again. Each plain attack runs once for all
   the rows and cells that read it, and each output of a row once (:mod:`~defend.matrix.reuse`,
   ``OUT/attacks``, ``OUT/rows``);
5. ``matrix.csv``, ``matrix.md`` and ``report.html`` are written from all records.

Every record carries where it came from (:func:`provenance`): ``config_hash``, the hash of
the configuration its numbers depend on (:func:`cell_config`), and ``builds_hash``, the hash
of the keys of the builds it used (its row's and the data's; a build key holds the package
version and, for ``data.path``, the content of the data files). A resumed run refuses a kept
record whose hashes differ from this run's, and ``defend report --merge`` refuses folders
whose records differ (:func:`check_merge`), each in one line naming the difference, so a
cell made with other settings, data or code is never taken for one of this configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from defend.errors import DefendError
from defend.io import check_writable, write_json
from defend.matrix.builds import Builder, data_build
from defend.matrix.cells import Cell, plan, run_cell
from defend.matrix.config import load_config
from defend.matrix.estimate import estimate as time_model
from defend.matrix.estimate import plan_lines, sample_data
from defend.matrix.provenance import (
    cell_paths,
    check_folder,
    check_kept,
    check_merge,
    provenance,
)
from defend.matrix.ray_engine import run_ray
from defend.matrix.results import read_cells, write_cell, write_results
from defend.matrix.reuse import FOLDER
from defend.matrix.rows import config_device, run_builds

ENGINES = ("local", "ray")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (None stays None)."""
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise DefendError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise DefendError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def run_matrix(
    source: str | os.PathLike | dict[str, Any] | None = None,
    out: str | os.PathLike = "runs/matrix",
    *,
    engine: str = "local",
    address: str | None = None,
    shard: tuple[int, int] | None = None,
    force: bool = False,
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    estimate: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the matrix of ``source`` (a preset name, a TOML file or a loaded configuration;
    None: ``quick``) into ``out`` (module doc).

    Args:
        workers: ray: the CPUs of the local Ray started for the run (default all).
        estimate: say the plan and its model time before running
            (:mod:`defend.matrix.estimate`; the data is made first, to time the models on).

    Returns:
        ``{"cells": n, "ran": n, "failed": [ids], "flags": [...], "out": str}``.
    """
    if engine not in ENGINES:
        raise DefendError(f"--engine must be {' or '.join(ENGINES)}, got {engine!r}")
    config = source if isinstance(source, dict) else load_config(source)
    out = check_writable(out, "dir")
    check_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    cells = plan(config)
    if shard is not None:
        cells = cells[shard[0] :: shard[1]]
    if force:
        for kept in ("rows", FOLDER):  # the rows' stages and outputs, the attacks (reuse)
            shutil.rmtree(out / kept, ignore_errors=True)
    done = read_cells([out])
    todo = [c for c in cells if force or c.id not in done or not done[c.id].ok]
    running = {c.id for c in todo}
    check_kept(out, config, [(c, done[c.id]) for c in cells if c.id in done.keys() - running])
    log(f"matrix: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
    builder = Builder(Path(cache) if cache else out.parent / "cache", config_device(config), log)
    if todo and estimate:
        _say_plan(config, todo, builder, log)
    if engine == "ray":
        run_ray(config, todo, builder, out, address, progress, log, num_cpus=workers)
    else:
        builder.make_all(run_builds(config, [c.row for c in todo]), progress)
        _run_local(config, todo, builder, out, progress)
    return report(out, cells=[c.id for c in cells], ran=len(todo))


def _say_plan(config: dict[str, Any], todo: list[Cell], builder: Builder,
              log: Callable[[str], None]) -> None:  # fmt: skip
    """The plan and its estimate, before anything is made: synthetic data not made yet is
    timed on a sample of it (one slice a split, :func:`sample_data`), its sizes scaled."""
    data = data_build(config)
    missing = [b for b in run_builds(config, [c.row for c in todo]) if not builder.done(b)]
    with tempfile.TemporaryDirectory() as folder:
        where, scale = (builder.path(data), None) if builder.done(data) else sample_data(
            data.settings, Path(folder))  # fmt: skip
        found = time_model(config, todo, missing, where, builder.device, scale)
    for line in plan_lines(config, todo, missing, found):
        log(line)


def _run_local(config: dict[str, Any], todo: list[Cell], builder: Builder, out: Path,
               progress: bool) -> None:  # fmt: skip
    bar = tqdm(todo, desc="matrix", unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.id[-40:])
        paths, data = cell_paths(config, cell, builder)
        record = run_cell(config, cell, paths, out, data)
        write_cell(out, record, provenance(config, cell))


def report(out: str | os.PathLike, *, folders: list[Path] | None = None,
           cells: list[str] | None = None, ran: int = 0) -> dict[str, Any]:  # fmt: skip
    """Write ``matrix.csv``, ``matrix.md`` (and the HTML report) of ``out`` from the records
    in ``folders`` (default ``[out]``; shards' folders merge), in plan order.

    Raises:
        DefendError: no records, or records of other configurations or builds
            (:func:`check_merge`)."""
    out = Path(out)
    found = [(Path(f), read_cells([f])) for f in folders or [out]]
    check_merge(found)
    records = {i: r for _, cells_of in found for i, r in cells_of.items()}
    if not records:
        raise DefendError(f"{out}: no cell records (OUT/cells/*.json) to report")
    order = cells or _planned(out) or sorted(records)
    ordered = [records[i] for i in order if i in records]
    summary = write_results(out, ordered)
    missing = [i for i in order if i not in records]
    return {"cells": len(order), "ran": ran, "missing": missing, "out": str(out), **summary}


def _planned(out: Path) -> list[str] | None:
    """The cell ids of the configuration kept in ``OUT/config.json``, in plan order."""
    path = out / "config.json"
    if not path.exists():
        return None
    return [c.id for c in plan(json.loads(path.read_text()))]
