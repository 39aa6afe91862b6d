"""Adversarial training: the methods per task, their attacks, robust validation, the
catastrophic-overfitting guard, resume, and the CLI's settings and errors."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from defend.attacks.budget import KspaceBudget
from defend.cli import app
from defend.data import load_dataset
from defend.errors import DefendError
from defend.io import load_checkpoint
from defend.models import build_model, default_model_config
from defend.tasks import ClsTask, ReconTask
from defend.train import Objective, TrainConfig, best_path, fit, make_objective, train_model
from defend.train.loop import shape_loader
from defend.train.perturb import hallucinate, kspace_pgd, sampled
from test_train_loop import META, Blobs, Features, _pgd_accuracy, make_model

runner = CliRunner()
TINY_UNET = {"chans": 8, "num_pool_layers": 2}


def _recon_batch(synth_dir, n: int = 4):
    data = load_dataset("recon", synth_dir, "val")
    batch = next(iter(shape_loader(data, n)))
    sample = data[0]
    config = default_model_config(
        "recon", "unet", input_shape=sample["input"].shape, target_shape=sample["target"].shape
    )
    torch.manual_seed(0)
    model = build_model("recon", {**config, **TINY_UNET}).eval()
    return ReconTask(), model, batch


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_kspace_pgd_raises_the_error_inside_the_budget(synth_dir, norm):
    task, model, batch = _recon_batch(synth_dir)
    budget = KspaceBudget(0.1, norm)
    torch.manual_seed(0)
    x_adv = kspace_pgd(task, model, batch, budget, steps=5, step=0.5)
    with torch.no_grad():
        clean = task.loss(task.forward(model, batch), batch)
        attacked = task.loss(task.forward(model, {**batch, "input": x_adv}), batch)
    assert (attacked > clean).all(), (clean, attacked)
    delta = x_adv - batch["input"]
    columns = sampled(batch)
    assert (delta * (1 - columns)).abs().max() == 0  # unsampled k-space untouched
    assert delta[..., 1].abs().max() == 0  # real part only, as the attack
    bound = budget.bound(batch["input"], columns)
    if norm == "inf":
        assert (delta.abs() <= bound * (1 + 1e-5)).all()
    else:
        assert (delta.flatten(2).norm(dim=2).view_as(bound) <= bound * (1 + 1e-5)).all()


def test_hallucinate_stays_in_budget_and_moves_the_output(synth_dir):
    task, model, batch = _recon_batch(synth_dir)
    budget = KspaceBudget(0.1)
    torch.manual_seed(0)
    x_adv = hallucinate(task, model, batch, budget, steps=5, step=0.5)
    delta = x_adv - batch["input"]
    assert (delta * (1 - sampled(batch))).abs().max() == 0
    unit = budget.unit(batch["input"], sampled(batch))
    assert (delta.abs() <= 0.1 * unit * (1 + 1e-5)).all()
    with torch.no_grad():
        moved = task.forward(model, {**batch, "input": x_adv}) - task.forward(model, batch)
    assert moved.abs().amax() > 0


def test_eps_warm_up_and_mix():
    objective = make_objective("cls", "pgd", eps=0.03, warmup_epochs=2, mix=0.5)
    assert [objective.eps_at(e) for e in range(4)] == pytest.approx([0.01, 0.02, 0.03, 0.03])
    assert objective.attacked({"input": torch.zeros(8, 3)}).tolist() == [True, False] * 4
    assert objective.attacked({"input": torch.zeros(1, 3)}).tolist() == [True]
    thirds = make_objective("cls", "pgd", mix=1 / 3).attacked({"input": torch.zeros(7, 3)})
    assert thirds.nonzero()[:, 0].tolist() == [0, 3, 6]  # ceil(7 / 3) rows, spread


@pytest.mark.parametrize(
    ("task", "method", "kwargs", "message"),
    [
        ("recon", "trades", {}, "--adversarial trades does not fit task recon (it fits seg, cls)"),
        ("cls", "hallucination", {}, "does not fit task cls (it fits recon)"),
        ("seg", "fgsm", {}, "--adversarial fgsm does not fit task seg: choose pgd, fgsm-rs"),
        ("seg", "fgsm-rs", {"steps": 3}, "fgsm-rs takes one step"),
        ("seg", "pgd", {"eps": 2.0}, "--eps must be in (0, 1]"),
        ("recon", "pgd", {"eps": 2.0}, "relative to the k-space norm and must be <= 1"),
        ("recon", "pgd", {"attack_loss": "bce"}, "--attack-loss is for seg and cls"),
        ("cls", "pgd", {"attack_loss": "bce"}, "--attack-loss bce is for seg"),
        ("cls", "pgd", {"mix": 0.0}, "--mix must be in (0, 1]"),
        ("cls", "pgd", {"steps": 0}, "--steps must be >= 1"),
        ("cls", "pgd", {"beta": -1.0}, "--beta must be"),
        ("cls", "pgd", {"step": float("nan")}, "--step must be a finite number"),
        ("seg", "pgd", {"norm": "2"}, "--norm is for recon"),
        ("recon", "pgd", {"clean_floor": 0.1}, "--clean-floor is for --adversarial halluc"),
        ("cls", "trades", {"clean_floor": 0.1}, "--clean-floor is for recon --adversarial"),
        ("recon", "hallucination", {"clean_floor": -0.1}, "--clean-floor must be >= 0"),
        ("recon", "hallucination", {"clean_floor": float("nan")}, "--clean-floor must be"),
    ],
)
def test_wrong_settings_are_one_line(task, method, kwargs, message):
    with pytest.raises(DefendError, match=None) as error:
        make_objective(task, method, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_hallucination_floor_is_a_setting():
    """Hallucination training's best checkpoint keeps a clean-SSIM floor (default 0.03), stored
    with the objective's settings; the other methods have none."""
    task = ReconTask()
    default = make_objective("recon", "hallucination")
    assert default.floor(task) == ("ssim", 0.03) and default.config()["clean_floor"] == 0.03
    wider = make_objective("recon", "hallucination", clean_floor=0.1)
    assert wider.floor(task) == ("ssim", 0.1) and wider.config()["clean_floor"] == 0.1
    assert make_objective("recon", "pgd").floor(task) is None


def test_cli_wrong_combination_is_one_line_before_data(tmp_path):
    from entry import defend_main, one_line_error

    missing = tmp_path / "nothing"
    one_line_error(
        defend_main("train", "recon", "--data", missing, "--out", tmp_path / "m.pt",
                    "--adversarial", "fgsm-rs"),
        "--adversarial fgsm-rs does not fit task recon",
    )  # fmt: skip
    one_line_error(
        defend_main("train", "cls", "--data", missing, "--out", tmp_path / "m.pt", "--eps", "0.1"),
        "--eps, --steps, --step, --beta and --attack-loss need --adversarial",
    )


@pytest.mark.parametrize(
    ("task", "method", "model", "options", "monitor"),
    [
        ("recon", "hallucination", "unet", TINY_UNET, ("robust_strength", False)),
        ("recon", "pgd", "varnet", {"num_cascades": 2}, ("robust_ssim", True)),
        ("seg", "pgd", None, {}, ("robust_dice", True)),
        ("seg", "trades", None, {}, ("robust_dice", True)),
        ("cls", "fgsm-rs", None, {}, ("robust_accuracy", True)),
    ],
)
def test_each_method_trains_and_validates_robustly(
    synth_dir, tmp_path, task, method, model, options, monitor
):
    out = tmp_path / "m.pt"
    objective = make_objective(task, method, steps=1 if method == "fgsm-rs" else 2)
    history = train_model(
        task,
        synth_dir,
        out,
        model=model,
        model_options=options,
        config=TrainConfig(epochs=1, batch_size=8, progress=False),
        objective=objective,
        log=lambda s: None,
    )
    ckpt = load_checkpoint(out, task)
    floor = {"clean_floor": {"metric": "ssim", "margin": 0.03}} if method == "hallucination" else {}
    assert ckpt["monitor"] == {"metric": monitor[0], "higher_is_better": monitor[1], **floor}
    assert monitor[0] in history[0] and ckpt["best"][monitor[0]] == history[0][monitor[0]]
    assert ckpt["run"]["objective"]["name"] == method
    assert ckpt["run"]["objective"]["eps"] == {"recon": 0.1, "seg": 0.008, "cls": 8 / 255}[task]
    assert best_path(out).exists()


class _Collapsing(Objective):
    """Standard training whose guard reports a robustness that collapses in epoch 3."""

    name = "collapsing"
    guard = True

    def __init__(self, clean=(0.9, 0.9, 0.9, 0.9)) -> None:
        self.values = zip([0.6, 0.7, 0.05, 0.8], clean, strict=True)

    def probe(self, task, model, batch):
        return next(self.values)


def test_guard_rolls_back_and_stops_on_collapse(tmp_path):
    out = tmp_path / "m.pt"
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, progress=False)
    lines: list[str] = []
    history = fit(
        ClsTask(), make_model(), Blobs(128, 0), Blobs(64, 1), config, out, meta=META,
        objective=_Collapsing(), log=lines.append,
    )  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2]
    assert "catastrophic overfitting in epoch 3" in lines[-1] and "0.700 to 0.050" in lines[-1]
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 2 and "kept epoch 2" in ckpt["stopped"]
    # the checkpoint holds epoch 2's weights: the same as a run of 2 epochs ...
    twin = make_model()
    fit(
        ClsTask(), twin, Blobs(128, 0), Blobs(64, 1), config, tmp_path / "twin.pt", meta=META,
        objective=_Collapsing(), log=lambda s: None, resume=False,
    )  # fmt: skip
    # (the twin collapses at the same epoch)
    for p, q in zip(ckpt["state_dict"].values(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q)
    # ... and a resume does nothing
    lines.clear()
    fit(
        ClsTask(), make_model(), Blobs(128, 0), Blobs(64, 1), config, out, meta=META,
        objective=_Collapsing(), log=lines.append,
    )  # fmt: skip
    assert lines == [f"{out}: stopped: {ckpt['stopped'].removeprefix('stopped: ')}; nothing to do"]


def test_guard_goes_on_when_the_clean_metric_dips_too(tmp_path):
    """A dip of clean and robust together (unstable early training) is not catastrophic
    overfitting: the run goes on."""
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, progress=False)
    history = fit(
        ClsTask(), make_model(), Blobs(128, 0), Blobs(64, 1), config, tmp_path / "m.pt",
        meta=META, objective=_Collapsing(clean=(0.8, 0.9, 0.3, 0.9)), log=lambda s: None,
    )  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["probe_accuracy"] for r in history] == [0.8, 0.9, 0.3, 0.9]


def test_adversarial_resume_gives_the_same_weights(tmp_path):
    from test_train_loop import Interrupt, _stop_after_first_epoch

    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False)
    objective = make_objective("cls", "pgd", eps=0.3, steps=2)

    def train(name: str, log) -> torch.nn.Module:
        model = make_model()
        fit(ClsTask(), model, Blobs(128, 0), Blobs(64, 1), config, tmp_path / name, meta=META,
            objective=objective, log=log)  # fmt: skip
        return model

    straight = train("a.pt", lambda s: None)
    with pytest.raises(Interrupt):
        train("b.pt", _stop_after_first_epoch)
    resumed = train("b.pt", lambda s: None)
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["history"] == b["history"] and "robust_accuracy" in a["history"][-1]


@pytest.mark.parametrize("method", ["trades", "fgsm-rs"])
def test_trades_and_fgsm_rs_are_more_robust_than_standard(tmp_path, method):
    """A defence must lower attack success: on Tsipras et al.'s toy, TRADES and FGSM-RS
    against standard training, attacked by the same 10-step PGD at the training eps."""
    from defend.train.methods import image_objective

    eps = 0.5
    config = TrainConfig(epochs=8, batch_size=32, lr=1e-2, progress=False)
    train, val = Features(512, 0), Features(256, 1)
    accuracy = {}
    steps = 1 if method == "fgsm-rs" else 5
    for name, objective in (
        ("standard", None),
        (method, image_objective(method, eps, steps=steps, clip=None)),
    ):
        model = make_model()
        fit(ClsTask(), model, train, val, config, tmp_path / f"{name}.pt", meta=META,
            objective=objective, log=lambda s: None)  # fmt: skip
        accuracy[name] = _pgd_accuracy(model, val, eps)
    assert accuracy[method] > accuracy["standard"] + 0.1, accuracy


def test_info_shows_the_adversarial_settings(synth_dir, tmp_path):
    out = tmp_path / "m.pt"
    result = runner.invoke(
        app,
        ["train", "cls", "--data", str(synth_dir), "--out", str(out), "--epochs", "1",
         "--adversarial", "pgd", "--steps", "2", "--eps", "0.02", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "robust_accuracy" in result.output
    shown = runner.invoke(app, ["info", str(out)]).output
    assert "training  adversarial pgd  eps 0.0200  steps 2" in shown
    assert "best      epoch 1 by robust_accuracy" in shown


@pytest.mark.parametrize(
    ("fixture", "keys"),
    [
        ("unet_ckpt", {"clean_ssim", "hallucination_strength", "art_pgd_ssim"}),
        ("seg_ckpt", {"clean_dice", "fgsm_dice", "pgd10_dice"}),
        ("cls_ckpt", {"clean_accuracy", "pgd20_accuracy", "dgde_success", "dgde_pixels"}),
    ],
)
def test_robustness_attacks_lower_the_clean_metric(request, synth_dir, fixture, keys):
    from defend.bench.robustness import robustness

    result = robustness(request.getfixturevalue(fixture), synth_dir, n=4)
    metrics = result["metrics"]
    assert keys <= set(metrics) and result["objective"] == {"name": "standard"}
    clean = next(v for k, v in metrics.items() if k.startswith("clean_"))
    if "art_pgd_ssim" in metrics:
        assert metrics["art_pgd_ssim"] < clean and metrics["hallucination_strength"] > 0
    elif "pgd10_dice" in metrics:
        assert metrics["pgd10_dice"] <= metrics["fgsm_dice"] < clean
    else:
        assert metrics["pgd20_accuracy"] <= clean


def test_bench_robustness_compares_checkpoints_on_the_same_samples(unet_ckpt, synth_dir, tmp_path):
    import json

    out = tmp_path / "robustness.json"
    result = runner.invoke(
        app,
        ["bench", "robustness", str(unet_ckpt), str(unet_ckpt), "--data", str(synth_dir),
         "--n", "2", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["n"] for r in rows] == [2, 2] and rows[0]["eps"] == pytest.approx(0.1)
    assert rows[0]["metrics"] == rows[1]["metrics"]  # same seed, same samples: same numbers
    table = result.output.splitlines()[-5:]
    assert table[0] == "recon: 2 samples, attack eps 0.1" and table[-1] == f"wrote {out}"
    assert "hallucination_strength" in table[1] and "standard" in table[2]


@pytest.mark.parametrize("eps", [float("nan"), 0.0, -1.0])
def test_robustness_refuses_a_bad_eps_before_reading_anything(tmp_path, eps):
    from defend.bench.robustness import robustness

    with pytest.raises(DefendError, match="--eps must be a finite number > 0"):
        robustness(tmp_path / "missing.pt", tmp_path, eps=eps)


def test_bench_robustness_refuses_checkpoints_of_two_tasks(unet_ckpt, cls_ckpt, tmp_path):
    from entry import defend_main, one_line_error

    out = tmp_path / "r.json"
    one_line_error(
        defend_main("bench", "robustness", unet_ckpt, cls_ckpt, "--data", tmp_path, "--out", out),
        "the checkpoints must be of one task to compare",
    )
    assert not out.exists()


def _bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )


@pytest.mark.parametrize("mix", [1.0, 0.5])
def test_trades_forwards_clean_and_adversarial_batches_separately(mix):
    """TRADES' clean outputs are a clean-only forward in training mode (BatchNorm by clean
    statistics alone), and the running statistics are those of a clean then an adversarial
    forward: one forward of both concatenated fails both checks."""
    from defend.train.methods import image_objective

    objective = image_objective("trades", 0.5, steps=2, clip=None, beta=6.0, mix=mix)
    made = []
    attack = objective.perturb
    objective.perturb = lambda *args: made.append(attack(*args)) or made[-1]
    data = Features(16, 0)
    batch = {"input": data.x, "target": data.y}
    model, twin = _bn_model(), _bn_model()
    model.train()
    losses = objective.loss(ClsTask(), model, batch, epoch=0)
    rows = objective.attacked(batch).nonzero()[:, 0]
    twin.train()
    with torch.no_grad():
        clean, adversarial = twin(data.x), twin(made[0])  # two forwards, clean first
    task = ClsTask()
    divergence = torch.zeros(16).index_put((rows,), task.divergence(adversarial, clean[rows], {}))
    expected = task.loss(clean, batch) + 6.0 * divergence
    torch.testing.assert_close(losses.detach(), expected)
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(model[1], key), getattr(twin[1], key))


def test_trades_share_without_attacked_rows_trains_clean():
    """A process whose share of the global batch holds none of its attacked rows (torchrun,
    ``mix`` < 1) gets the clean losses, and its BatchNorm sees only the clean forward."""
    from defend.train.distributed import Share, batch_share
    from defend.train.methods import image_objective

    objective = image_objective("trades", 0.5, steps=1, clip=None, mix=0.1)
    data = Features(8, 0)
    share = {"input": data.x[4:], "target": data.y[4:]}  # rows 4-7 of 8; row 0 is attacked
    model, twin = _bn_model(), _bn_model()
    model.train(), twin.train()
    with batch_share(Share(4, 8, 8)):
        assert not objective.attacked(share).any()
        losses = objective.loss(ClsTask(), model, share, epoch=0)
    with torch.no_grad():
        expected = ClsTask().loss(twin(share["input"]), share)
    torch.testing.assert_close(losses.detach(), expected)
    assert model[1].num_batches_tracked == 1
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)
