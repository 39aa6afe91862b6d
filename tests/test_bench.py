"""The benchmarks (`defend bench attacks`, `defend bench train`) on tiny models and data:
structure and sane ratios, no timing goals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import defend.bench.floors as floors
import defend.io
from defend.attacks import DGDE, HallucinationAttack
from defend.bench import (
    TRAIN_BENCH_TASKS,
    bench_attacks,
    bench_suite,
    bench_train,
    count_forward_rows,
    format_bench,
    format_train_bench,
    hallucination_strength,
    interleaved,
    jsonable,
    seg_pgd_vs_floor,
)
from defend.cli import app
from defend.errors import DefendError
from defend.estimators import ReconEstimator, SegEstimator, make_classifier
from defend.models.recon import ReconUnet
from defend.train.methods import METHODS
from entry import defend_main

SIZE = 16


class MeanClassifier(nn.Module):
    """Two classes by mean intensity around 0.5: a few extreme pixels flip it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.mean((1, 2, 3)) - 0.5) * self.scale
        return torch.stack([z, -z], 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: threads only add synchronisation (and stall on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mask = np.zeros(SIZE, dtype=bool)
    mask[::4] = True  # equispaced, 4x
    mask[SIZE // 2 - 2 : SIZE // 2 + 2] = True  # fully sampled centre
    unet = ReconEstimator(
        ReconUnet(chans=4, num_pool_layers=2),
        mask.reshape(1, 1, 1, SIZE, 1),
        (2, SIZE, SIZE, 2),
        device="cpu",
    )
    kspace = rng.normal(size=(2, 2, SIZE, SIZE, 2)).astype(np.float32)
    kspace *= mask.reshape(1, 1, 1, SIZE, 1)
    seg = SegEstimator(nn.Conv2d(1, 1, 3, padding=1), (1, SIZE, SIZE), device="cpu")
    seg_x = rng.random((2, 1, SIZE, SIZE)).astype(np.float32)
    classifier = make_classifier(MeanClassifier(), (1, 8, 8), 2, device="cpu")
    offsets = np.array([0.02, -0.02], dtype=np.float32).reshape(2, 1, 1, 1)
    cls_x = (0.5 + offsets + 0.01 * rng.random((2, 1, 8, 8))).astype(np.float32)
    return {
        "unet": unet,
        "varnet": unet,
        "recon_x": kspace,
        "seg": seg,
        "seg_x": seg_x,
        "seg_y": (seg_x > 0.5).astype(np.float32),
        "classifier": classifier,
        "cls_x": cls_x,
    }


def positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_suite_structure_and_ratios(tiny):
    result = bench_suite(
        **tiny,
        iters=2,
        repeats=1,
        pixel_th=(1,),
        pixel_max_iter=1,
        dgde_params={
            "population": 4,
            "max_iter": 3,
            "patience": 2,
            "noise_levels": 3,
            "noise_tries": 2,
        },
    )
    names = [row["name"] for row in result["floors"]]
    assert names == ["hallucination/unet", "hallucination/varnet", "seg-fgsm (PGD)", "dgde"]
    for row in result["floors"]:
        for key in ("attack_s", "floor_s", "ratio"):
            assert positive(row[key]), (row["name"], key, row[key])
        assert len(row["ratios"]) == 1 and row["goal"] == 1.15 and isinstance(row["met"], bool)
        assert isinstance(row["floor"], str) and row["floor"]
    assert "queries" in result["floors"][-1]["floor"]

    pgd = result["art_pgd"]
    for key in ("ours_s", "art_s", "ratio"):
        assert positive(pgd[key]), key
    assert math.isfinite(pgd["strength_ours"]) and math.isfinite(pgd["strength_art"])
    # same budget for both; two steps of eps / 10 cannot leave it
    assert pgd["linf_ours"] <= pgd["params"]["eps"] * (1 + 1e-5)
    assert pgd["linf_art"] <= pgd["params"]["eps"] * (1 + 1e-5)
    assert pgd["strength_ours"] == pytest.approx(pgd["strength_ours_report"], rel=1e-4, abs=1e-6)

    pix = result["art_pixel"]
    dgde = pix["dgde"]
    assert 0 <= dgde["success"] <= 1 and dgde["forwards_per_image"] > 0
    assert dgde["forwards_per_image"] >= dgde["queries_per_image"]  # + the bench's own checks
    (row,) = pix["pixel_attack"]
    assert row["th"] == 1 and 0 <= row["success"] <= 1 and row["measured"] is True
    assert row["forwards_per_image"] > 0
    projected = pix["projected_defaults"]
    assert projected["measured"] is False and "projected, not measured" in projected["name"]
    for r in (row, projected):
        assert positive(r["speedup"]) and positive(r["s_per_image"])
    assert set(pix) == {"dgde", "pixel_attack", "projected_defaults", "params", "goals"}
    assert set(pix["goals"]) == {"success", "pixels", "speed"}
    assert "max_iter=1 (ART's default is 100)" in pix["params"]["pixel_attack"]

    text = format_bench(result)
    for part in (
        "1. Attack wall time",
        "2. HallucinationAttack vs ART",
        "3. DGDE vs ART",
        "hallucination/varnet",
        "goal",
        "PixelAttack th=None, projected, not measured",
    ):
        assert part in text
    json.dumps(jsonable(result), allow_nan=False)  # strict JSON


# ---------------------------------------------------------------- DGDE vs PixelAttack goals


def _attack_row(name: str, success: list[bool], pixels: list[float], s_per_image: float) -> dict:
    """A measured row as the bench builds it (pixels NaN where the attack failed)."""
    each = [p if ok else math.nan for ok, p in zip(success, pixels, strict=True)]
    ok = [p for p in each if not math.isnan(p)]
    return {
        "name": name,
        "success": float(np.mean(success)),
        "pixels": float(np.mean(ok)) if ok else math.nan,
        "pixels_each": each,
        "s_per_image": s_per_image,
        "measured": True,
    }


DGDE_ROW = _attack_row("DGDE", [True, True], [40.0, 42.0], 1.0)


def test_pixel_attack_runs_at_arts_defaults():
    """PixelAttack's max_iter in the library and the CLI is ART's own default (it was 5)."""
    import inspect

    from art.attacks.evasion import PixelAttack

    import defend.cli.bench_commands
    from defend.bench.versus_art import PIXEL_MAX_ITER, dgde_vs_floor_and_pixel_attack

    art_default = inspect.signature(PixelAttack.__init__).parameters["max_iter"].default
    assert PIXEL_MAX_ITER == art_default == 100
    for fn in (dgde_vs_floor_and_pixel_attack, bench_suite, bench_attacks):
        assert inspect.signature(fn).parameters["pixel_max_iter"].default == art_default
    command = defend.cli.bench_commands.bench_attacks_command
    option = inspect.signature(command).parameters["pixel_max_iter"]
    assert option.default.default == art_default


def test_pixel_goals_are_not_passed_when_art_never_succeeds():
    """No th flips an image: pixels and speed are not comparable, so not met (the old code
    met the pixel goal on a NaN and the speed goal on the sum over th)."""
    from defend.bench.versus_art import pixel_goals

    rows = [
        _attack_row(f"PixelAttack th={th}", [False, False], [th, th], s)
        for th, s in ((1, 10.0), (5, 9.0), (20, 8.0))
    ]
    goals = pixel_goals(DGDE_ROW, rows)
    assert goals["success"]["met"] is True  # 1.00 vs 0.00: a measured fact
    for key in ("pixels", "speed"):
        assert goals[key]["met"] is False and goals[key]["status"].startswith("not comparable")
    assert goals["speed"]["speedup"] == pytest.approx(8.0)  # the fastest th, not 27 (the sum)
    text = format_bench({"floors": [], "art_pixel": _pixel_result(rows, goals)})
    assert "NO (not comparable: PixelAttack flipped no image at any th)" in text


def _pixel_result(rows: list[dict], goals: dict) -> dict:
    """A table 3 result around the given rows and goals, for format_bench."""
    dgde = {**DGDE_ROW, "forwards_per_image": 300.0}
    rows = [{**r, "forwards_per_image": 1000.0, "speedup": r["s_per_image"]} for r in rows]
    params = {"images": 2, "labels": "own", "pixel_attack": "PixelAttack(...)", "forwards": "f"}
    return {"dgde": dgde, "pixel_attack": rows, "params": params, "goals": goals}


def test_pixel_speed_is_against_the_best_single_th():
    """Speed against the fastest th that flips an image (not the sum over th, not a th that
    never succeeds); pixels against the fewest-pixel th on the images both flipped."""
    from defend.bench.versus_art import pixel_goals

    rows = [
        _attack_row("PixelAttack th=1", [True, False], [1.0, 1.0], 6.0),
        _attack_row("PixelAttack th=5", [False, True], [5.0, 5.0], 4.0),
        _attack_row("PixelAttack th=20", [False, False], [20.0, 20.0], 3.0),
    ]
    goals = pixel_goals(DGDE_ROW, rows)  # the sum, 13 s, would be 13x: met
    assert goals["speed"]["against"] == "PixelAttack th=5"
    assert goals["speed"]["speedup"] == pytest.approx(4.0) and goals["speed"]["met"] is False
    assert goals["speed"]["status"] == "not met"
    pixels = goals["pixels"]  # th=1 flipped image 0 with 1 pixel; DGDE needed 40 there
    assert pixels["against"] == "PixelAttack th=1" and pixels["images"] == 1
    assert (pixels["dgde"], pixels["art"], pixels["met"]) == (40.0, 1.0, False)
    fast = [{**r, "s_per_image": 12.0} for r in rows[:2]]
    assert pixel_goals(DGDE_ROW, fast)["speed"]["met"] is True  # 12x a succeeding th


def test_projected_rows_take_no_part_in_the_goals():
    """A projected row (measured False) is labelled so and never read by a goal, however
    good it would look."""
    from defend.bench.versus_art import PROJECTED, pixel_goals

    rows = [_attack_row("PixelAttack th=1", [True, False], [1.0, 1.0], 20.0)]
    projected = {
        **_attack_row(f"PixelAttack th=None, {PROJECTED}", [True, True], [50.0, 50.0], 1e4),
        "measured": False,
    }
    assert pixel_goals(DGDE_ROW, [*rows, projected]) == pixel_goals(DGDE_ROW, rows)
    with pytest.raises(ValueError, match="measured"):
        pixel_goals(DGDE_ROW, [projected])


def test_forward_counter_and_interleaving():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with count_forward_rows(model) as counter:
        model(torch.zeros(3, 4))
        model[0](torch.zeros(2, 4))  # ART's wrapper calls a Sequential's layers one by one
    assert counter[0] == 5
    model(torch.zeros(1, 4))
    assert counter[0] == 5  # the hook is gone after the block
    order: list[str] = []
    times = interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, torch.device("cpu")
    )
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DefendError, match="defend bench models"):
        bench_attacks(tmp_path / "nowhere")
    result = CliRunner().invoke(app, ["bench", "attacks", "--help"])
    assert result.exit_code == 0 and "--pixel-th" in result.output


def test_strength_is_the_attacks_own(tiny):
    """The bench's strength of any perturbation: HallucinationAttack.effect in goal's region."""
    attack = HallucinationAttack(tiny["unet"], max_iter=2, patience=0, batch_size=2)
    x = tiny["recon_x"]
    x_adv = attack.generate(x)
    strength = hallucination_strength(attack, x, x_adv)
    assert strength.shape == (len(x),)
    np.testing.assert_allclose(strength, attack.report["strength"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hallucination_strength(attack, x, x), 0, atol=1e-6)


def test_seg_floor_attacks_the_prediction_without_masks(tiny):
    row = seg_pgd_vs_floor(tiny["seg"], tiny["seg_x"], None, max_iter=1, repeats=1)
    assert positive(row["attack_s"]) and positive(row["floor_s"]) and "BCE" in row["floor"]


def test_bench_dgde_follows_dgde(tiny, monkeypatch):
    """A benchmark setting DGDE no longer takes is dropped; the rest are DGDE's defaults."""
    monkeypatch.setattr(floors, "BENCH_DGDE", {"population": 6, "retired_option": 1})
    attack, params = floors.bench_dgde(tiny["classifier"], 2, {"patience": 3})
    assert params == {"population": 6, "batch_size": 2, "patience": 3}
    assert attack.max_queries == DGDE(tiny["classifier"]).max_queries


def test_jsonable_is_the_io_one():
    assert jsonable is defend.io.jsonable


@pytest.fixture
def demo_dir(tmp_path, synth_dir, unet_ckpt, varnet_ckpt, seg_ckpt, cls_ckpt):
    """A folder laid out as `defend bench models` writes it (links to the session's models)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data").symlink_to(synth_dir)
    for name, ckpt in (
        ("recon-unet", unet_ckpt),
        ("recon-varnet", varnet_ckpt),
        ("seg", seg_ckpt),
        ("cls", cls_ckpt),
    ):
        (run_dir / f"{name}.pt").symlink_to(Path(ckpt))
    return run_dir


def test_bench_attacks_command_on_a_demo_folder(tmp_path, demo_dir):
    """`defend bench attacks` end to end on a folder laid out as `defend bench models` writes it."""
    run_dir = demo_dir
    out = tmp_path / "bench.json"
    args = ["bench", "attacks", str(run_dir), "--n", "2", "--iters", "1", "--repeats", "1"]
    args += ["--pixel-th", "1", "--pixel-max-iter", "1", "--dgde-patience", "2"]
    args += ["--dgde-max-queries", "100", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for part in ("1. Attack wall time", "2. HallucinationAttack vs ART", "3. DGDE vs ART", "total"):
        assert part in result.output
    saved = json.loads(out.read_text())
    assert saved["config"]["n"] == 2 and saved["config"]["pixel_th"] == [1]
    assert f"cpu kernels {saved['config']['cpu_kernels']}, torch" in result.output
    assert [row["name"] for row in saved["floors"]][-1] == "dgde"
    assert saved["art_pixel"]["params"]["dgde"]["max_queries"] == 100


# ---------------------------------------------------------------- defend bench train

TINY_TRAIN = {"batches": 1, "batch_size": 2, "repeats": 1, "steps": 1, "device": "cpu"}


def test_bench_train_rows_per_method(synth_dir):
    """A row per (task, method) of defend train --adversarial, with positive times."""
    result = bench_train(synth_dir, **TINY_TRAIN)
    rows = result["rows"]
    expected = [(name, m) for name in TRAIN_BENCH_TASKS for m in METHODS[name.split("/")[0]]]
    assert [(row["task"], row["method"]) for row in rows] == expected
    for row in rows:
        for key in ("standard_s", "method_s", "ratio", "cpu_ratio", "ratio_over_ideal"):
            assert positive(row[key]), (row["task"], row["method"], key, row[key])
        assert row["steps"] == 1 and row["ideal"] == 2 and row["goal"] == pytest.approx(2.2)
        assert isinstance(row["met"], bool) and len(row["ratios"]) == 1
        own = row["inherent_ideal"]
        assert own > 2 if row["method"] in ("trades", "hallucination") else own == 2
    assert [info["name"] for info in result["tasks"]] == list(TRAIN_BENCH_TASKS)
    for info in result["tasks"]:
        assert info["batches"] == 1 and info["samples"] == 2
        for key in ("forward_fraction", "forward_cpu_fraction", "loader_s", "standard_s"):
            assert positive(info[key]), (info["name"], key)
    assert result["config"]["batches"] == 1 and "not timed" in result["config"]["timed"]
    text = format_train_bench(result)
    for part in ("recon/varnet", "hallucination", "trades", "ideal", "goal", "own ideal", "cpu r"):
        assert part in text
    assert f"cpu kernels {result['config']['cpu_kernels']}, torch" in text
    json.dumps(jsonable(result), allow_nan=False)


def test_bench_train_command_writes_json_and_table(synth_dir, tmp_path):
    out = tmp_path / "sub" / "train.json"
    args = ["bench", "train", str(synth_dir), "--tasks", "cls", "--out", str(out)]
    args += ["--batches", "1", "--batch-size", "2", "--repeats", "1", "--steps", "2"]
    args += ["--device", "cpu"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for part in ("defend bench train", "cls", "pgd", "fgsm-rs", "trades", "total", "wrote"):
        assert part in result.output
    saved = json.loads(out.read_text())
    assert [row["method"] for row in saved["rows"]] == ["pgd", "fgsm-rs", "trades"]
    assert [row["steps"] for row in saved["rows"]] == [2, 1, 2]  # fgsm-rs is one step
    assert saved["config"]["threads"] == 1 and saved["config"]["steps"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "--steps must be >= 1"),
        ({"batches": 0}, "--batches must be >= 1"),
        ({"repeats": 0}, "--repeats must be >= 1"),
        ({"tasks": ["mri"]}, "unknown task 'mri'"),
        ({"tasks": []}, "names no task"),
        ({"tasks": ["recon/foo"]}, "unknown reconstruction model 'foo'"),
        ({"data_dir": "/nonexistent"}, "no such data folder"),
    ],
)
def test_bench_train_bad_input(synth_dir, kwargs, message):
    kwargs = {"data_dir": synth_dir, **kwargs}
    with pytest.raises(DefendError, match=message) as info:
        bench_train(**kwargs)
    assert "\n" not in str(info.value)


def test_bench_train_without_data_is_one_line(tmp_path):
    """The real entry point: a folder without data is one line and exit 2."""
    run = defend_main("bench", "train", tmp_path, "--tasks", "recon/unet")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "no train split" in lines[0], run.stderr


# ---------------------------------------------------------------- defend bench certify


def test_bench_certify_command_on_a_demo_folder(tmp_path, demo_dir):
    """`defend bench certify`: a row per demo model with both throughputs measured in the
    run, and ART's smoothed PREDICT beside ours for the classifier."""
    run_dir = demo_dir
    out = tmp_path / "certify.json"
    args = ["bench", "certify", str(run_dir), "--samples", "1", "--n0", "8", "--n", "240"]
    args += ["--batch-size", "120", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["recon-unet", "recon-varnet", "seg", "cls"]
    assert all(r["samples_per_s"] > 0 and r["floor_per_s"] > 0 for r in rows)
    for row in rows[2:]:  # seg, cls: n0 + n draws per sample, counted
        assert row["draws"] == 8 + 240 and row["draws_each"] == [8 + 240]
    for row in rows[:2]:  # recon: the bound's n draws (and its clean forward) only if kept
        (draws,) = row["draws_each"]
        assert draws == (8 + 2 * 240 if row["abstained"] else 8 + 3 * 240 + 1), row
    assert 0 <= rows[3]["agreement"] <= 1 and "ratio" in result.output


class FlipAfterSelection:
    """A toy base for center smoothing whose outputs jump after the first ``n0 + n`` rows of
    every ``n0 + 2 n``: the candidates agree (radius 0), the centre's test draws all fall
    outside, so the centre abstains, deterministically. Counts the rows it is sent."""

    def __init__(self, n0: int, n: int) -> None:
        self.n0, self.n, self.rows = n0, n, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        index = self.rows + torch.arange(len(x))
        self.rows += len(x)
        far = (index % (self.n0 + 2 * self.n) >= self.n0 + self.n).float()
        return (100.0 * far)[:, None, None].expand(len(x), 4, 4)


def test_bench_certify_counts_the_draws_of_an_abstaining_centre():
    """An abstaining centre stops after n0 + 2n draws: the bench divides by those (the rows
    the base saw), not by the n0 + 3n the old formula assumed (the recon "1.487")."""
    from defend.bench.certify_speed import _time_certify, certify_once
    from defend.smooth.core import CenterSmoothing, ImageNoise

    n0, n = 16, 224  # the smallest n center smoothing accepts at delta 0.1, alpha 0.025
    base = FlipAfterSelection(n0, n)
    smooth = CenterSmoothing(base, 0.05, ImageNoise(0.05), delta=0.1)
    x = np.zeros((2, 1, 4, 4), dtype=np.float32)
    seconds, rows, abstained = certify_once(smooth, "recon", x[0], n0, n, 64)
    assert abstained and rows == base.rows == n0 + 2 * n and seconds > 0
    assert smooth.base is base  # the counting wrapper is gone

    floor_rows = []

    def floor(batch: torch.Tensor) -> torch.Tensor:
        floor_rows.append(len(batch))
        return batch

    row = _time_certify(smooth, "recon", floor, x, torch.as_tensor(x), (n0, n, 64), 1)
    assert row["draws_each"] == [n0 + 2 * n] * 2 and row["abstained"] == 2
    assert row["draws"] == 2 * (n0 + 2 * n) < row["formula_draws"] == 2 * (n0 + 3 * n)
    assert sum(floor_rows) == 2 * row["draws"]  # the floor replays the same rows, both rounds
    assert row["ratio"] == pytest.approx(row["samples_per_s"] / row["floor_per_s"])
