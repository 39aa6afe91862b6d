"""Models: shapes, units, masking, names, configs and weight loading."""

from __future__ import annotations

import json

import fastmri
import pytest
import torch
from fastmri.data.subsample import EquispacedMaskFractionFunc
from fastmri.models import Unet, VarNet
from torch import nn

from defend.errors import CheckpointError, DefendError
from defend.io import load_weights_file
from defend.models import (
    ReconUnet,
    ReconVarNet,
    build_cls_model,
    build_model,
    build_seg_model,
    default_model_config,
    load_weights,
    zero_filled,
)


def column_mask(width: int, coils: int = 2) -> torch.Tensor:
    """fastMRI's 4x equispaced mask with 8 % centre, seed 0: bool (1, 1, 1, W, 1)."""
    mask, _ = EquispacedMaskFractionFunc([0.08], [4])((coils, width, width, 2), seed=0)
    return mask.bool().unsqueeze(0)


def kspace(batch: int, coils: int, size: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(batch, coils, size, size, 2) * scale


# ----------------------------------------------------------------------------- recon


def test_zero_filled_matches_fastmri_and_crops():
    torch.manual_seed(0)
    k = kspace(2, 3, 32)
    image = zero_filled(k)
    expected = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(k)), dim=1)
    assert image.shape == (2, 32, 32)
    torch.testing.assert_close(image, expected)
    cropped = zero_filled(k, crop=(20, 24))
    assert cropped.shape == (2, 20, 24)
    torch.testing.assert_close(cropped, image[:, 6:26, 4:28])


@pytest.mark.parametrize("size,coils", [(32, 2), (64, 4)])
@pytest.mark.parametrize("model_cls", [ReconUnet, ReconVarNet])
def test_recon_output_shapes(model_cls, size, coils):
    torch.manual_seed(0)
    model = model_cls().eval()
    mask = column_mask(size, coils)
    with torch.no_grad():
        assert model(kspace(2, coils, size), mask).shape == (2, size, size)
        cropped = model_cls(crop=(size // 2, size // 2)).eval()
        assert cropped(kspace(2, coils, size), mask).shape == (2, size // 2, size // 2)


@pytest.mark.parametrize("model_cls", [ReconUnet, ReconVarNet])
def test_recon_masks_itself_and_unsampled_kspace_has_zero_gradient(model_cls):
    torch.manual_seed(0)
    model = model_cls().eval()
    mask = column_mask(32)
    k = kspace(2, 2, 32).requires_grad_(True)
    out = model(k, mask)
    (out * torch.randn_like(out)).sum().backward()
    sampled = mask.reshape(-1)
    assert k.grad[..., ~sampled, :].abs().max() == 0.0
    assert k.grad[..., sampled, :].abs().max() > 0.0
    # masking is the model's job: unmasked k-space gives the same output as masked k-space
    with torch.no_grad():
        torch.testing.assert_close(model(k, mask), model(k * mask, mask))
        # a dataset sample's (1, 1, W, 1) mask and a float mask work too
        torch.testing.assert_close(model(k, mask[0]), model(k, mask.float()))


def test_recon_gradients_are_finite_at_zero_pixels():
    """|z| and the image std have infinite derivatives at 0: the models must not return NaN."""
    mask = column_mask(32)
    for k in (torch.zeros(1, 2, 32, 32, 2), kspace(1, 2, 32)):
        k[0, 0, 0, 0] = 0.0
        k.requires_grad_(True)
        zero_filled(k).sum().backward()
        assert torch.isfinite(k.grad).all()
        k.grad = None
        ReconUnet().eval()(k, mask).square().sum().backward()
        assert torch.isfinite(k.grad).all()


def test_varnet_expands_one_mask_to_the_batch():
    torch.manual_seed(0)
    model = ReconVarNet().eval()
    mask = column_mask(32)
    k = kspace(3, 2, 32)
    with torch.no_grad():
        batched = model(k, mask)
        single = torch.cat([model(k[i : i + 1], mask) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_varnet_refine_unet_runs_on_the_cascades_output():
    """refine_chans > 0: an image U-Net after the cascades (as ReconUnet runs its own); 0, the
    default, is fastMRI's VarNet with its state dict unchanged."""
    torch.manual_seed(0)
    plain = ReconVarNet(crop=(24, 24)).eval()
    refined = ReconVarNet(crop=(24, 24), refine_chans=4, refine_pools=2).eval()
    assert not any(key.startswith("refine") for key in plain.state_dict())
    refined.varnet.load_state_dict(plain.varnet.state_dict())
    mask, k = column_mask(32), kspace(2, 2, 32)
    with torch.no_grad():
        image = plain(k, mask)
        out = refined(k, mask)
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True)
        x = ((image - mean) / (std + 1e-11)).clamp(-6, 6).unsqueeze(1)
        expected = refined.refine(x).squeeze(1) * std + mean
    assert out.shape == (2, 24, 24)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="refine_chans"):
        ReconVarNet(refine_chans=-1)


def test_recon_unet_output_is_in_target_units():
    """Scaling k-space by c scales the reconstruction by c (per-sample normalisation)."""
    torch.manual_seed(0)
    model = ReconUnet().eval()
    mask = column_mask(32)
    k = kspace(2, 2, 32, scale=1e-4)  # raw fastMRI k-space is this small
    with torch.no_grad():
        base = model(k, mask)
        for c in (1e-3, 7.0, 1e4):
            torch.testing.assert_close(model(k * c, mask), base * c, rtol=1e-4, atol=0.0)


# ----------------------------------------------------------------------------- seg / cls


def test_seg_default_is_small_and_outputs_logits():
    torch.manual_seed(0)
    model = build_seg_model(in_channels=1, classes=3).eval()
    assert model.encoder._depth == 3
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    assert build_model("seg", default_model_config("seg", in_channels=1, classes=3)) is not None


@pytest.mark.parametrize(
    "name", ["Unet/vgg16", "Unet/efficientnet-b0", "FPN", "unetplusplus/resnet18"]
)
def test_seg_models_by_name_run(name):
    torch.manual_seed(0)
    model = build_seg_model(name, in_channels=3, classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize(
    "name", ["Unet/resnext101_32x8d", "Unet/efficientnet-b7", "UnetPlusPlus/efficientnet-b7"]
)
def test_seed_paper_seg_models_construct(name):
    """The seed paper's big models build by name, offline (encoder_weights=None)."""
    model = build_seg_model(name, in_channels=3, classes=3)
    assert sum(p.numel() for p in model.parameters()) > 50_000_000


@pytest.mark.parametrize("name", ["Nope/resnet18", "Unet/resnet19", "Unet/tu-not_a_model"])
def test_seg_unknown_names_raise_one_line(name):
    with pytest.raises(DefendError) as info:
        build_seg_model(name)
    message = str(info.value)
    assert "\n" not in message and name.split("/")[-1].replace("tu-", "") in message
    if name.startswith("Nope"):
        assert "Unet" in message and "FPN" in message
    if name.endswith("resnet19"):
        assert "resnet18" in message


def test_cls_models_adapt_input_channels():
    torch.manual_seed(0)
    model = build_cls_model("resnet18", in_channels=1, num_classes=2).eval()
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
        1,
        64,
        (7, 7),
        (2, 2),
    )
    assert conv.padding == (3, 3) and conv.bias is None
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 2)
    rgb = build_cls_model("resnet50", in_channels=3, num_classes=4)
    assert rgb.conv1.in_channels == 3 and rgb.fc.out_features == 4
    with pytest.raises(DefendError, match="unknown classification model 'resnet7'"):
        build_cls_model("resnet7")
    with pytest.raises(DefendError, match="no conv1"):
        build_cls_model("squeezenet1_1", in_channels=1)


# ----------------------------------------------------------------------------- configs


def test_default_model_configs_are_json_and_build():
    recon = default_model_config("recon", input_shape=(2, 40, 32, 2), target_shape=(32, 32))
    assert recon == {
        "name": "unet",
        "chans": 16,
        "num_pool_layers": 3,
        "drop_prob": 0.0,
        "crop": [32, 32],
    }
    info = {"input_shape": [2, 32, 32, 2], "target_shape": [32, 32]}
    same = default_model_config("recon", "varnet", **info)
    assert same["crop"] is None and same["num_cascades"] == 4
    seg = default_model_config("seg", input_shape=(1, 32, 32), target_shape=(3, 32, 32))
    assert seg["in_channels"] == 1 and seg["classes"] == 3 and seg["encoder_depth"] == 3
    assert default_model_config("seg", "Unet/vgg16", in_channels=3, classes=2) == {
        "name": "Unet/vgg16",
        "in_channels": 3,
        "classes": 2,
    }
    cls = default_model_config("cls", input_shape=(1, 64, 64), classes=["healthy", "lesion"])
    assert cls == {"name": "resnet18", "in_channels": 1, "num_classes": 2}
    for task, config in (("recon", recon), ("recon", same), ("seg", seg), ("cls", cls)):
        assert json.loads(json.dumps(config)) == config
        assert isinstance(build_model(task, json.loads(json.dumps(config))), nn.Module)
    assert build_model("recon", recon).crop == (32, 32)


def test_build_model_errors_are_one_line():
    for task, config, pattern in [
        ("recon", {"name": "resnet"}, "unknown reconstruction model 'resnet'"),
        ("recon", {"name": "unet", "chanz": 3}, "chanz"),
        ("seg", {"name": "Unet/resnet18", "encoder_depth": 3}, "cannot build"),
        ("cls", {"name": "resnet18", "classes": 3}, "classes"),
        ("denoise", {"name": "unet"}, "unknown task"),
        ("seg", {"chans": 3}, "needs a 'name'"),
    ]:
        with pytest.raises(DefendError, match=pattern) as info:
            build_model(task, config)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- weights


def test_load_weights_bare_fastmri_unet_and_wrappers(tmp_path):
    torch.manual_seed(0)
    bare = Unet(1, 1, chans=8, num_pool_layers=2)
    path = tmp_path / "unet_state_dict.pt"
    torch.save(bare.state_dict(), path)
    for weights in (
        load_weights_file(path),
        {"module." + k: v for k, v in bare.state_dict().items()},
        {"state_dict": {"unet." + k: v for k, v in bare.state_dict().items()}},  # Lightning
    ):
        model = load_weights(ReconUnet(chans=8, num_pool_layers=2), weights, str(path))
        for key, value in bare.state_dict().items():
            assert torch.equal(model.unet.state_dict()[key], value)
    # a ReconUnet's own state dict loads directly
    source = ReconUnet(chans=8, num_pool_layers=2)
    target = load_weights(ReconUnet(chans=8, num_pool_layers=2), source.state_dict(), "x")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_weights_bare_fastmri_varnet():
    torch.manual_seed(0)
    bare = VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
    model = ReconVarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
    load_weights(model, bare.state_dict(), "varnet.pt")
    assert torch.equal(
        model.varnet.cascades[1].model.unet.conv.layers[0].weight,
        bare.cascades[1].model.unet.conv.layers[0].weight,
    )


def test_leaderboard_shaped_state_dicts_load():
    """The leaderboard files are random-init-shaped state dicts of these configs."""
    torch.manual_seed(0)
    # fastMRI's leaderboard U-Net has ~496 M parameters: check its shapes on the meta device
    with torch.device("meta"):
        unet = Unet(1, 1, chans=256, num_pool_layers=4)
        model = build_model("recon", {"name": "unet", "chans": 256, "num_pool_layers": 4})
    load_weights(model, unet.state_dict(), "unet/brain_leaderboard_state_dict.pt")
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        with torch.device("meta"):
            small = ReconUnet(chans=128, num_pool_layers=4)
        load_weights(small, unet.state_dict(), "unet/brain_leaderboard_state_dict.pt")
    assert str(info.value).startswith("unet/brain_leaderboard_state_dict.pt: ")
    assert "(256, 1, 3, 3)" in str(info.value) and "\n" not in str(info.value)

    varnet = VarNet(num_cascades=12, sens_chans=8, sens_pools=4, chans=18, pools=4)
    config = {"name": "varnet", "num_cascades": 12, "pools": 4, "chans": 18}
    model = build_model("recon", {**config, "sens_pools": 4, "sens_chans": 8})
    load_weights(model, varnet.state_dict(), "varnet/knee_leaderboard_state_dict.pt")
    assert torch.equal(model.varnet.cascades[11].dc_weight, varnet.cascades[11].dc_weight)
    assert torch.equal(
        model.varnet.sens_net.norm_unet.unet.conv.layers[0].weight,
        varnet.sens_net.norm_unet.unet.conv.layers[0].weight,
    )


def test_load_weights_mismatches_raise_checkpoint_error():
    weights = VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_weights(ReconVarNet(num_cascades=3, chans=4), weights, "w.pt")
    message = str(info.value)
    assert message.startswith("w.pt: ") and "missing keys" in message and "\n" not in message
    assert "0 unexpected keys" in message
    with pytest.raises(CheckpointError, match="w.pt: weights do not fit the ReconUnet"):
        load_weights(ReconUnet(), weights, "w.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(ReconUnet(), {"epoch": 3}, "w.pt")
