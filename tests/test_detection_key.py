"""Stale results (issue 31, item 8): detection data is keyed on the guarded checkpoint's
content (its SHA-256), not its file name."""

from __future__ import annotations

import shutil

import pytest
import torch

from defend.errors import DefendError
from defend.io import load_checkpoint, save_checkpoint


def test_detection_data_keys_on_the_checkpoint_content(unet_ckpt, synth_dir, tmp_path):
    """A renamed or copied checkpoint reuses its detection data; one retrained in place (the
    same name and model config, other weights) is refused, not silently given the old data."""
    from defend.detect.data import make_detection_data

    model, renamed, folder = tmp_path / "model.pt", tmp_path / "renamed.pt", tmp_path / "det"
    shutil.copy(unet_ckpt, model)
    settings = dict(splits=("val",), n=1, chunk=1, max_iter=1, progress=False)
    made = make_detection_data(model, synth_dir, folder, **settings)
    part = folder / "val" / "part-0000.npz"
    written = part.stat().st_mtime_ns
    shutil.copy(model, renamed)
    again = make_detection_data(renamed, synth_dir, folder, **settings)
    assert again["checkpoint"]["sha256"] == made["checkpoint"]["sha256"]
    assert part.stat().st_mtime_ns == written  # reused, not made again
    ckpt = load_checkpoint(model)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 0.01
    save_checkpoint(model, {k: v for k, v in ckpt.items() if k != "format"})
    assert torch.load(model, weights_only=True)["model_config"] == ckpt["model_config"]
    with pytest.raises(DefendError, match="other checkpoint") as error:
        make_detection_data(model, synth_dir, folder, **settings)
    assert "\n" not in str(error.value)
