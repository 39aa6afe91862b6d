"""One declaration per attack parameter (issue 33): constructor, ``attack_params``, checks,
CLI options, the matrix's ``[attack.NAME]`` check and docs/attacks.md all read ``PARAMS``."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import typer.main

from defend.adaptive.registry import ATTACKS
from defend.attacks import DGDE
from defend.attacks.params import Param, by_name
from defend.cli import app
from defend.errors import DefendError
from defend.matrix.columns import check_section

ROOT = Path(__file__).resolve().parents[1]
CLASSES = sorted({entry.attack for entry in ATTACKS.values()}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_attack_params_and_signature_come_from_the_declaration(cls):
    declared = by_name(cls.PARAMS)
    assert cls.attack_params == list(declared)
    signature = inspect.signature(cls)
    assert [p for p in signature.parameters if p != "estimator"] == list(declared)
    for name, param in declared.items():
        assert signature.parameters[name].default == param.default
        assert f"        {name}: " in cls.__doc__  # the generated Parameters section


@pytest.fixture(scope="module")
def cls_estimator():
    """A tiny ART classifier of (1, 8, 8) images in [0, 1]."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    return PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 8, 8), 2,
                             clip_values=(0.0, 1.0))  # fmt: skip


def test_the_constructor_sets_defaults_and_refuses_in_one_line(cls_estimator):
    attack = DGDE(cls_estimator, population=6)
    assert (attack.population, attack.max_queries, attack.batch_size) == (6, 2000, 8)
    for bad, message in (({"population": 2}, "population must be >= 4, got 2"),
                         ({"F": float("nan")}, "F must be in (0, 2]"),
                         ({"noise": "pink"}, "noise must be salt_pepper or uniform"),
                         ({"max_queries": 2.5}, "max_queries must be an integer"),
                         ({"populaton": 8}, "DGDE has no parameter 'populaton'")):  # fmt: skip
        with pytest.raises(DefendError) as error:
            DGDE(cls_estimator, **bad)
        assert message in str(error.value) and "\n" not in str(error.value)


def test_a_param_checks_what_it_declares():
    step = Param("step", None, "step", float, low=0, open_low=True, optional=True)
    step.check(None)
    step.check(0.5)
    for bad in (0, -1, float("inf"), "x", True):
        with pytest.raises(DefendError):
            step.check(bad)
    assert Param("p", 1, "p", float, low=0, high=1, open_high=True).allowed() == "in [0, 1)"
    assert Param("r", "a", "r", str, choices=("a", "b", "c")).allowed() == "a, b or c"


def _options(name: str) -> dict[str, object]:
    """``defend attack NAME``'s options: {option name: default}."""
    group = typer.main.get_command(app).commands["attack"]
    return {o: p.default for p in group.commands[name].params for o in p.opts}


@pytest.mark.parametrize("name", ["hallucination", "seg-fgsm", "dgde"])
def test_cli_options_are_the_declared_parameters(name):
    options = _options(name)
    declared = by_name(ATTACKS[name].attack.PARAMS)
    if name == "hallucination":
        declared.update(by_name(ATTACKS["hallucination-evade"].attack.PARAMS))
    for param in declared.values():
        if not param.cli:
            assert param.option not in options
        elif param.kind is not bool:
            assert options[param.option] == (None if param.parse else param.default), param.name
    assert "--F" in _options("dgde") and "--evade" in _options("hallucination")


def test_cli_refuses_a_bad_value_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import defend.adaptive.runner

    monkeypatch.setattr(defend.adaptive.runner, "run_attack",
                        lambda *a, **k: pytest.fail("ran the attack"))  # fmt: skip
    args = ["attack", "hallucination", "--checkpoint", "c.pt", "--data", "d",
            "--out", str(tmp_path / "out"), "--region", "triangle"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DefendError)
    assert "region must be line, square or disk, got 'triangle'" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_matrix_sections_are_checked_against_the_declaration():
    check_section("dgde", {"population": 6})  # any declared parameter, not only the defaults'
    check_section("seg-pgd", {"loss": "dice", "max_iter": 5})
    with pytest.raises(DefendError, match="has no parameter 'max_iters'"):
        check_section("hallucination", {"max_iters": 3})
    with pytest.raises(DefendError, match="has no parameter 'eps'"):
        check_section("hallucination", {"eps": 0.1})  # the grid sets eps
    with pytest.raises(DefendError, match="loss must be"):
        check_section("seg-fgsm", {"loss": "l1"})
    with pytest.raises(DefendError, match="steps must be >= 1"):
        check_section("art-pgd", {"steps": 0})


def test_matrix_config_refuses_an_undeclared_key(tmp_path):
    from defend.matrix import load_config

    path = tmp_path / "c.toml"
    path.write_text("[attack.dgde]\npopulation = 2\n")
    with pytest.raises(DefendError, match=r"\[attack.dgde\] population must be >= 4"):
        load_config(path)
    path.write_text("[attack.dgde]\npopulation = 6\n")
    assert load_config(path)["attack"]["dgde"] == {"max_queries": 400, "population": 6}


def test_docs_attack_tables_are_up_to_date():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import attack_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "attacks.md").read_text() == attack_docs.render(), (
        "docs/attacks.md is out of date: run python scripts/attack_docs.py"
    )


def test_declarations_match_the_modules_they_stand_for():
    """attacks/declared.py names the region shapes and seg losses without importing torch;
    they are the ones the attacks use."""
    from defend.attacks import declared, region
    from defend.attacks.seg_fgsm import LOSSES

    assert declared.REGIONS == region.REGIONS
    assert declared.SEG_ATTACK_LOSSES == LOSSES


def test_the_command_line_starts_without_torch_or_art():
    """``defend --help`` and one-line errors import neither torch nor ART (seconds each)."""
    import subprocess
    import sys

    code = ("import sys, defend.cli; "
            "print(sorted(m for m in ('torch', 'art') if m in sys.modules))")  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()  # fmt: skip
    assert found == "[]"
