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
    from defend.detect.examples import make_detection_data

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


def _retrained_in_place(path) -> None:
    """The checkpoint at ``path`` with one weight moved: same name, size and model config."""
    ckpt = load_checkpoint(path)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 0.01
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != "format"})


def test_input_detection_data_keys_on_the_checkpoint_content(cls_ckpt, synth_dir, tmp_path):
    """The input detectors' data: a renamed copy reuses it, a model retrained in place under
    the same name is refused (keyed by name, it was given the old model's attacked images)."""
    from defend.detect.inputs import make_input_detection_data

    model, renamed, folder = tmp_path / "model.pt", tmp_path / "renamed.pt", tmp_path / "det"
    shutil.copy(cls_ckpt, model)
    settings = dict(splits=("val",), n=1, log=lambda s: None)
    make_input_detection_data(model, synth_dir, folder, **settings)
    shutil.copy(model, renamed)
    make_input_detection_data(renamed, synth_dir, folder, **settings)
    _retrained_in_place(model)
    with pytest.raises(DefendError, match="other settings"):
        make_input_detection_data(model, synth_dir, folder, **settings)


def test_denoiser_base_and_starting_weights_key_on_content(cls_ckpt, tmp_path):
    """A denoiser's base model and a training's starting weights enter the run configuration
    (what resume compares) by content: a rename keeps the key, a retrain in place (the same
    name, size and config) changes it."""
    from defend.smooth.denoiser import _base_fingerprint
    from defend.train.from_folder import _weights_fingerprint

    model, renamed = tmp_path / "model.pt", tmp_path / "renamed.pt"
    shutil.copy(cls_ckpt, model)
    shutil.copy(cls_ckpt, renamed)
    ckpt = load_checkpoint(model)
    base, weights = _base_fingerprint(model, ckpt), _weights_fingerprint(model)
    assert _base_fingerprint(renamed, ckpt) == base and _weights_fingerprint(renamed) == weights
    _retrained_in_place(model)
    assert _base_fingerprint(model, load_checkpoint(model)) != base
    assert _weights_fingerprint(model) != weights
