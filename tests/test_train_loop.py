"""The shared training loop: learning, checkpoints, resume, objectives, errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from defend.errors import CheckpointError, DefendError
from defend.io import load_checkpoint, load_weights_file, save_checkpoint
from defend.tasks import ClsTask
from defend.train import Adversarial, Objective, TrainConfig, best_path, fit
from defend.train.loop import run_config
from defend.train.methods import image_objective
from defend.train.perturb import linf_pgd


class Blobs(Dataset):
    """Two Gaussian classes in 8-d: a task a linear model learns in a few epochs."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) + 2.0 * (self.y[:, None].float() - 0.5)
        self.classes = ["a", "b"]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"input": self.x[i], "target": self.y[i]}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


META = {"model_config": {"name": "mlp"}, "data": {"input_shape": [8], "classes": ["a", "b"]}}


def run(tmp_path, epochs: int, name: str = "m.pt", task=None, meta_run=None, **kw):
    config = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, progress=False)
    model = make_model()
    out = tmp_path / name
    meta = META if meta_run is None else {**META, "run": run_config(config, **meta_run)}
    history = fit(
        task or ClsTask(),
        model,
        Blobs(128, 0),
        Blobs(64, 1),
        config,
        out,
        meta=meta,
        log=lambda s: None,
        **kw,
    )
    return model, history, out


def test_fit_learns_and_writes_checkpoint(tmp_path):
    _, history, out = run(tmp_path, epochs=4)
    assert history[-1]["accuracy"] > 0.8
    assert history[-1]["auroc"] > 0.85
    ckpt = load_checkpoint(out, "cls")
    assert ckpt["epoch"] == 4 and ckpt["model_config"] == META["model_config"]
    assert set(ckpt["metrics"]) == {"accuracy", "auroc"}
    assert best_path(out).exists()
    torch.load(out, weights_only=True)  # plain tensors and primitives only


class Interrupt(Exception):
    pass


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1/"):
        raise Interrupt  # as Ctrl-C after the first epoch's checkpoint


def test_resume_gives_the_same_weights(tmp_path):
    straight, _, _ = run(tmp_path, epochs=3, name="a.pt")
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False)
    out = tmp_path / "b.pt"
    with pytest.raises(Interrupt):
        fit(
            ClsTask(),
            make_model(),
            Blobs(128, 0),
            Blobs(64, 1),
            config,
            out,
            meta=META,
            log=_stop_after_first_epoch,
        )
    assert load_checkpoint(out)["epoch"] == 1
    resumed, history, _ = run(tmp_path, epochs=3, name="b.pt")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q)


def test_same_seed_same_numbers(tmp_path):
    _, h1, _ = run(tmp_path, epochs=2, name="a.pt")
    _, h2, _ = run(tmp_path, epochs=2, name="b.pt")
    assert h1 == h2


def test_objective_makes_inputs_in_eval_mode_and_trains_on_them(tmp_path):
    calls = []

    def shift(task, model, batch, eps, steps):
        calls.append(model.training)
        return batch["input"] + eps

    objective = Adversarial(shift, name="shift", eps=0.5, steps=1)
    _, history, out = run(tmp_path, epochs=1, objective=objective)
    assert calls and not any(calls)  # made in eval mode ...
    stored = load_checkpoint(out)["run"]["objective"]
    assert stored["name"] == "shift" and stored["eps"] == 0.5 and stored["mix"] == 1.0
    _, standard, _ = run(tmp_path, epochs=1, name="std.pt")
    assert history[0]["train_loss"] != standard[0]["train_loss"]  # ... and trained on
    assert load_checkpoint(tmp_path / "std.pt")["run"]["objective"] == {"name": "standard"}
    with pytest.raises(CheckpointError, match="objective.name shift -> standard"):
        run(tmp_path, epochs=1)  # resuming with another objective is refused


def test_checkpoint_errors(tmp_path):
    _, _, out = run(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="'cls' checkpoint, expected 'seg'"):
        load_checkpoint(out, "seg")
    raw = tmp_path / "raw.pt"
    torch.save(make_model().state_dict(), raw)
    with pytest.raises(CheckpointError, match="not a defend checkpoint"):
        load_checkpoint(raw)
    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"model": make_model()}, f)
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_weights_file(pickled)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(out.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_another_model_config(tmp_path):
    _, _, out = run(tmp_path, epochs=1)
    ckpt = load_checkpoint(out)
    save_checkpoint(out, {**ckpt, "model_config": {"name": "other"}})
    with pytest.raises(CheckpointError, match="another model config .name other -> mlp"):
        run(tmp_path, epochs=2)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"seed": 1}, "seed 0 -> 1"),
        ({"lr": 3e-2}, "lr 0.01 -> 0.03"),
        ({"batch_size": 8}, "batch_size 16 -> 8"),
        ({"epochs": 5}, "epochs 1 -> 5"),
    ],
)
def test_resume_refuses_other_settings_naming_them(tmp_path, change, named):
    _, _, out = run(tmp_path, epochs=1)
    before = out.read_bytes()
    settings = {"epochs": 1, "batch_size": 16, "lr": 1e-2, "progress": False, **change}
    with pytest.raises(CheckpointError) as exc:
        fit(
            ClsTask(),
            make_model(),
            Blobs(128, 0),
            Blobs(64, 1),
            TrainConfig(**settings),
            out,
            meta=META,
            log=lambda s: None,
        )
    assert named in str(exc.value) and "\n" not in str(exc.value)
    assert out.read_bytes() == before  # nothing written


def test_resume_refuses_other_data(tmp_path):
    _, _, out = run(tmp_path, epochs=1, meta_run={"data": "a"})
    with pytest.raises(CheckpointError, match="data a -> b"):
        run(tmp_path, epochs=1, meta_run={"data": "b"})
    _, history, _ = run(tmp_path, epochs=1, meta_run={"data": "a"})  # same: nothing to do
    assert len(history) == 1


def test_zero_epochs_evaluates_without_training(tmp_path):
    model, history, out = run(tmp_path, epochs=0)
    ckpt = load_checkpoint(out, "cls")
    assert ckpt["epoch"] == 0 and history == ckpt["history"] and len(history) == 1
    assert set(ckpt["metrics"]) == {"accuracy", "auroc"}
    for p, q in zip(make_model().state_dict().values(), ckpt["state_dict"].values(), strict=True):
        torch.testing.assert_close(p, q)  # the given weights, untouched


def test_bad_config_is_a_clear_error():
    with pytest.raises(DefendError, match="epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(DefendError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(DefendError, match="--lr must be a finite number > 0"):
        TrainConfig(lr=float("inf"))
    with pytest.raises(DefendError, match="--workers must be >= 0"):
        TrainConfig(num_workers=-1)


class NanFirstTask(ClsTask):
    """Validation accuracy NaN in the first epoch (as Dice with no non-empty mask), then real."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, model, batches):
        metrics = super().evaluate(model, batches)
        self.calls += 1
        return {**metrics, "accuracy": float("nan")} if self.calls == 1 else metrics


def test_nan_validation_metric_does_not_freeze_the_best_checkpoint(tmp_path):
    _, _, out = run(tmp_path, epochs=3, name="nan.pt", task=NanFirstTask())
    best = load_checkpoint(best_path(out))
    assert best["epoch"] > 1 and best["metrics"]["accuracy"] == best["metrics"]["accuracy"]


class Features(Dataset):
    """Tsipras et al.'s toy: one robust feature (+-1, noise 0.3) and 7 weak ones (+-0.4, noise
    1): a standard model leans on the weak ones, which an l-inf eps of 0.5 flips."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        sign = 2.0 * self.y[:, None].float() - 1
        robust = sign + 0.3 * torch.randn(n, 1, generator=g)
        weak = 0.4 * sign + torch.randn(n, 7, generator=g)
        self.x = torch.cat([robust, weak], dim=1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"input": self.x[i], "target": self.y[i]}


def _pgd_accuracy(model, data: Features, eps: float) -> float:
    batch = {"input": data.x, "target": data.y}
    model.eval()
    x = linf_pgd(ClsTask(), model, batch, eps, steps=10, step=eps / 4, clip=None)
    with torch.no_grad():
        return float((model(x).argmax(1) == data.y).float().mean())


def test_pgd_training_is_more_robust_than_standard_training(tmp_path):
    """A defence must lower attack success: PGD adversarial training against standard
    training on the same data, attacked by the same 10-step PGD at the training eps."""
    eps = 0.5
    config = TrainConfig(epochs=8, batch_size=32, lr=1e-2, progress=False)
    train, val = Features(512, 0), Features(256, 1)
    accuracy = {}
    pgd = image_objective("pgd", eps, steps=5, clip=None)
    for name, objective in (("standard", None), ("pgd", pgd)):
        model = make_model()
        fit(
            ClsTask(),
            model,
            train,
            val,
            config,
            tmp_path / f"{name}.pt",
            meta=META,
            objective=objective,
            log=lambda s: None,
        )
        accuracy[name] = _pgd_accuracy(model, val, eps)
    assert accuracy["pgd"] > 0.85 and accuracy["pgd"] > accuracy["standard"] + 0.1, accuracy


class _Scripted(Objective):
    """Standard training validated by scripted numbers: a robust metric (lower is better) and,
    through :class:`_ScriptedClean`, the clean accuracy; a clean floor of ``margin``."""

    name = "scripted"

    def __init__(self, robust, margin) -> None:
        self.robust, self.margin = iter(robust), margin

    def robust_metrics(self, task, model, batches):
        return {"robust_strength": next(self.robust)}

    def monitor(self, task):
        return "robust_strength", False

    def floor(self, task):
        return None if self.margin is None else ("accuracy", self.margin)


class _ScriptedClean(ClsTask):
    def __init__(self, clean) -> None:
        self.clean = iter(clean)

    def evaluate(self, model, batches):
        return {**super().evaluate(model, batches), "accuracy": next(self.clean)}


@pytest.mark.parametrize(
    ("clean", "robust", "margin", "best"),
    [
        # epoch 3 is the most robust because its clean quality collapsed: not chosen
        ((0.90, 0.92, 0.60, 0.91), (0.5, 0.4, 0.1, 0.3), 0.03, 4),
        ((0.90, 0.92, 0.60, 0.91), (0.5, 0.4, 0.1, 0.3), None, 3),  # no floor: it is
        # epoch 1 falls below the floor when epoch 2 raises the best clean value
        ((0.50, 0.90, 0.89), (0.1, 0.6, 0.7), 0.03, 2),
        ((0.50, 0.90, 0.89), (0.1, 0.6, 0.7), float("inf"), 1),
    ],
)
def test_best_checkpoint_keeps_a_clean_floor(tmp_path, clean, robust, margin, best):
    out = tmp_path / "m.pt"
    config = TrainConfig(epochs=len(clean), batch_size=16, lr=1e-2, progress=False)
    fit(
        _ScriptedClean(clean), make_model(), Blobs(128, 0), Blobs(64, 1), config, out,
        meta=META, objective=_Scripted(robust, margin), log=lambda s: None,
    )  # fmt: skip
    kept = load_checkpoint(best_path(out))
    assert kept["epoch"] == best and load_checkpoint(out)["best"]["epoch"] == best
    floor = kept["monitor"].get("clean_floor")
    assert floor == (None if margin is None else {"metric": "accuracy", "margin": margin})


def test_above_floor():
    from defend.train.guards import above_floor

    history = [{"ssim": 0.9}, {"ssim": float("nan")}, {"ssim": 0.8}]
    assert above_floor(history, history[0], ("ssim", 0.0))
    assert not above_floor(history, history[2], ("ssim", 0.05))
    assert above_floor(history, history[2], ("ssim", 0.1))
    assert not above_floor(history, history[1], ("ssim", 1.0))  # NaN: below
    assert above_floor([{"ssim": float("nan")}], {"ssim": float("nan")}, ("ssim", 0.1))
    assert above_floor(history, history[2], None)


def _cpu_autocast(device: torch.device, enabled: bool = True):
    """CUDA's bfloat16 autocast, on the CPU (``defend.device.autocast`` is a no-op there)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def test_validation_is_full_precision_under_amp(monkeypatch):
    """Robust validation's attack sees float32 outputs and its metrics are those of amp off,
    with amp on under a bfloat16 autocast (CUDA's, simulated on the CPU); the training steps,
    their attacks included, do run under it (so the check can fire)."""
    from defend.train import loop

    monkeypatch.setattr(loop, "autocast", _cpu_autocast)
    dtypes: list[torch.dtype] = []

    def watched(attack):
        def run(task, model, batch, eps, steps):
            with torch.no_grad():
                dtypes.append(task.forward(model, batch).dtype)
            return attack(task, model, batch, eps, steps)

        return run

    pgd = image_objective("pgd", 0.5, steps=3, clip=None)
    pgd.perturb, pgd.val_perturb = watched(pgd.perturb), watched(pgd.val_perturb)
    model, metrics = make_model(), {}
    for amp in (True, False):
        torch.manual_seed(0)
        config = TrainConfig(batch_size=16, amp=amp)
        metrics[amp] = loop.evaluate(
            ClsTask(), model, Features(64, 1), config, torch.device("cpu"), pgd
        )
    assert dtypes == [torch.float32] * 8 and "robust_accuracy" in metrics[True]
    assert metrics[True] == metrics[False]
    dtypes.clear()
    config = TrainConfig(epochs=1, batch_size=16, amp=True, progress=False)
    fit(ClsTask(), make_model(), Blobs(32, 0), Blobs(16, 1), config, None, meta=META,
        objective=pgd, log=lambda s: None)  # fmt: skip
    assert dtypes == [torch.bfloat16] * 2 + [torch.float32]  # 2 training batches, validation
