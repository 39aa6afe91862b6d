"""Stale results (issue 31, item 8): cell records carry the hashes of their configuration and
builds, resume and ``defend report --merge`` refuse a mismatch in one line, ``data.path``
builds key on the files' content, every build key on the package version (detection data:
tests/test_detection_key.py). No cell is run: records are stamped with :func:`provenance` as
the engines stamp them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import defend
from defend.data import synthesize
from defend.errors import DefendError
from defend.io import write_json
from defend.matrix import load_config, provenance, report, run_matrix
from defend.matrix import run as matrix_run
from defend.matrix.builds import data_build, model_build
from defend.matrix.cells import new_record, plan
from defend.matrix.record import CellRecord
from defend.matrix.results import write_cell
from entry import defend_main


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic data folder (recon, seg and cls splits)."""
    out = tmp_path_factory.mktemp("provenance") / "data"
    synthesize(out, size=16, coils=1, volumes=3, slices=2, seed=0, progress=False)
    return out


def _folder(path: Path, config: dict, task: str = "cls", count: int = 2) -> list[str]:
    """``path`` holding ``config.json`` and the stamped records of ``task``'s first ``count``
    cells (as a run of ``config`` leaves them); returns their ids."""
    write_json(path / "config.json", config)
    cells = [c for c in plan(config) if c.row.task == task][:count]
    for cell in cells:
        record = CellRecord(id=cell.id, task=task, model=cell.row.model,
                            defence=cell.row.defence, attack=cell.attack,
                            adaptive=cell.adaptive, eps=cell.eps, status="ok",
                            metrics={"success": 0.5}, n=2, seconds=0.1)  # fmt: skip
        write_cell(path, record, provenance.provenance(config, cell))
    return [c.id for c in cells]


def _bump(path: Path) -> None:
    """Move a file's modification time on by a second (an edit always moves it; the build
    cache's per-process memo keys on it)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_merging_a_shard_of_another_sigma_is_refused_naming_sigma(tmp_path):
    """The cell made at sigma 0.5 does not silently replace the one made at 0.25."""
    config = load_config("smoke")
    other = json.loads(json.dumps(config))
    other["seg"]["sigma"] = 0.5
    a, b = tmp_path / "a", tmp_path / "b"
    ids = _folder(a, config, "seg")
    assert _folder(b, other, "seg") == ids  # the same cells: the old merge let b's replace a's
    with pytest.raises(DefendError) as error:
        report(a, folders=[a, b])
    message = str(error.value)
    assert "seg.sigma 0.5" in message and "seg.sigma 0.25" in message and "\n" not in message
    assert str(b) in message and str(a) in message
    done = defend_main("report", a, "--merge", b)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "seg.sigma" in done.stderr
    # the same configuration merges, and so do runs differing only outside a cell's view
    # (where the file lay, the tasks planned, another task's settings, the eps planned)
    same, shard = tmp_path / "same", tmp_path / "shard"
    _folder(same, config, "seg")
    moved = json.loads(json.dumps(config))
    moved.update(source="elsewhere.toml")
    moved["run"]["tasks"], moved["cls"]["sigma"], moved["seg"]["eps"] = ["seg"], 0.5, [0.1]
    _folder(shard, moved, "seg")
    provenance.check_merge([(f, matrix_run.read_cells([f])) for f in (a, same, shard)])


def test_merge_names_other_builds_and_records_without_hashes(tmp_path, monkeypatch):
    config = load_config("smoke")
    a, b, old = tmp_path / "a", tmp_path / "b", tmp_path / "old"
    _folder(a, config)
    monkeypatch.setattr(defend, "__version__", "9.9.9")
    _folder(b, config)
    monkeypatch.undo()
    with pytest.raises(DefendError, match=r"other builds .*data, model differ; defend "):
        report(a, folders=[a, b])
    ids = _folder(old, config)
    for i in ids:  # a record of an older defend
        path = old / "cells" / f"{i}.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if "hash" not in k}))
    with pytest.raises(DefendError, match="carry no configuration hash"):
        report(a, folders=[a, old])


def test_resume_refuses_cells_of_changed_data_path_files(tiny_data, tmp_path):
    """Cells made before a data.path file changed are refused, naming the data build."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    config = load_config("smoke")
    config["data"]["path"] = str(data)
    out = tmp_path / "run"
    [first] = _folder(out, config, count=1)
    cell = next(c for c in plan(config) if c.id == first)
    record = CellRecord.from_json(json.loads((out / "cells" / f"{first}.json").read_text()))
    provenance.check_kept(out, config, [(cell, record)])  # this run's own record passes
    with h5py.File(next((data / "train").glob("*.h5")), "r+") as f:
        f["kspace"][0, 0, 0, 0] += 1
    _bump(next((data / "train").glob("*.h5")))
    with pytest.raises(DefendError, match=r"other builds than this run's \(data, model differ"):
        run_matrix(config, out, cache=tmp_path / "cache", progress=False, log=_quiet)
    record.config_hash = "0" * 16
    with pytest.raises(DefendError, match="another configuration than"):
        provenance.check_kept(out, config, [(cell, record)])


def test_local_engine_stamps_each_record(tmp_path, monkeypatch):
    """What _run_local writes carries the cell's config_hash, builds and builds_hash."""
    config = load_config("smoke")
    cell = next(c for c in plan(config) if c.row.task == "cls")
    monkeypatch.setattr(matrix_run, "cell_paths", lambda *args: ({}, tmp_path))
    monkeypatch.setattr(matrix_run, "run_cell", lambda _, c, *rest: new_record(config, c))
    matrix_run._run_local(config, [cell], None, tmp_path, progress=False)
    record = json.loads((tmp_path / "cells" / f"{cell.id}.json").read_text())
    stamp = provenance.provenance(config, cell)
    assert {k: record[k] for k in stamp} == stamp
    assert set(stamp["builds"]) == {"data", "model"} and len(stamp["config_hash"]) == 16
    for section, key, value in (("smoothing", "n", 7), ("run", "device", "cpu"),
                                ("cls", "sigma", 0.5), ("attack", "dgde", {})):  # fmt: skip
        other = json.loads(json.dumps(config))
        other[section][key] = value
        assert provenance.provenance(other, cell)["config_hash"] != stamp["config_hash"], key
    other = json.loads(json.dumps(config))
    other["seg"]["sigma"], other["cls"]["eps"], other["run"]["tasks"] = 0.5, [0.1], ["cls"]
    assert provenance.provenance(other, cell)["config_hash"] == stamp["config_hash"]


def test_data_path_build_key_follows_the_files_content(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    config = load_config("smoke")
    config["data"]["path"] = str(data)
    before = data_build(config)
    model = model_build(config, "cls", "resnet18", None).key
    _bump(data / "dataset.json")  # touched, not changed: the same key
    assert data_build(config).key == before.key
    image = sorted((data / "cls" / "train").rglob("*.png"))[0]
    from PIL import Image

    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # the same size, other content
    Image.fromarray(pixels).save(image)
    _bump(image)
    after = data_build(config)
    assert after.key != before.key and model_build(config, "cls", "resnet18", None).key != model
    changed = [k for k, v in after.settings["fingerprint"].items()
               if v != before.settings["fingerprint"][k]]  # fmt: skip
    assert changed == ["cls/train"]
    moved = tmp_path / "moved"  # a moved copy of the same files keeps its key
    shutil.copytree(data, moved)
    config["data"]["path"] = str(moved)
    assert data_build(config).key == after.key


def test_every_build_key_holds_the_package_version(tiny_data, monkeypatch):
    config = load_config("smoke")
    keys = [data_build(config).key, model_build(config, "seg", "Unet/resnet18", "pgd").key]
    config["data"]["path"] = str(tiny_data)
    keys.append(data_build(config).key)
    config["data"]["path"] = ""
    monkeypatch.setattr(defend, "__version__", "9.9.9")
    again = [data_build(config).key, model_build(config, "seg", "Unet/resnet18", "pgd").key]
    config["data"]["path"] = str(tiny_data)
    again.append(data_build(config).key)
    assert all(a != b for a, b in zip(keys, again, strict=True))
