"""The matrix computes nothing twice: each plain attack once for all the rows of its model,
each row's output of an input batch once, and where each cell's time went."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from defend.io import file_sha256
from defend.matrix import load_config
from defend.matrix.builds import Builder
from defend.matrix.cells import plan, run_cell
from defend.matrix.measures import Outputs
from defend.matrix.outcomes import AttackSpec
from defend.matrix.phases import PHASES, REST, phase, recording
from defend.matrix.provenance import cell_paths
from defend.matrix.reuse import FOLDER, CachedAttack, remembered


def _counting_attack(calls: list) -> AttackSpec:
    def run(estimator, x, y, eps, params, positions, seed):
        calls.append(len(x))
        return x + eps

    return AttackSpec(run, None, {"steps": 3})


def test_an_attack_runs_once_for_the_same_model_settings_and_inputs(tmp_path: Path):
    calls: list = []
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    x, positions = np.zeros((3, 2), np.float32), np.arange(3)
    attack = CachedAttack(_counting_attack(calls), tmp_path / FOLDER, {"model": file_sha256(model)},
                          "art-pgd")  # fmt: skip
    first = attack(x, None, 0.1, positions, 0)
    again = attack(x, None, 0.1, positions, 0)
    assert calls == [3] and np.array_equal(first, again)
    # another eps, other inputs, other positions, another seed: run again
    attack(x, None, 0.2, positions, 0)
    attack(x + 1, None, 0.1, positions, 0)
    attack(x, None, 0.1, positions + 5, 0)
    attack(x, None, 0.1, positions, 1)
    assert len(calls) == 5
    # another model's checkpoint (other bytes at the same path): run again
    model.write_bytes(b"other weights")
    retrained = CachedAttack(attack.spec, attack.folder, {"model": file_sha256(model)}, "art-pgd")
    retrained(x, None, 0.1, positions, 0)
    assert len(calls) == 6


def test_a_cached_attack_is_read_from_its_file(tmp_path: Path):
    calls: list = []
    attack = CachedAttack(_counting_attack(calls), tmp_path, {"model": "m"}, "noise")
    x, positions = np.zeros((2, 2), np.float32), np.arange(2)
    attack(x, None, 0.1, positions, 0)
    (path,) = tmp_path.glob("*.npz")
    np.savez(path, x_adv=np.full((2, 2), 7.0, np.float32))  # what the file says is returned
    assert (attack(x, None, 0.1, positions, 0) == 7.0).all() and calls == [2]


def test_a_rows_outputs_of_a_batch_are_evaluated_once(tmp_path: Path):
    calls: list = []

    def outputs(x, positions):
        calls.append(len(x))
        return Outputs(x.sum(1), np.zeros(len(x), bool))

    kept = remembered(outputs, tmp_path, {"model": "a"})
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    first = kept(x, np.arange(3))
    again = kept(x, np.arange(3))
    assert calls == [3] and np.array_equal(first.values, again.values)
    kept(x, np.arange(3) + 1)  # other positions: other noise draws for a smoothed row
    assert calls == [3, 3]
    # the row rebuilt (another model file under the same row name): evaluated again
    remembered(outputs, tmp_path, {"model": "b"})(x, np.arange(3))
    assert calls == [3, 3, 3]


def test_the_smoke_matrix_attacks_each_model_once_per_column(smoke_run: dict):
    out = smoke_run["out"]
    config = load_config("smoke")
    plain = {(c.row.task, c.row.model, c.row.method, c.attack, c.eps)
             for c in plan(config) if c.attack != "inside-radius"}  # fmt: skip
    using = [c for c in plan(config) if c.attack != "inside-radius"]
    assert len(list((out / FOLDER).glob("*.npz"))) == len(plain) < len(using)


def test_every_cell_says_where_its_time_went(smoke_run: dict):
    for path in (smoke_run["out"] / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        phases = record["phases"]
        assert set(phases) == {*PHASES, REST}
        assert abs(sum(phases.values()) - record["seconds"]) < 0.01 + 1e-3 * len(phases)
        # an attack computed here takes time; one read from the cache (another row's, of
        # the same model) may round to 0 ms
        computes = record["adaptive"] != "none" or record["defence"] in ("none", "adv-pgd")
        if computes and record["attack"] not in ("real-feature", "noise"):  # microseconds
            assert phases["attack"] > 0, record["id"]


def test_phases_count_their_own_time_only():
    with recording() as seconds:
        with phase("attack"):
            with phase("smoothing"):
                sum(range(200_000))
    assert seconds["smoothing"] > 0 and seconds["attack"] < seconds["smoothing"]
    with phase("attack"):  # outside a recording: nothing kept, nothing raised
        pass


def test_a_cell_read_from_the_caches_equals_one_computed_afresh(smoke_run: dict, tmp_path):
    """The smoothing row's EOT cell read its plain half (attack and outputs) from the caches
    the plain cells wrote; alone in an empty folder it computes them: the same outcomes."""
    config = load_config("smoke")
    cell = {c.id: c for c in plan(config)}["seg.Unet_resnet18.smoothing.seg-pgd+eot.eps0.03"]
    builder = Builder(smoke_run["cache"], "cpu", lambda _: None)
    paths, data = cell_paths(config, cell, builder)
    fresh = run_cell(config, cell, paths, tmp_path, data)
    kept = json.loads((smoke_run["out"] / "cells" / f"{cell.id}.json").read_text())
    assert fresh.ok and fresh.per_sample == kept["per_sample"]
    assert len(list((tmp_path / FOLDER).glob("*.npz"))) == 1  # its plain half, computed here


def test_the_matrixs_input_detectors_attack_no_test_split(smoke_run: dict):
    """The cells attack the test split themselves: an input detector's build makes its
    training (train) and calibration (val) examples only."""
    made = [p.parent for p in smoke_run["cache"].glob("detector-*/detector.data/val.npz")]
    assert made  # the seg input detector of the smoke preset
    for folder in made:
        assert (folder / "train.npz").exists() and not (folder / "test.npz").exists()
