"""One memory budget (defend.memory): sizes parsed, per-sample bytes measured, and chunked
passes (smoothing, EOT) that give the numbers of an unchunked one."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import defend
from defend.adaptive.eot import eot_estimator
from defend.errors import DefendError
from defend.memory import memory_budget, parse_bytes, sample_bytes, samples_per_pass


@pytest.mark.parametrize(
    ("text", "value"),
    [("8GiB", 8 * 2**30), ("512MiB", 512 * 2**20), ("2G", 2 * 2**30), ("1.5g", 3 * 2**29),
     ("4096", 4096), (100, 100)],
)  # fmt: skip
def test_sizes_parse(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "8 parsecs", "0GiB", "-1"])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(DefendError, match="memory must be"):
        parse_bytes(text)


def test_budget_reads_defend_memory_and_caps_the_cpu(monkeypatch):
    monkeypatch.setenv("DEFEND_MEMORY", "3GiB")
    assert memory_budget("cpu") == 3 * 2**30
    monkeypatch.delenv("DEFEND_MEMORY")
    assert 0 < memory_budget("cpu") <= 2 * 2**30


def test_per_sample_bytes_grow_with_the_sample_not_the_weights():
    """What one more sample adds: four times the pixels, about four times the bytes; ten
    times the weights (a wider first layer's kernel), no more bytes than its activations."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    small, large = (sample_bytes(net, torch.rand(1, s, s)) for s in (32, 64))
    assert 3.5 < large / small < 4.5
    wide = nn.Sequential(nn.Conv2d(1, 8, 11, padding=5), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    assert sample_bytes(wide, torch.rand(1, 32, 32)) == pytest.approx(small, rel=0.05)


def test_measuring_a_model_keeps_nothing_of_it_alive():
    """The measurement's graph is freed with the model: a pack hook that kept the saved
    tensors made a cycle through C++ (a ReLU saves its own output), and every model a matrix
    cell loaded stayed in memory (the smoke matrix's peak grew 1.4 -> 2.5 GiB)."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    sample_bytes(net, torch.rand(1, 32, 32))
    alive = weakref.ref(net[0].weight)
    del net
    gc.collect()
    assert alive() is None


def test_every_saved_activation_counts_once_though_none_is_kept():
    """Eight layers, each saving an activation of 8 x 128 x 128 floats (512 KiB) a sample: at
    least 8 x 512 KiB a sample. Without holding the storages until the count, a freed
    activation's address was reused by the next, and the count depended on the allocator
    (an EOT test failed in the full suite only)."""
    layers = [m for _ in range(8) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.Tanh())]
    net = nn.Sequential(*layers)
    assert sample_bytes(net, torch.rand(8, 128, 128)) >= 8 * 8 * 128 * 128 * 4


def test_samples_per_pass_follow_the_budget(monkeypatch):
    net = nn.Conv2d(1, 8, 3, padding=1)
    each = sample_bytes(net, torch.rand(1, 32, 32))
    monkeypatch.setenv("DEFEND_MEMORY", str(10 * each))
    assert samples_per_pass(net, torch.rand(1, 32, 32), "cpu") == 10
    monkeypatch.setenv("DEFEND_MEMORY", "1")
    assert samples_per_pass(net, torch.rand(1, 32, 32), "cpu") == 1  # never 0


def test_chunked_eot_gives_the_unchunked_outputs_and_gradients(unet_ckpt, synth_dir,
                                                               monkeypatch):  # fmt: skip
    """EOT's draws in chunks the budget holds, recomputed in the backward pass: the same
    outputs and input gradients as all draws in one pass (frozen draws, so comparable)."""
    x, y = defend.load_arrays(synth_dir, "recon", "test", 2, checkpoint=unet_ckpt)
    estimator = defend.load_estimator(unet_ckpt)

    def run() -> tuple[np.ndarray, np.ndarray]:
        eot = eot_estimator(estimator, sigma=0.1, draws=6, frozen_seed=4, unit=1.0)
        return eot.predict(x), eot.loss_gradient(x, y)

    whole = run()
    seen = []
    chunk = type(eot_estimator(estimator, 0.1, 1, unit=1.0).model)._chunk

    def counted(self, inputs, first, count, per_pass):
        seen.append(count)
        return chunk(self, inputs, first, count, per_pass)

    monkeypatch.setattr(type(eot_estimator(estimator, 0.1, 1, unit=1.0).model), "_chunk", counted)
    each = sample_bytes(
        eot_estimator(estimator, 0.1, 1, unit=1.0).model._noisy_forward, torch.as_tensor(x[0])
    )
    monkeypatch.setenv("DEFEND_MEMORY", str(5 * each))  # 2 inputs x 2 draws a pass
    chunked = run()
    assert max(seen) == 2 and len(seen) > 3  # chunks of 2 draws, and recomputed
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-4, atol=1e-7)
    assert np.abs(whole[1]).max() > 0
    monkeypatch.setenv("DEFEND_MEMORY", str(each + each // 2))  # one noisy copy a pass
    seen.clear()
    split = run()
    assert max(seen) == 1  # one draw a chunk, its two inputs in two passes
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split[1], whole[1], rtol=1e-4, atol=1e-7)


def test_fresh_eot_keeps_a_fixed_attack_batch_and_measuring_draws_nothing(unet_ckpt, synth_dir,
                                                                          monkeypatch):  # fmt: skip
    """EOT's fresh noise follows the attack's batch, so that batch must not follow the
    memory budget; and measuring a size consumes no random numbers."""
    from defend.attacks.torch_attack import attack_batch

    x, _ = defend.load_arrays(synth_dir, "recon", "test", 8, checkpoint=unet_ckpt)
    x = np.concatenate([x, x, x])  # 24 samples
    estimator = defend.load_estimator(unet_ckpt)
    monkeypatch.setenv("DEFEND_MEMORY", "1")
    assert attack_batch(eot_estimator(estimator, 0.1, 4, unit=1.0), x) == 16
    assert attack_batch(eot_estimator(estimator, 0.1, 4, frozen_seed=0, unit=1.0), x) == 1
    torch.manual_seed(3)
    samples_per_pass(lambda v: v + torch.randn_like(v), torch.ones(4), "cpu")  # it draws
    assert torch.equal(torch.rand(3), (torch.manual_seed(3), torch.rand(3))[1])


def test_smoothing_without_a_batch_size_takes_the_budget_and_the_same_numbers(
    cls_ckpt, synth_dir, monkeypatch
):
    from defend.smooth import load_smoothed

    smooth = load_smoothed(cls_ckpt, 0.25)
    sizes: list[int] = []
    smooth.on_draws = sizes.append
    x, _ = defend.load_arrays(synth_dir, "cls", "test", 1, checkpoint=cls_ckpt)
    given = smooth.certify(x[0], n0=16, n=64, alpha=0.1, batch_size=64)
    each = sample_bytes(smooth.forward, torch.as_tensor(x[0]), smooth)
    monkeypatch.setenv("DEFEND_MEMORY", str(40 * each))  # 40 copies: 2 blocks of 16
    sizes.clear()
    assert smooth.certify(x[0], n0=16, n=64, alpha=0.1) == given
    assert max(sizes) == 32


def test_the_matrix_run_memory_setting(tmp_path, monkeypatch):
    """``[run] memory`` is checked in one line, sets the budget of each cell, and is not part
    of what a cell measures (a folder resumes under another value)."""
    import os

    from defend.io import write_json
    from defend.matrix import load_config
    from defend.matrix.provenance import cell_config, check_folder
    from defend.memory import budget

    path = tmp_path / "m.toml"
    path.write_text('[run]\nmemory = "lots"\n')
    with pytest.raises(DefendError, match=r"run.memory must be a size such as 8GiB"):
        load_config(path)
    path.write_text('[run]\nmemory = "2GiB"\n')
    config = load_config(path)
    monkeypatch.delenv("DEFEND_MEMORY", raising=False)
    with budget(config["run"]["memory"]):
        assert memory_budget("cpu") == 2 * 2**30
    assert "DEFEND_MEMORY" not in os.environ
    other = load_config("smoke")
    write_json(tmp_path / "run" / "config.json", {k: v for k, v in config.items() if k != "source"})
    config["run"]["memory"] = "4GiB"
    check_folder(tmp_path / "run", config)  # no refusal
    assert "memory" not in cell_config(other, "cls")["run"]
