"""``defend import``: weights trained elsewhere become checkpoints that compute what their own
classes compute (issue 32, item 4, "Your own models").

For each kind the upstream model (fastMRI's ``Unet`` / ``VarNet``, an smp segmenter, a
torchvision classifier) is built with a fixed seed and tiny sizes, its state dict saved,
imported through the command line and through :func:`import_model` (the same checkpoint),
read back through defend's normal path (``defend.load_estimator``), and its outputs compared
with the upstream class's on the same inputs; for the fastMRI U-Net, with fastMRI's
image-domain pipeline computed by hand.
"""

from __future__ import annotations

import json

import fastmri
import pytest
import torch
import torchvision
from fastmri.data.transforms import complex_center_crop, normalize_instance
from fastmri.models import Unet, VarNet
from typer.testing import CliRunner

import defend
from defend.cli import app
from defend.data.acquisition import Acquisition
from defend.io import file_sha256, load_checkpoint
from defend.models.upstream import imported_config, imported_model, unet_sizes, varnet_sizes
from defend.train.imported import import_model
from entry import defend_main

runner = CliRunner()


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics other than BatchNorm's initial 0 / 1, so that buffers must load."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save(model: torch.nn.Module, path) -> object:
    torch.save(model.state_dict(), path)
    return path


def import_both(kind, weights, data, tmp_path, options: dict, metrics: bool = False) -> object:
    """Import through ``defend import`` (measuring the val metrics if ``metrics``) and through
    :func:`import_model` (without); the two checkpoints hold the same model, weights and data;
    returns the command's."""
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}
    sets = [a for key, value in text.items() for a in ("--set", f"{key}={value}")]
    out = tmp_path / f"{kind}-imported.pt"
    flag = "--metrics" if metrics else "--no-metrics"
    printed = invoke("import", kind, weights, "--data", data, "--out", out, flag, *sets)
    assert f"checkpoint {out} ({kind}" in printed
    python = import_model(
        kind, weights, data, tmp_path / "py.pt", options, metrics=False, log=lambda s: None
    )
    cli, py = load_checkpoint(out), load_checkpoint(python)
    assert cli["model_config"] == py["model_config"] and cli["data"] == py["data"]
    assert cli["state_dict"].keys() == py["state_dict"].keys()
    for key, value in cli["state_dict"].items():
        assert torch.equal(value, py["state_dict"][key]), key
    assert bool(cli["metrics"]) == metrics and py["metrics"] == {}  # none: info still works
    assert cli["imported"] == py["imported"] and cli["imported"]["kind"] == kind
    assert cli["imported"]["sha256"] == file_sha256(weights)
    assert "imported  " + kind in invoke("info", python)
    return out


def upstream_unet_pipeline(unet: Unet, masked_kspace: torch.Tensor, crop=None) -> torch.Tensor:
    """fastMRI's ``UnetDataTransform`` then ``UnetModule`` on each slice: ``ifft2c``, centre
    crop, ``complex_abs``, ``rss``, ``normalize_instance`` (eps 1e-11), clamp +-6, the U-Net,
    ``out * std + mean``. ``masked_kspace`` (B, coils, H, W, 2) -> (B, h, w)."""
    out = []
    for kspace in masked_kspace:
        image = fastmri.ifft2c(kspace)
        if crop is not None:
            image = complex_center_crop(image, crop)
        image = fastmri.rss(fastmri.complex_abs(image))
        image, mean, std = normalize_instance(image, eps=1e-11)
        with torch.no_grad():
            pred = unet(image.clamp(-6, 6)[None, None])[0, 0]
        out.append(pred * std + mean)
    return torch.stack(out)


def recon_inputs(ckpt, synth_dir, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split's masked k-space (n, coils, H, W, 2) and the checkpoint's evaluation
    mask (1, 1, 1, W, 1) bool."""
    x, _ = defend.load_arrays(synth_dir, "recon", "val", n, checkpoint=ckpt)
    kspace = torch.as_tensor(x)
    acquisition = Acquisition.from_dict(load_checkpoint(ckpt)["data"]["acquisition"])
    mask = torch.as_tensor(acquisition.eval_mask(kspace.shape[-2])).reshape(1, 1, 1, -1, 1)
    return kspace * mask, mask.bool()


def test_fastmri_unet_computes_fastmris_pipeline(synth_dir, tmp_path):
    torch.manual_seed(0)
    unet = Unet(1, 1, chans=8, num_pool_layers=2).eval()
    weights = save(unet, tmp_path / "unet_state_dict.pt")
    ckpt = import_both("fastmri-unet", weights, synth_dir, tmp_path, {"drop_prob": 0.0}, True)
    assert {"ssim", "zf_ssim"} <= set(load_checkpoint(ckpt)["metrics"])
    config = load_checkpoint(ckpt)["model_config"]
    assert config["name"] == "unet" and (config["chans"], config["num_pool_layers"]) == (8, 2)
    kspace, mask = recon_inputs(ckpt, synth_dir)
    estimator = defend.load_estimator(ckpt, device="cpu")
    got = torch.as_tensor(estimator.predict(kspace.numpy()))
    torch.testing.assert_close(got, upstream_unet_pipeline(unet, kspace))
    # fastMRI's centre crop of the complex image before the magnitude (a recon size < H x W)
    info = load_checkpoint(ckpt)["data"]
    state = torch.load(weights, weights_only=True)
    cropped = imported_model(
        "recon", state, imported_config("fastmri-unet", state, {"crop": [24, 20]}, info)
    )
    with torch.no_grad():
        got = cropped(kspace, mask)
    torch.testing.assert_close(got, upstream_unet_pipeline(unet, kspace, (24, 20)))


def test_fastmri_varnet_computes_varnet(synth_dir, tmp_path):
    torch.manual_seed(0)
    varnet = VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2).eval()
    weights = save(varnet, tmp_path / "varnet_state_dict.pt")
    assert varnet_sizes(varnet.state_dict()) == {
        "num_cascades": 2, "sens_chans": 4, "sens_pools": 2, "chans": 4, "pools": 2,
    }  # fmt: skip
    ckpt = import_both("fastmri-varnet", weights, synth_dir, tmp_path, {})
    kspace, mask = recon_inputs(ckpt, synth_dir, n=2)
    got = torch.as_tensor(defend.load_estimator(ckpt, device="cpu").predict(kspace.numpy()))
    with torch.no_grad():  # as run_pretrained_varnet_inference.py calls it
        expected = varnet(kspace, mask.expand(len(kspace), -1, -1, -1, -1))
    torch.testing.assert_close(got, expected)


def test_smp_computes_its_model(synth_dir, tmp_path):
    import segmentation_models_pytorch as smp

    x, y = defend.load_arrays(synth_dir, "seg", "val", 4)
    torch.manual_seed(0)
    model = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None,
                             in_channels=1, classes=y.shape[1], encoder_depth=3,
                             decoder_channels=(32, 16, 8))  # fmt: skip
    weights = save(randomise_batchnorm(model), tmp_path / "smp.pt")
    options = {"name": "Unet/resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    ckpt = import_both("smp", weights, synth_dir, tmp_path, options)
    got = torch.as_tensor(defend.load_estimator(ckpt, device="cpu").predict(x))
    with torch.no_grad():
        torch.testing.assert_close(got, model(torch.as_tensor(x)))


def test_torchvision_computes_its_model_with_its_channels(synth_dir, tmp_path):
    torch.manual_seed(0)
    model = randomise_batchnorm(torchvision.models.resnet18(weights=None, num_classes=2))
    weights = save(model, tmp_path / "resnet18.pt")
    ckpt = import_both("torchvision", weights, synth_dir, tmp_path, {"name": "resnet18"}, True)
    # grayscale images, RGB weights: the checkpoint reads them as 3 channels, as trained
    assert load_checkpoint(ckpt)["data"]["input_shape"][0] == 3
    x, _ = defend.load_arrays(synth_dir, "cls", "val", 4, checkpoint=ckpt)
    assert x.shape[1] == 3
    got = torch.as_tensor(defend.load_estimator(ckpt, device="cpu").predict(x))
    with torch.no_grad():
        torch.testing.assert_close(got, model(torch.as_tensor(x)))


def test_imported_checkpoint_is_attacked(synth_dir, tmp_path):
    torch.manual_seed(0)
    weights = save(Unet(1, 1, chans=4, num_pool_layers=2), tmp_path / "unet.pt")
    ckpt = import_model(
        "fastmri-unet", weights, synth_dir, tmp_path / "u.pt", metrics=False, log=lambda s: None
    )
    invoke("attack", "hallucination", "--checkpoint", ckpt, "--data", synth_dir, "--out",
           tmp_path / "attack", "--n", "2", "--max-iter", "2", "--no-progress")  # fmt: skip
    assert (tmp_path / "attack" / "metrics.json").is_file()


def test_sizes_from_the_state_dict():
    unet = Unet(1, 1, chans=5, num_pool_layers=3)
    assert unet_sizes(unet.state_dict()) == {
        "chans": 5, "num_pool_layers": 3, "in_chans": 1, "out_chans": 1,
    }  # fmt: skip


def test_wrapped_state_dicts_are_read(synth_dir, tmp_path):
    """DataParallel / Lightning prefixes and a nesting key, as training scripts save them."""
    torch.manual_seed(0)
    varnet = VarNet(num_cascades=3, sens_chans=2, sens_pools=1, chans=2, pools=1)
    wrapped = {
        "model_state_dict": {f"module.varnet.{k}": v for k, v in varnet.state_dict().items()}
    }
    weights = tmp_path / "wrapped.pt"
    torch.save({**wrapped, "epoch": 7}, weights)
    ckpt = load_checkpoint(import_model("fastmri-varnet", weights, synth_dir, tmp_path / "v.pt",
                                        metrics=False, log=lambda s: None))  # fmt: skip
    assert ckpt["model_config"] == {
        "name": "varnet", "num_cascades": 3, "sens_chans": 2, "sens_pools": 1, "chans": 2,
        "pools": 1, "crop": None,
    }  # fmt: skip
    for key, value in varnet.state_dict().items():
        assert torch.equal(ckpt["state_dict"][f"varnet.{key}"], value), key


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upstream")
    torch.manual_seed(0)
    save(Unet(1, 1, chans=4, num_pool_layers=2), folder / "unet.pt")
    save(VarNet(num_cascades=1, sens_chans=2, sens_pools=1, chans=2, pools=1), folder / "var.pt")
    save(torchvision.models.resnet18(weights=None, num_classes=2), folder / "resnet18.pt")
    save(Unet(2, 1, chans=4, num_pool_layers=1), folder / "unet2.pt")
    torch.save(Unet(1, 1, chans=4, num_pool_layers=1), folder / "whole-model.pt")  # pickled
    (folder / "notes.txt").write_text("not weights\n")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["fastmri-resnet", "unet.pt"], "unknown kind 'fastmri-resnet' of weights; valid: "),
        (["fastmri-unet", "notes.txt"], "notes.txt: not a PyTorch weight file"),
        (["fastmri-unet", "whole-model.pt"], "not a plain state dict: it holds pickled"),
        (["fastmri-unet", "var.pt"], "a fastMRI VarNet, not a Unet: import it as fastmri-varnet"),
        (["fastmri-unet", "unet2.pt"], "a fastMRI Unet with 2 input and 1 output channels"),
        (["fastmri-unet", "unet.pt", "--set", "chans=8"], "shape mismatch for 'down_sample"),
        (["smp", "unet.pt"], "import smp needs the model's name: "),
        (["torchvision", "resnet18.pt"], "import torchvision needs the model's name: "),
        (["torchvision", "resnet18.pt", "--set", "name=resnet34"], "do not fit the ResNet"),
        (["torchvision", "resnet18.pt", "--set", "name=resnet18", "--set", "classes=3"],
         "--set classes: the label count comes from --data"),
        (["fastmri-unet", "unet.pt", "--set", "crop=[24,24]"], "the model outputs (24, 24)"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_and_write_nothing(
    args, message, upstream_files, synth_dir, tmp_path
):
    kind, name, *sets = args
    out = tmp_path / "out" / "x.pt"
    result = defend_main("import", kind, upstream_files / name, "--data", synth_dir, "--out",
                         out, "--no-metrics", *sets)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_out_is_refused_before_reading(upstream_files, synth_dir, tmp_path):
    weights = upstream_files / "unet.pt"
    before = file_sha256(weights)
    result = defend_main("import", "fastmri-unet", weights, "--data", synth_dir, "--out", weights)
    assert result.returncode == 2 and "unet.pt: is the weights file" in result.stderr
    assert file_sha256(weights) == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = defend_main("import", "fastmri-unet", upstream_files / "unet.pt", "--data",
                         synth_dir, "--out", blocker / "x.pt")  # fmt: skip
    assert result.returncode == 2 and "is a file" in result.stderr
    assert result.stderr.count("\n") == 1 and "train:" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert blocker.read_text() == "x"
