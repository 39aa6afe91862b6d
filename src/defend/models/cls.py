"""Classification models: torchvision classifiers by name, with any number of input channels."""

from __future__ import annotations

import torchvision
from torch import nn

from defend.errors import DefendError

__all__ = ["build_cls_model"]


def _first_conv(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module holding the first convolution (``conv1``) and the attribute name in it."""
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d):
        return model, "conv1"
    if conv1 is not None and isinstance(getattr(conv1, "conv", None), nn.Conv2d):
        return conv1, "conv"  # googlenet / inception: BasicConv2d(conv, bn)
    return None


def build_cls_model(
    name: str = "resnet18", in_channels: int = 1, num_classes: int = 2
) -> nn.Module:
    """Build a randomly initialised torchvision classifier (``weights=None``: no download).

    Args:
        name: a torchvision classification model with a ``conv1`` first layer (``resnet18``,
            ``resnet50``, ``resnext50_32x4d``, ``wide_resnet50_2``, ...). Other torchvision
            classifiers work with ``in_channels=3``.
        in_channels: input channels ``C``; if not 3, ``conv1`` is replaced by a convolution with
            the same hyper-parameters taking ``C`` channels.
        num_classes: number of classes.

    Returns:
        A module mapping images ``(B, C, H, W)`` to logits ``(B, num_classes)``.

    Raises:
        DefendError: unknown name, or ``in_channels != 3`` for a model without ``conv1``.
    """
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        shown = ", ".join(n for n in names if n.startswith(("resnet", "resnext", "wide")))
        raise DefendError(f"unknown classification model '{name}'; valid include: {shown}")
    kwargs: dict = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        found = _first_conv(model)
        if found is None:
            raise DefendError(
                f"classification model '{name}' has no conv1 layer to adapt to {in_channels} input "
                "channels; use a ResNet-like model or 3-channel images"
            )
        parent, attr = found
        old: nn.Conv2d = getattr(parent, attr)
        setattr(
            parent,
            attr,
            nn.Conv2d(
                in_channels,
                old.out_channels,
                kernel_size=old.kernel_size,  # type: ignore[arg-type]
                stride=old.stride,  # type: ignore[arg-type]
                padding=old.padding,  # type: ignore[arg-type]
                dilation=old.dilation,  # type: ignore[arg-type]
                bias=old.bias is not None,
                padding_mode=old.padding_mode,
            ),
        )
    return model
