"""Weights trained elsewhere as defend models: what ``defend import KIND WEIGHTS`` builds.

| kind               | task  | defend model (``model_config["name"]``)  | sizes from              |
|--------------------|-------|------------------------------------------|-------------------------|
| ``fastmri-unet``   | recon | ``unet`` (:class:`ReconUnet`)            | the state dict's shapes |
| ``fastmri-varnet`` | recon | ``varnet`` (:class:`ReconVarNet`)        | the state dict's shapes |
| ``smp``            | seg   | ``ARCH/ENCODER`` (``--set name=...``)    | ``--set`` (*)           |
| ``torchvision``    | cls   | a torchvision name (``--set name=...``)  | ``--set`` (*)           |

(*) The input channels are those of the first convolution in the state dict, the label
count is the data's.

A fastMRI ``Unet`` state dict (as ``fastmri.models.Unet(1, 1, chans, num_pool_layers)`` and
fastMRI's ``unet/*_leaderboard_state_dict.pt`` hold it) becomes :class:`ReconUnet`, which
computes what fastMRI's image-domain pipeline does (``UnetDataTransform`` then ``UnetModule``):
zero-filled image (``ifft2c``, centre crop, ``complex_abs``, ``rss``), ``normalize_instance``
with eps 1e-11, clamp to +-6, the U-Net, ``out * std + mean``. A fastMRI ``VarNet`` state dict
becomes :class:`ReconVarNet`: ``VarNet(masked_kspace, mask)`` with the low frequencies found from
the mask (``num_low_frequencies=None``, as fastMRI's ``run_pretrained_varnet_inference.py``
calls it), then the centre crop. Segmentation and classification models are smp's and
torchvision's own classes, built with ``encoder_weights=None`` / ``weights=None``.

Nothing here reads data or files: :func:`defend.train.imported.import_model` does, and writes
the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from defend.errors import CheckpointError, DefendError
from defend.models import (
    _prefix_variants,
    _unnest,
    build_model,
    check_model_options,
    default_model_config,
    load_weights,
)

__all__ = [
    "KINDS",
    "first_conv_channels",
    "import_task",
    "imported_config",
    "imported_model",
    "split_options",
    "unet_sizes",
    "varnet_sizes",
]

#: the kinds of weights ``defend import`` takes, and the task of the model each becomes
KINDS: dict[str, str] = {
    "fastmri-unet": "recon",
    "fastmri-varnet": "recon",
    "smp": "seg",
    "torchvision": "cls",
}
#: the defend model a fastMRI kind becomes
_FASTMRI_NAMES = {"fastmri-unet": "unet", "fastmri-varnet": "varnet"}
#: fastMRI's class of each fastMRI kind (in messages)
_CLASSES = {"fastmri-unet": "Unet", "fastmri-varnet": "VarNet"}
#: a key every fastMRI state dict of the kind holds (without wrapper prefixes)
_ANCHORS = {
    "fastmri-unet": "down_sample_layers.0.layers.0.weight",
    "fastmri-varnet": "sens_net.norm_unet.unet.down_sample_layers.0.layers.0.weight",
}
#: what ``--set name=...`` names, per kind that needs it
_NAMED = {"smp": "an smp model ARCH/ENCODER, e.g. --set name=Unet/resnet34",
          "torchvision": "a torchvision classifier, e.g. --set name=resnet50"}  # fmt: skip
#: options the data fixes (the label count): refused in ``--set``
_FROM_DATA = ("classes", "num_classes")


def import_task(kind: str) -> str:
    """The task of the model that weights of ``kind`` become (``recon``, ``seg``, ``cls``).

    Raises:
        DefendError: an unknown kind (the message lists the valid ones).
    """
    if kind not in KINDS:
        raise DefendError(f"unknown kind '{kind}' of weights; valid: {', '.join(KINDS)}")
    return KINDS[kind]


def split_options(kind: str, options: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The model name and the model's own options of ``--set`` pairs, checked.

    Args:
        kind: one of :data:`KINDS`.
        options: ``{key: value}`` (``name`` is the smp / torchvision model; the other keys are
            options of the defend model, e.g. ``encoder_depth``, ``drop_prob``, ``crop``).

    Returns:
        ``(name, options)``: ``name`` None for the fastMRI kinds.

    Raises:
        DefendError: unknown kind, a missing or superfluous ``name``, an option the data fixes
            (``classes``), or one the model does not take or of the wrong kind
            (:class:`~defend.errors.ModelOptionError`).
    """
    task = import_task(kind)
    rest = dict(options)
    name = rest.pop("name", None)
    if kind in _NAMED and not isinstance(name, str):
        raise DefendError(f"import {kind} needs the model's name: {_NAMED[kind]}")
    if kind not in _NAMED and name is not None:
        raise DefendError(f"import {kind}: no --set name (the model is fastMRI's, sized from "
                          "the state dict)")  # fmt: skip
    fixed = [key for key in _FROM_DATA if key in rest]
    if fixed:
        raise DefendError(f"--set {fixed[0]}: the label count comes from --data, not --set")
    model = _FASTMRI_NAMES.get(kind, name)
    check_model_options(task, model, rest)
    return name, rest


def _fastmri_weights(kind: str, weights: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The fastMRI state dict in ``weights`` (unnested, wrapper prefixes stripped)."""
    anchor = _ANCHORS[kind]
    for variant in _prefix_variants(_unnest(weights, source)):
        if anchor in variant:
            return variant
        other = next((k for k, a in _ANCHORS.items() if k != kind and a in variant), None)
        if other is not None:
            raise CheckpointError(f"{source}: holds the weights of a fastMRI {_CLASSES[other]}, "
                                  f"not a {_CLASSES[kind]}: import it as {other}")  # fmt: skip
    raise CheckpointError(f"{source}: not a fastMRI {_CLASSES[kind]} state dict "
                          f"(no '{anchor}' key)")  # fmt: skip


def _count(weights: Mapping[str, Any], pattern: str) -> int:
    """How many consecutive ``i`` from 0 have ``pattern.format(i)`` among the keys."""
    count = 0
    while pattern.format(count) in weights:
        count += 1
    return count


def unet_sizes(weights: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """The sizes of a ``fastmri.models.Unet`` from its state dict's shapes.

    Args:
        weights: the state dict (keys without wrapper prefixes).
        prefix: the U-Net's key prefix, e.g. ``"cascades.0.model.unet."`` inside a VarNet.

    Returns:
        ``{"chans", "num_pool_layers", "in_chans", "out_chans"}``: channels of the first
        convolution, down-sampling layers, input and output channels.

    Raises:
        CheckpointError: a key of the U-Net's layout is missing.
    """
    first = f"{prefix}down_sample_layers.0.layers.0.weight"
    pools = _count(weights, prefix + "down_sample_layers.{}.layers.0.weight")
    last = f"{prefix}up_conv.{pools - 1}.1.weight"
    if pools == 0 or last not in weights:
        raise CheckpointError(f"not a fastMRI Unet below '{prefix}' (no '{first}' or '{last}')")
    shape = tuple(weights[first].shape)
    return {"chans": int(shape[0]), "num_pool_layers": pools, "in_chans": int(shape[1]),
            "out_chans": int(weights[last].shape[0])}  # fmt: skip


def varnet_sizes(weights: Mapping[str, Any]) -> dict[str, int]:
    """The sizes of a ``fastmri.models.VarNet`` from its state dict's shapes.

    Returns:
        ``{"num_cascades", "sens_chans", "sens_pools", "chans", "pools"}``, the keyword
        arguments of ``VarNet`` (and of :class:`~defend.models.ReconVarNet`).

    Raises:
        CheckpointError: no cascade, or a U-Net not of fastMRI's layout.
    """
    cascades = _count(weights, "cascades.{}.dc_weight")
    if cascades == 0:
        raise CheckpointError("not a fastMRI VarNet (no 'cascades.0.dc_weight')")
    sens = unet_sizes(weights, "sens_net.norm_unet.unet.")
    cascade = unet_sizes(weights, "cascades.0.model.unet.")
    return {"num_cascades": cascades, "sens_chans": sens["chans"],
            "sens_pools": sens["num_pool_layers"], "chans": cascade["chans"],
            "pools": cascade["num_pool_layers"]}  # fmt: skip


def _fastmri_sizes(kind: str, weights: Mapping[str, Any], source: str) -> dict[str, int]:
    """The defend model options of a fastMRI state dict, read from its shapes."""
    found = _fastmri_weights(kind, weights, source)
    try:
        if kind == "fastmri-varnet":
            return varnet_sizes(found)
        sizes = unet_sizes(found)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    if (sizes["in_chans"], sizes["out_chans"]) != (1, 1):
        raise CheckpointError(
            f"{source}: a fastMRI Unet with {sizes['in_chans']} input and {sizes['out_chans']} "
            "output channels; fastMRI's image-domain U-Net maps the magnitude image to one "
            "channel (Unet(1, 1, ...))"
        )
    return {"chans": sizes["chans"], "num_pool_layers": sizes["num_pool_layers"]}


def first_conv_channels(weights: Mapping[str, Any], source: str = "weights") -> int | None:
    """The input channels of a network's first convolution: ``shape[1]`` of the first 4-D
    tensor in the state dict (``conv1.weight`` of a ResNet, ``features.0.0.weight``,
    ``encoder.conv1.weight`` of an smp model, ...), or None if it has none."""
    for value in _unnest(weights, source).values():
        if torch.is_tensor(value) and value.ndim == 4:
            return int(value.shape[1])
    return None


def imported_config(
    kind: str,
    weights: Mapping[str, Any],
    options: Mapping[str, Any],
    data_info: Mapping[str, Any],
    source: str = "weights",
) -> dict[str, Any]:
    """The defend model config of weights of ``kind`` on data described by ``data_info``.

    Args:
        kind: one of :data:`KINDS`.
        weights: the state dict (or a dict nesting it), e.g. from
            :func:`defend.io.load_weights_file`.
        options: ``--set`` pairs (:func:`split_options`): they override the sizes read from
            ``weights``.
        data_info: a checkpoint's ``data`` dict (``input_shape``; recon ``target_shape``; seg
            ``classes`` a count; cls ``classes`` the names).
        source: the weights' file, named in messages.

    Returns:
        ``{"name": ..., **kwargs}`` for :func:`~defend.models.build_model`: recon the
        defaults and data crop of ``unet`` / ``varnet`` with the state dict's sizes; seg / cls
        the data's channels and label count.

    Raises:
        DefendError: an unknown kind or bad options; CheckpointError: weights that are not of
            the kind's layout.
    """
    name, rest = split_options(kind, options)
    task = import_task(kind)
    model = _FASTMRI_NAMES.get(kind, name)
    config = default_model_config(task, model, **data_info)
    if kind in _FASTMRI_NAMES:
        config.update(_fastmri_sizes(kind, weights, source))
    config.update(rest)
    return config


def imported_model(
    task: str, weights: Mapping[str, Any], config: Mapping[str, Any], source: str = "weights"
) -> nn.Module:
    """The model of ``config`` holding ``weights``, in eval mode.

    Args:
        task: ``recon``, ``seg`` or ``cls`` (:func:`import_task`).
        weights: the state dict (any wrapper prefix, :func:`~defend.models.load_weights`).
        config: from :func:`imported_config`.
        source: the weights' file, named in messages.

    Returns:
        The model, on the CPU: recon ``model(masked_kspace (B, coils, H, W, 2), mask
        (B or 1, 1, 1, W, 1) bool) -> (B, h, w)`` in the units of the target image; seg
        ``model(x (B, C, H, W)) -> logits (B, K, H, W)``; cls ``model(x) -> logits
        (B, classes)``.

    Raises:
        DefendError: a model the config cannot build (an unknown torchvision name, an smp
            option smp refuses); CheckpointError: weights that do not fit it (the message
            names the first mismatch and the config it was built with).
    """
    model = build_model(task, config)
    try:
        load_weights(model, weights, source)
    except CheckpointError as exc:
        built_as = json.dumps(dict(config))
        raise CheckpointError(f"{exc} (model built as {built_as}; size it with --set "
                              "KEY=VALUE)") from None  # fmt: skip
    return model.eval()
