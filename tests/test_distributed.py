"""Multi-process training: ``torchrun --nproc_per_node 2 -m defend.cli train`` on 2 CPU
processes (Gloo) against one process with the same global batch.

Tolerance: weights ``rtol=1e-4, atol=2e-5``, history ``rel=1e-6``, about 10x what was
measured. Both runs compute the same per-sample numbers (the same global batches, random
draws and attacked rows), but two processes add their gradients in an all-reduce:
``(sum(rows 0-3) * 2/8 + sum(rows 4-7) * 2/8) / 2`` rounds differently from the mean of 8
rows (1e-7 on gradients of ~0.04), and AdamW's first steps, which normalise each gradient
entry, turn the rounding of near-zero entries into weight differences: one such step,
emulated in one process, moves weights by 1.6e-6. Measured: the 2-epoch recon run 1.6e-6
on the weights, the adversarial run (k-space PGD, shares of 4 and 5) 2.6e-7, the resumed
run (epoch 2 in two processes) 1.5e-8; the history within one float32 ulp (train loss
1.2e-8 of 0.14, relative 9e-8). The robust validation metrics (``robust_*``) get ``rel=1e-4``:
their attack steps by the *sign* of the gradient, so a gradient entry near zero that the
weights' rounding flips moves the attacked input by two steps there (measured 2026-12-01:
robust SSIM and NMSE 1.2e-5 relative apart, the clean metrics within 1e-7). A real mismatch is
far larger: PGD starts drawn per process instead of for the global batch move the weights by
7e-3.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from defend.cli import app
from defend.data.batching import ShapeBatchSampler
from defend.io import load_checkpoint
from defend.train import TrainConfig, make_objective, train_model
from defend.train.distributed import Share, World, batch_share, global_like
from test_train_loop import Interrupt, _stop_after_first_epoch

runner = CliRunner()
TINY = ["--set", "chans=8", "--set", "num_pool_layers=2", "--no-progress"]
STANDARD = ["--epochs", "2", "--batch-size", "8"]
#: uneven shares (9 = 4 + 5), half of each global batch attacked
ADVERSARIAL = ["--epochs", "1", "--batch-size", "9", "--adversarial", "pgd", "--steps", "1",
               "--mix", "0.5"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(data: Path, out: Path, *args: str) -> str:
    """``defend train recon`` in 2 CPU processes under torchrun; its stdout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), "-m", "defend.cli", "train", "recon",
               "--data", str(data), "--out", str(out), *TINY, *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def one_process(data: Path, out: Path, *args: str) -> None:
    """The same command in this process."""
    result = runner.invoke(
        app, ["train", "recon", "--data", str(data), "--out", str(out), *TINY, *args]
    )
    assert result.exit_code == 0, result.output


def assert_same_run(a: Path, b: Path) -> None:
    """Two checkpoints hold the same run, up to float summation order (module doc)."""
    one, two = load_checkpoint(a), load_checkpoint(b)
    assert one["run"] == two["run"] and one["epoch"] == two["epoch"]
    for key, p in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], p, rtol=1e-4, atol=2e-5, msg=key)
    assert len(one["history"]) == len(two["history"])
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        robust = {k for k in h1 if k.startswith("robust_")}
        clean = {k: v for k, v in h1.items() if k not in robust}
        assert {k: h2[k] for k in clean} == pytest.approx(clean, rel=1e-6, abs=1e-9)
        for key in robust:
            assert h2[key] == pytest.approx(h1[key], rel=1e-4), key


@pytest.fixture(scope="module")
def single(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "m.pt"
    one_process(synth_dir, out, *STANDARD)
    return out


def test_two_processes_train_as_one(synth_dir, tmp_path, single):
    out = tmp_path / "m.pt"
    stdout = torchrun(synth_dir, out, *STANDARD)
    assert_same_run(single, out)
    assert stdout.count("epoch 2/2") == 1 and stdout.count("train: ") == 1  # process 0 logs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.best.pt", "m.pt"]


def test_adversarial_two_processes_train_as_one(synth_dir, tmp_path):
    one_process(synth_dir, tmp_path / "one.pt", *ADVERSARIAL)
    torchrun(synth_dir, tmp_path / "two.pt", *ADVERSARIAL)
    assert_same_run(tmp_path / "one.pt", tmp_path / "two.pt")
    assert "robust_ssim" in load_checkpoint(tmp_path / "two.pt")["history"][0]


def test_resume_under_torchrun(synth_dir, tmp_path, single):
    """Epoch 1 of the 2-epoch run in one process, interrupted; epoch 2 in two processes."""
    out = tmp_path / "m.pt"
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False)
    with pytest.raises(Interrupt):
        train_model("recon", synth_dir, out, model_options={"chans": 8, "num_pool_layers": 2},
                    config=config, log=_stop_after_first_epoch)  # fmt: skip
    assert load_checkpoint(out)["epoch"] == 1
    stdout = torchrun(synth_dir, out, *STANDARD)
    assert stdout.count("resuming after epoch 1") == 1
    assert_same_run(single, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.best.pt", "m.pt"]


def test_sampler_shares_make_up_the_global_batches():
    keys = ["a"] * 11 + ["b"] * 6
    one = ShapeBatchSampler(keys, 4, shuffle=True, seed=3)
    shares = [list(ShapeBatchSampler(keys, 4, True, 3, rank=r, world=3)) for r in range(3)]
    kept = [b for b in one.global_batches() if len(b) >= 3]
    assert [sum(parts, []) for parts in zip(*shares, strict=True)] == kept
    sampler = ShapeBatchSampler(keys, 4, True, 3, rank=2, world=3)
    assert sampler.skipped == 1 and len(sampler) == len(kept) == 4  # "b": 4 + 2 rows
    assert sampler.global_sizes() == [len(b) for b in kept]


def test_draws_and_attacked_rows_do_not_depend_on_the_split():
    x = torch.zeros(9, 3)
    torch.manual_seed(0)
    whole = global_like(x, torch.rand_like)
    objective = make_objective("cls", "pgd", mix=0.5)
    picks = objective.attacked({"input": x})
    parts, picked = [], []
    for rank in range(2):
        share = Share.of(9, World(rank=rank, size=2))
        torch.manual_seed(0)
        with batch_share(share):
            parts.append(global_like(x[share.rows], torch.rand_like))
            picked.append(objective.attacked({"input": x[share.rows]}))
    assert torch.equal(torch.cat(parts), whole) and torch.equal(torch.cat(picked), picks)
    mask, sub = Share.of(9, World(rank=1, size=2)).select(picks)
    assert mask.tolist() == picks[4:].tolist()
    assert sub == Share(2, 5, 5)  # rows 4, 6, 8: the last 3 of the attacked 0, 2, 4, 6, 8


def test_matrix_builds_train_under_torchrun(synth_dir, tmp_path):
    """``run.train_processes = 2``: the matrix's model builds train in 2 torchrun processes
    (its own build, kept apart in the cache) and hold the one-process build's run (the
    tolerance of the module doc)."""
    from defend.matrix import load_config
    from defend.matrix.builds import Builder, model_build

    config = load_config("smoke")
    config["data"]["path"] = str(synth_dir)
    config["recon"]["model_options"] = {"unet": {"chans": 8, "num_pool_layers": 2}}
    builds = {}
    for processes in (1, 2):
        config["run"]["train_processes"] = processes
        build = model_build(config, "recon", "unet", None)
        builds[processes] = Builder(tmp_path / f"cache{processes}", "cpu", log=print).make(build)
    assert builds[1].parent.name != builds[2].parent.name  # another hash: another build
    assert_same_run(builds[1], builds[2])
    assert builds[2].with_suffix(".spec.json").exists()  # what the torchrun processes read
