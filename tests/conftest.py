"""Shared fixtures: one tiny synthetic data set and tiny trained models per test session.

Everything is 32 px with 2 coils so that the whole suite stays within CI's CPU budget; the
models are trained just enough for attacks to have something real to attack.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from defend.data import synthesize
from defend.train import TrainConfig, train_model

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, size=32, coils=2, volumes=10, slices=6, seed=0, progress=False)
    return out


def _train(
    synth_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    task: str,
    model: str | None,
    epochs: int,
    lr: float,
    batch_size: int = 8,
    **options,
) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / f"{task}-{model or 'default'}.pt"
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, progress=False)
    train_model(
        task, synth_dir, out, model=model, model_options=options, config=config, log=lambda s: None
    )
    return out


@pytest.fixture(scope="session")
def unet_ckpt(synth_dir, tmp_path_factory) -> Path:
    return _train(synth_dir, tmp_path_factory, "recon", "unet", 3, 3e-3, chans=8, num_pool_layers=2)


@pytest.fixture(scope="session")
def varnet_ckpt(synth_dir, tmp_path_factory) -> Path:
    return _train(synth_dir, tmp_path_factory, "recon", "varnet", 1, 1e-3, num_cascades=2)


@pytest.fixture(scope="session")
def seg_ckpt(synth_dir, tmp_path_factory) -> Path:
    return _train(synth_dir, tmp_path_factory, "seg", None, 5, 3e-3, batch_size=4)


@pytest.fixture(scope="session")
def cls_ckpt(synth_dir, tmp_path_factory) -> Path:
    return _train(synth_dir, tmp_path_factory, "cls", None, 6, 1e-3, batch_size=4)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ``smoke`` matrix run once from an empty cache, progress on: ``{"out", "cache",
    "log": its lines, "stderr": its progress bars}``."""
    from defend.matrix import run_matrix

    root = tmp_path_factory.mktemp("matrix")
    lines: list[str] = []
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run_matrix("smoke", root / "smoke", cache=root / "cache", log=lines.append)
    return {"out": root / "smoke", "cache": root / "cache", "log": lines,
            "stderr": err.getvalue()}  # fmt: skip
