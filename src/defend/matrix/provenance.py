"""Where a matrix cell's record came from, and the refusals that keep stale records out.

Every record carries :func:`provenance`: ``config_hash``, the hash of the configuration its
numbers depend on (:func:`cell_config`), and ``builds_hash``, the hash of the keys of the
builds it used (its row's and the data's; a build key holds the package version and, for
``data.path``, the content of the data files). A resumed run refuses a kept record whose
hashes differ from this run's (:func:`check_kept`), ``defend report --merge`` refuses folders
whose records differ (:func:`check_merge`), and a folder holding another configuration's
cells is refused (:func:`check_folder`), each in one line naming the difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import defend
from defend.errors import DefendError
from defend.matrix.builds import Builder, data_build
from defend.matrix.cells import Cell
from defend.matrix.config import matrix_tasks
from defend.matrix.record import CellRecord
from defend.matrix.rows import row_builds

#: ``run`` settings that choose which cells exist, not their numbers (out of config_hash)
PLAN_ONLY = ("tasks", "adaptive")
#: ``run`` settings that change how a cell runs, never what it measures (out of
#: config_hash, and a folder may be resumed with another value)
HOW_ONLY = ("memory",)


#: a task's lists of rows and columns (a cell's own model, defence, attack and eps are in its
#: id; out of config_hash)
ROW_LISTS = ("models", "defences", "hardening", "attacks", "eps")


def check_folder(out: Path, config: dict[str, Any]) -> None:
    """Refuse a folder whose cells were made with another configuration."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps({k: v for k, v in config.items() if k != "source"}))
    old.pop("source", None)
    for view in (old, new):
        for key in HOW_ONLY:
            view.get("run", {}).pop(key, None)
    if old != new:
        keys = [key for key, _, _ in differences(old, new)]
        raise DefendError(
            f"{out} holds a matrix of another configuration (differing: {', '.join(keys)}); "
            "choose another --out or remove it"
        )


def cell_config(config: dict[str, Any], task: str) -> dict[str, Any]:
    """The part of the resolved configuration a ``task`` cell's numbers depend on: all of it
    but ``source`` (where the file lay), ``run``'s :data:`PLAN_ONLY`, the other tasks'
    sections and the task's :data:`ROW_LISTS` (which cells exist, not what they measure)."""
    tasks = matrix_tasks()
    view = {k: v for k, v in config.items() if k != "source" and (k not in tasks or k == task)}
    view["run"] = {k: v for k, v in config["run"].items() if k not in PLAN_ONLY + HOW_ONLY}
    view[task] = {k: v for k, v in config[task].items() if k not in ROW_LISTS}
    return json.loads(json.dumps(view))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def provenance(config: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """What a record of ``cell`` carries of where it came from: ``config_hash`` (of
    :func:`cell_config`), ``builds`` (``{name: build key}``: the data and the row's builds),
    ``builds_hash`` (of those keys) and ``defend_version``. Builds nothing."""
    builds = {"data": data_build(config), **row_builds(config, cell.row)}
    keys = {name: build.key for name, build in sorted(builds.items())}
    return {"config_hash": _digest(cell_config(config, cell.row.task)),
            "builds_hash": _digest(keys), "builds": keys,
            "defend_version": defend.__version__}  # fmt: skip


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for each leaf where two configurations differ
    (a key one lacks: None there)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(prefix.rstrip("."), a, b)]
    found = []
    for key in list(a) + [k for k in b if k not in a]:
        found += differences(a.get(key), b.get(key), f"{prefix}{key}.")
    return found


def _settings(pairs: list[tuple[str, Any]]) -> str:
    shown = ", ".join(f"{key} {json.dumps(value)}" for key, value in pairs[:3])
    return shown + (f" (and {len(pairs) - 3} more)" if len(pairs) > 3 else "")


def _builds_note(was: CellRecord, now: CellRecord) -> str:
    """Which builds two records differ in, and the package versions where they differ."""
    a, b = was.builds or {}, now.builds or {}
    names = [n for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)] or ["builds_hash"]
    note = f"{', '.join(names)} differ"
    if was.defend_version != now.defend_version:
        note += f"; defend {was.defend_version} against {now.defend_version}"
    return note


def check_kept(out: Path, config: dict[str, Any], kept: list[tuple[Cell, CellRecord]]) -> None:
    """Refuse a record this run would keep (not run again) whose hashes are not this run's
    (:func:`provenance`): one line naming the cell and what differs."""
    advice = "run with --force or choose another --out"
    for cell, record in kept:
        where = f"{out}: cell {cell.id}"
        now = replace(record, **provenance(config, cell))
        if record.config_hash is None:
            raise DefendError(f"{where} carries no configuration hash (made by an older "
                              f"defend); {advice}")  # fmt: skip
        if record.config_hash != now.config_hash:
            raise DefendError(f"{where} was made with another configuration than "
                              f"{out / 'config.json'}'s (config hash {record.config_hash} "
                              f"against {now.config_hash}); {advice}")  # fmt: skip
        if record.builds_hash != now.builds_hash:
            raise DefendError(f"{where} was made with other builds than this run's "
                              f"({_builds_note(record, now)}: the data.path files or defend "
                              f"changed); {advice}")  # fmt: skip


def check_merge(found: list[tuple[Path, dict[str, CellRecord]]]) -> None:
    """Refuse to merge records made with other configurations or builds: all records of a task
    must carry one ``config_hash``, all of a row one ``builds_hash``, whichever folder holds
    them (records of an older defend, with no hashes, merge only with their like).

    Args:
        found: ``(folder, {id: record})`` per folder (:func:`read_cells` of each).

    Raises:
        DefendError: one line naming the folders and, where their ``config.json`` tell, the
            differing keys with their values (else the builds, or the hashes, that differ).
    """
    tasks: dict[str, tuple[Path, CellRecord]] = {}
    rows: dict[tuple, tuple[Path, CellRecord]] = {}
    for folder, records in found:
        for record in records.values():
            here = (Path(folder), record)
            there = tasks.setdefault(record.task, here)
            if there[1].config_hash != record.config_hash:
                raise DefendError(_config_refusal(there, here))
            there = rows.setdefault((record.task, record.model, record.defence), here)
            if there[1].builds_hash != record.builds_hash:
                raise DefendError(
                    f"cells of row {record.task} {record.model} {record.defence} in "
                    f"{folder} were made with other builds than in {there[0]} "
                    f"({_builds_note(there[1], record)}); merge only runs of the same data "
                    "and builds"
                )


def _config_refusal(there: tuple[Path, CellRecord], here: tuple[Path, CellRecord]) -> str:
    """The line refusing ``here``'s record beside ``there``'s (another config_hash)."""
    (a, first), (b, record) = there, here
    for folder, r in ((a, first), (b, record)):
        if r.config_hash is None:
            return (f"cells in {folder} carry no configuration hash (made by an older defend): "
                    "run them again to merge them")  # fmt: skip
    paths = [a / "config.json", b / "config.json"]
    if all(p.exists() for p in paths):
        views = [cell_config(json.loads(p.read_text()), record.task) for p in paths]
        changed = differences(*views)
        if changed:
            return (f"cells in {b} were made with {_settings([(k, v) for k, _, v in changed])}, "
                    f"{a} with {_settings([(k, v) for k, v, _ in changed])}; merge only runs of "
                    "one configuration")  # fmt: skip
    return (f"cell {record.id} in {b} was made with another configuration than cell "
            f"{first.id} in {a} (config hash {record.config_hash} against "
            f"{first.config_hash}); merge only runs of one configuration")  # fmt: skip


def cell_paths(config: dict[str, Any], cell: Cell, builder: Builder) -> tuple[dict, Path]:
    """Build (or find) what ``cell`` needs: ``({name: path}, data folder)``."""
    needs = row_builds(config, cell.row)
    paths = {name: builder.make(build) for name, build in needs.items()}
    return paths, builder.make(data_build(config))
