"""``defend bench matrix``: a matrix run's wall time against its model-time floor, and the
share of its time each part of the work took.

:func:`bench_matrix` runs a matrix configuration from an empty cache (so its builds count)
and times the whole run; :func:`matrix_profile` reads a finished run back:

* the **floor**: the model passes the run needs, each piece of work counted once, times one
  pass timed now on this device (:mod:`defend.matrix.estimate`: attack steps and queries,
  Monte Carlo draws, training steps; detectors' and denoisers' small networks, data and
  bookkeeping left out), per build and per cell;
* the **wall** time: the whole run, each build's (``build.json``'s ``seconds``) and each
  cell's (its record's ``seconds``), the rest being the plan, the estimate and the reports;
* the **split**: builds, then each cell phase summed over the cells (:mod:`defend.matrix.phases`:
  data, models, attack, smoothing, outputs, detection, judging, bookkeeping), then the rest,
  as shares of the wall time.

The goal is a wall time within 1.3 x of the floor: the matrix spends its time on the passes
its verdicts need.

:func:`matrix_scaling` is the planning figure: the matrix's time at several samples a cell
(its data given test volumes enough for the largest), on the local engine or a local Ray of
``workers`` CPUs, the builds made once before and not counted.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defend.data.synth import split_counts
from defend.errors import DefendError
from defend.matrix import load_config, run_matrix
from defend.matrix.builds import Builder, data_build
from defend.matrix.cells import plan
from defend.matrix.estimate import estimate
from defend.matrix.phases import PHASES, REST
from defend.matrix.results import read_cells
from defend.matrix.rows import config_device, run_builds

#: the cell groups printed, worst first
SHOWN = 20


def bench_matrix(source: str | Path, out: Path, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run the matrix ``source`` (a preset or a TOML file) into ``OUT/matrix`` with its
    builds in ``OUT/cache``, both emptied first, and return :func:`matrix_profile` of it
    (``wall``: the whole :func:`~defend.matrix.run_matrix` call)."""
    out = Path(out)
    for folder in ("matrix", "cache"):
        shutil.rmtree(out / folder, ignore_errors=True)
    start = time.perf_counter()
    run_matrix(str(source), out / "matrix", cache=out / "cache", progress=progress, log=log)
    wall = time.perf_counter() - start
    return matrix_profile(out / "matrix", out / "cache", wall)


def matrix_profile(run: Path, cache: Path, wall: float) -> dict[str, Any]:
    """A finished matrix run in ``run`` (builds in ``cache``) that took ``wall`` seconds
    against its floor (module doc): ``wall``, ``floor``, ``ratio``, ``builds`` and
    ``cells`` (each ``{"wall", "floor"}``), ``split`` (``{part: seconds}``), ``groups`` (per
    task and defence: ``{"group", "cells", "wall", "floor"}``) and ``cells_timed`` (per cell
    ``{"id", "wall", "floor", "phases"}``)."""
    config = json.loads((Path(run) / "config.json").read_text())
    cells = plan(config)
    records = read_cells([Path(run)])
    builder = Builder(Path(cache), config_device(config), log=lambda _: None)
    builds = [b for b in run_builds(config, [c.row for c in cells]) if b.kind != "data"]
    floor = estimate(config, cells, builds, builder.path(data_build(config)), builder.device)
    build_wall = sum(_build_seconds(builder, b) for b in [data_build(config), *builds])
    timed = [{"id": c.id, "group": f"{c.row.task} {c.row.model} {c.row.defence}",
              "wall": records[c.id].seconds, "floor": floor.cells[c.id],
              "phases": records[c.id].phases or {}} for c in cells if c.id in records]  # fmt: skip
    cell_wall = sum(t["wall"] for t in timed)
    split = {"builds": build_wall}
    for name in (*PHASES, REST):
        split[name] = sum(t["phases"].get(name, 0.0) for t in timed)
    split["plan and reports"] = max(0.0, wall - build_wall - cell_wall)
    return {"wall": wall, "floor": floor.seconds, "ratio": wall / max(floor.seconds, 1e-9),
            "device": floor.device, "samples": floor.samples,
            "builds": {"wall": build_wall, "floor": sum(floor.builds.values())},
            "cells": {"wall": cell_wall, "floor": sum(floor.cells.values())},
            "split": split, "groups": _groups(timed), "cells_timed": timed}  # fmt: skip


def _build_seconds(builder: Builder, build: Any) -> float:
    """The seconds ``build.json`` says the build took (0: a data folder of the user's, or a
    build made before builds were timed)."""
    path = builder.cache / build.key / "build.json"
    return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.exists() else 0.0


def _groups(timed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, model and defence: its cells' wall and floor seconds, in plan order."""
    groups: dict[str, dict[str, Any]] = {}
    for t in timed:
        g = groups.setdefault(t["group"], {"group": t["group"], "cells": 0, "wall": 0.0,
                                           "floor": 0.0})  # fmt: skip
        g["cells"] += 1
        g["wall"] += t["wall"]
        g["floor"] += t["floor"]
    return list(groups.values())


def format_profile(profile: dict[str, Any]) -> str:
    """The profile as the lines ``defend bench matrix`` prints."""
    samples = ", ".join(f"{k} {v}" for k, v in profile["samples"].items())
    lines = [f"matrix on {profile['device']} (samples a cell: {samples}): wall "
             f"{profile['wall']:.0f} s over a model-time floor of {profile['floor']:.0f} s = "
             f"{profile['ratio']:.2f} x (goal <= 1.3 x)", "",
             f"{'':34}{'wall s':>9}{'floor s':>9}{'wall/floor':>12}"]  # fmt: skip
    for name in ("builds", "cells"):
        part = profile[name]
        lines.append(_ratio_line(name, part["wall"], part["floor"]))
    rest = profile["split"]["plan and reports"]
    lines += [f"{'plan, estimate and reports':34}{rest:9.1f}{'':9}", "", "cells by row:"]
    worst = sorted(profile["groups"], key=lambda g: g["floor"] - g["wall"])[:SHOWN]
    for g in worst:
        lines.append(_ratio_line(f"  {g['group']} ({g['cells']})", g["wall"], g["floor"]))
    total = sum(profile["split"].values()) or 1.0
    shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in profile["split"].items())
    return "\n".join([*lines, "", f"time split: {shares}"])


def _ratio_line(name: str, wall: float, floor: float) -> str:
    ratio = f"{wall / floor:12.2f}" if floor > 0 else f"{'-':>12}"
    return f"{name[:34]:34}{wall:9.1f}{floor:9.1f}{ratio}"


def matrix_scaling(source: str | Path, out: Path, samples: list[int], *, engine: str = "local",
                   workers: int | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    """The matrix of ``source`` at each of ``samples`` a cell into ``OUT/<engine>-n<n>``, its
    builds made first in ``OUT/cache`` (not timed); synthetic data gets test volumes for the
    largest n (:func:`with_test_samples`). Per run ``{"engine", "workers", "n", "cells",
    "seconds", "per_cell_sample"}`` (``seconds``: the whole run, builds done)."""
    base = with_test_samples(load_config(str(source)), max(samples))
    cache = Path(out) / "cache"
    builder = Builder(cache, config_device(base), log)
    builder.make_all(run_builds(base, [c.row for c in plan(base)]), progress)
    found = []
    for n in samples:
        config = copy.deepcopy(base)
        config["run"]["n"] = n
        folder = Path(out) / f"{engine}-n{n}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        summary = run_matrix(config, folder, engine=engine, workers=workers, cache=cache,
                             progress=progress, estimate=False, log=log)  # fmt: skip
        seconds = time.perf_counter() - start
        cells = summary["cells"]
        found.append({"engine": engine, "workers": workers, "n": n, "cells": cells,
                      "seconds": seconds, "per_cell_sample": seconds / (cells * n)})  # fmt: skip
    return found


def with_test_samples(config: dict[str, Any], n: int) -> dict[str, Any]:
    """``config`` with synthetic data whose test split holds at least ``n`` samples (whole
    volumes of ``data.slices``) and as many training volumes as before; a configured data
    folder (``data.path``) as it is."""
    data = config["data"]
    if data["path"]:
        return config
    test = math.ceil(n / data["slices"])
    train = split_counts(data["volumes"], data["test_volumes"])["train"]
    volumes = train + test + 1
    while _train_volumes(volumes, test) < train:
        volumes += 1
    return {**config, "data": {**data, "volumes": volumes, "test_volumes": test}}


def _train_volumes(volumes: int, test: int) -> int:
    """The training volumes of ``volumes`` with ``test`` of them for testing (0: none left)."""
    try:
        return split_counts(volumes, test)["train"]
    except DefendError:
        return 0


def format_scaling(rows: list[dict[str, Any]]) -> str:
    """The scaling runs as a table."""
    lines = [f"{'engine':10}{'n':>5}{'cells':>7}{'seconds':>10}{'s / cell-sample':>17}"]
    for r in rows:
        engine = r["engine"] + (f" x{r['workers']}" if r["workers"] else "")
        lines.append(f"{engine:10}{r['n']:5d}{r['cells']:7d}{r['seconds']:10.1f}"
                     f"{r['per_cell_sample']:17.3f}")  # fmt: skip
    return "\n".join(lines)
