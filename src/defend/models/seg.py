"""Segmentation models: any segmentation-models-pytorch architecture and encoder, by name.

Names are ``"ARCH"`` or ``"ARCH/ENCODER"``, e.g. ``"Unet/resnet18"``, ``"Unet/vgg16"``,
``"UnetPlusPlus/efficientnet-b7"`` or ``"FPN/tu-resnet18"`` (timm encoders). Encoders are always
randomly initialised (``encoder_weights=None``): nothing is downloaded. Models map an image
``(B, C, H, W)`` to per-pixel logits ``(B, K, H, W)`` (one sigmoid channel per label).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from defend.errors import DefendError

__all__ = ["DEFAULT_SEG_NAME", "SMALL_SEG_KWARGS", "build_seg_model", "parse_seg_name"]

#: The default (small) model, for tiny synthetic data and CPU runs.
DEFAULT_SEG_NAME = "Unet/resnet18"
#: Keyword arguments of the small default model (applied when no name is given).
SMALL_SEG_KWARGS: dict[str, Any] = {"encoder_depth": 3, "decoder_channels": (64, 32, 16)}


def _some(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _smp() -> Any:
    """segmentation-models-pytorch, imported on first use (it takes seconds to import, and
    recon and cls never need it)."""
    import segmentation_models_pytorch

    return segmentation_models_pytorch


def parse_seg_name(name: str) -> tuple[str, str | None]:
    """Split ``"ARCH/ENCODER"`` into smp's architecture key and encoder name (validated).

    Raises:
        DefendError: unknown architecture or encoder (the message lists valid names).
    """
    arch, _, encoder = name.strip().partition("/")
    mapping = _smp().MODEL_ARCHITECTURES_MAPPING
    archs = {cls.__name__.lower(): cls.__name__ for cls in mapping.values()}
    if arch.lower() not in archs:
        raise DefendError(
            f"unknown segmentation architecture '{arch}' in model name '{name}'; "
            f"valid: {_some(sorted(archs.values()), 12)}"
        )
    encoder = encoder or None
    if encoder is not None:
        valid = _smp().encoders.get_encoder_names()
        if encoder.startswith("tu-"):
            import timm  # only for timm encoders (tu-*)

            if not timm.is_model(encoder[3:].split(".")[0]):
                raise DefendError(f"unknown timm encoder '{encoder[3:]}' in model name '{name}'")
        elif encoder not in valid:
            raise DefendError(
                f"unknown segmentation encoder '{encoder}' in model name '{name}'; valid: "
                f"{_some(valid)} (or 'tu-<timm model>')"
            )
    return arch.lower(), encoder


def build_seg_model(
    name: str | None = None, in_channels: int = 1, classes: int = 1, **kwargs: Any
) -> nn.Module:
    """Build a randomly initialised smp segmentation model.

    Args:
        name: ``"ARCH"`` or ``"ARCH/ENCODER"`` (architecture names are case-insensitive). Without
            an encoder, smp's default one for that architecture is used. ``None`` builds the small
            default, ``"Unet/resnet18"`` with ``encoder_depth=3`` and
            ``decoder_channels=(64, 32, 16)`` (unless ``kwargs`` override them); an explicit name
            gets smp's defaults for everything not in ``kwargs``.
        in_channels: input channels ``C``.
        classes: output channels ``K`` (labels).
        **kwargs: passed to the smp architecture (``encoder_depth``, ``decoder_channels``, ...).

    Returns:
        A module mapping ``(B, C, H, W)`` images to logits ``(B, K, H, W)``. ``H`` and ``W``
        must be divisible by ``2 ** encoder_depth``.

    Raises:
        DefendError: unknown architecture/encoder or arguments smp rejects.
    """
    if name is None:
        name = DEFAULT_SEG_NAME
        kwargs = {**SMALL_SEG_KWARGS, **kwargs}
    arch, encoder = parse_seg_name(name)
    kwargs.pop("encoder_weights", None)
    if encoder is not None:
        kwargs["encoder_name"] = encoder
    if "decoder_channels" in kwargs and kwargs["decoder_channels"] is not None:
        kwargs["decoder_channels"] = tuple(kwargs["decoder_channels"])
    try:
        return _smp().create_model(
            arch, encoder_weights=None, in_channels=in_channels, classes=classes, **kwargs
        )
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DefendError(
            f"cannot build segmentation model '{name}' with {kwargs}: {first}"
        ) from None
