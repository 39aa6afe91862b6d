"""docs/design.md's recipes, each done the way the recipe says and seen where it says.

Three toy plugins (tests/plugins), each registered by its own module alone and loaded
through ``DEFEND_PLUGINS``: "Add an attack" (``toy_sign``: a ``defend attack`` command that
raises its loss, a matrix column), "Add a defence" (``toy_squeeze``: a matrix row whose
outputs are the defence's), "Add a task" (``toy_screen``: trained, described by ``defend
info`` and attacked and defended in the matrix). One ``defend matrix`` run holds all three.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import defend.attacks
import defend.tasks
from defend.data import load_arrays
from defend.errors import DefendError
from defend.matrix import defence_registry, load_config
from defend.matrix.rows import Row, row_builds, system

PLUGINS = Path(__file__).parent / "plugins"
PLUGIN_MODULES = "toy_sign,toy_squeeze,toy_screen"
#: a matrix of the toy task alone: the toy attack beside ART's PGD, the toy defence beside none
TOY_MATRIX = """
[run]
n = 2
tasks = ["toy-screen"]

[data]
size = 32
volumes = 4
slices = 2
coils = 2

[toy-screen]
epochs = 1
eps = [0.03]
attacks = ["toy-sign", "art-pgd"]
defences = ["none", "toy-squeeze"]

[attack.toy-sign]
batch_size = 4

[attack.art-pgd]
steps = 3
"""


def _plugin_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "DEFEND_PLUGINS": PLUGIN_MODULES, "PYTHONPATH": path}


def _defend(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "defend.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_plugin_env())


@pytest.fixture
def toy_registry(monkeypatch):
    """The toy plugins importable and registered into registries of this test only."""
    monkeypatch.setattr(defend.attacks, "_REGISTERED", {})
    monkeypatch.setattr(defence_registry, "_REGISTERED", {})
    monkeypatch.setattr(defend.tasks, "TASKS", dict(defend.tasks.TASKS))
    monkeypatch.syspath_prepend(str(PLUGINS))
    for name in PLUGIN_MODULES.split(","):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("DEFEND_PLUGINS", PLUGIN_MODULES)


def test_a_registered_attack_is_a_command_that_raises_its_loss(cls_ckpt, synth_dir, tmp_path):
    listed = _defend("attack", "--help")
    assert listed.returncode == 0 and "toy-sign" in listed.stdout
    out = tmp_path / "toy"
    result = _defend("attack", "toy-sign", "--checkpoint", cls_ckpt, "--data", synth_dir,
                     "--out", out, "--n", 4, "--eps", 0.05, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert len(rows) == 4
    assert sum(r["loss_adv"] for r in rows) > sum(r["loss_clean"] for r in rows)


def test_a_missing_plugin_is_one_line():
    env = {**_plugin_env(), "DEFEND_PLUGINS": "no_such_plugin"}
    result = subprocess.run([sys.executable, "-m", "defend.cli", "attack", "--help"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: DEFEND_PLUGINS: cannot import plugin module 'no_such_plugin' "
        "(No module named 'no_such_plugin')"
    )


def test_the_toy_attack_defence_and_task_run_in_defend_matrix(tmp_path):
    """``defend matrix`` on the toy task: its model is trained as the task says (the best
    checkpoint chosen by sensitivity, as ``defend info`` shows), the toy attack is a column,
    the toy defence a row, and every cell runs; ``defend attack`` and ``defend certify``
    take the toy task's checkpoint as one of its kind."""
    config = tmp_path / "toy.toml"
    config.write_text(TOY_MATRIX)
    out = tmp_path / "out"
    result = _defend("matrix", config, "--out", out, "--cache", tmp_path / "cache",
                     "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "matrix.csv").open() as f:
        rows = list(csv.DictReader(f))
    cells = {(r["defence"], r["attack"]) for r in rows if r["metric"] == "clean_quality"}
    assert cells == {(d, a) for d in ("none", "toy-squeeze") for a in ("toy-sign", "art-pgd")}
    assert {r["task"] for r in rows} == {"toy-screen"}
    [model] = (tmp_path / "cache").glob("model-*/model.pt")
    info = _defend("info", model)
    assert info.returncode == 0, info.stderr
    assert "task      toy-screen" in info.stdout and "sensitivity" in info.stdout
    [data] = (tmp_path / "cache").glob("data-*/data")
    commands = (
        ("attack", "dgde", "--max-queries", 20, "--n", 2),
        ("certify", "--sigma", 0.25, "--n-samples", 2, "--n0", 8, "--n", 16),
    )
    for command in commands:
        done = _defend(*command, "--checkpoint", model, "--data", data, "--out",
                       tmp_path / command[0], "--no-progress")  # fmt: skip
        assert done.returncode == 0, done.stderr  # a cls-kind task's checkpoint


def test_the_toy_defence_changes_what_the_row_outputs(toy_registry, cls_ckpt, synth_dir):
    """The registered defence's row outputs the model's labels of the squeezed inputs."""
    config = load_config("smoke")
    row = Row("cls", "resnet18", "toy-squeeze")
    defended = system(config, row, {"model": cls_ckpt})
    from toy_squeeze import squeeze

    x, _ = load_arrays(synth_dir, "cls", "test", 8, checkpoint=cls_ckpt)
    labels = defended.estimator.predict(squeeze(x).astype(x.dtype)).argmax(1)
    seen, predict = [], defended.estimator.predict
    defended.estimator.predict = lambda images, **kw: seen.append(images) or predict(images, **kw)
    np.testing.assert_array_equal(defended.outputs(x, np.arange(len(x))).values, labels)
    assert not np.array_equal(squeeze(x), x)  # the squeeze moves the images ...
    np.testing.assert_array_equal(seen[0], squeeze(x))  # ... and the model saw them squeezed
    assert row_builds(config, row).keys() == {"model"}


def test_a_taken_name_is_refused(toy_registry):
    from toy_sign import ToySign

    with pytest.raises(DefendError, match="'dgde' is taken"):
        defend.attacks.register_attack("dgde", ToySign, "cls")
    with pytest.raises(DefendError, match="task must be one of"):
        defend.attacks.register_attack("toy-2", ToySign, "audio")

    class Unspecified(ToySign):
        _estimator_requirements = None

    with pytest.raises(DefendError, match="names no _estimator_requirements"):
        defend.attacks.register_attack("toy-3", Unspecified, "cls")


def test_taken_defence_and_task_names_are_refused(toy_registry):
    from toy_screen import Screening

    with pytest.raises(DefendError, match="'smoothing' is taken or reserved"):
        defence_registry.register_defence("smoothing", lambda *a: None, ("cls",))
    with pytest.raises(DefendError, match="'adv-x' is taken or reserved"):
        defence_registry.register_defence("adv-x", lambda *a: None, ("cls",))

    class Clash(Screening):
        name = "cls"

    with pytest.raises(DefendError, match="the name 'cls' is taken"):
        defend.tasks.register_task(Clash)

    class Audio(Screening):
        name, kind = "audio", "waveform"

    with pytest.raises(DefendError, match="kind must be one of recon, seg, cls"):
        defend.tasks.register_task(Audio)
