"""docs/design.md's recipes, each done the way the recipe says and seen where it says.

"Add an attack": a toy attack (tests/plugins/toy_sign.py) registered by its module alone,
loaded through ``DEFEND_PLUGINS``, is a ``defend attack`` command that raises its loss and a
matrix column whose cells run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import defend.attacks
from defend.errors import DefendError
from defend.matrix import load_config, run_matrix

PLUGINS = Path(__file__).parent / "plugins"


def _plugin_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "DEFEND_PLUGINS": "toy_sign", "PYTHONPATH": path}


def _defend(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "defend.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_plugin_env())


@pytest.fixture
def toy_registry(monkeypatch):
    """The toy plugin importable and registered into a registry of this test only."""
    monkeypatch.setattr(defend.attacks, "_REGISTERED", {})
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.delitem(sys.modules, "toy_sign", raising=False)
    monkeypatch.setenv("DEFEND_PLUGINS", "toy_sign")


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


def test_a_registered_attack_is_a_matrix_column(toy_registry, tmp_path):
    text = Path(load_config("smoke")["source"]).read_text()
    text = text.replace("[run]\n", '[run]\ntasks = ["cls"]\n')
    smoke_cls = 'attacks = ["dgde", "art-pgd", "noise"]\ndefences = ["none", "adversarial"]'
    text = text.replace(smoke_cls, 'attacks = ["toy-sign"]\ndefences = ["none"]')
    path = tmp_path / "toy.toml"
    path.write_text(text + "\n[attack.toy-sign]\nbatch_size = 4\n")
    config = load_config(path)  # loads the plugin, which registers the column
    assert config["cls"]["attacks"] == ["toy-sign"]
    summary = run_matrix(path, tmp_path / "out", cache=tmp_path / "cache", progress=False,
                         log=lambda line: None)  # fmt: skip
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")]
    assert {r["attack"] for r in records} == {"toy-sign"} and summary is not None
    assert all(r["status"] == "ok" and r["eps"] == 0.03 for r in records), records
    assert "success" in records[0]["metrics"]


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
