"""Models for the three tasks, built by name from a JSON-able config.

``build_model(task, config)`` with ``config = {"name": ..., **kwargs}``:

| task  | names                                    | call                                   |
|-------|------------------------------------------|----------------------------------------|
| recon | ``unet``, ``varnet``                     | ``model(masked_kspace, mask) -> (B, h, w)`` |
| seg   | ``"ARCH"`` / ``"ARCH/ENCODER"`` (smp)    | ``model(x) -> logits (B, K, H, W)``    |
| cls   | torchvision names (``resnet18``, ...)    | ``model(x) -> logits (B, classes)``    |

``load_weights`` loads raw state dicts, including fastMRI's leaderboard files, into them.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from defend.errors import CheckpointError, DefendError, ModelOptionError
from defend.kspace import zero_filled
from defend.models.cls import build_cls_model
from defend.models.recon import ReconUnet, ReconVarNet
from defend.models.seg import DEFAULT_SEG_NAME, SMALL_SEG_KWARGS, build_seg_model, parse_seg_name
from defend.tasks import check_task, kind_of

__all__ = [
    "RECON_DEFAULTS",
    "ReconUnet",
    "ReconVarNet",
    "build_cls_model",
    "build_model",
    "build_seg_model",
    "check_model_options",
    "default_model_config",
    "load_weights",
    "zero_filled",
]

#: Default keyword arguments of the reconstruction models (tiny: for synthetic 32-64 px data).
RECON_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"chans": 16, "num_pool_layers": 3, "drop_prob": 0.0},
    "varnet": {"num_cascades": 4, "sens_chans": 4, "sens_pools": 2, "chans": 8, "pools": 2},
}
_RECON_CLASSES: dict[str, type[nn.Module]] = {"unet": ReconUnet, "varnet": ReconVarNet}

#: Prefixes that wrappers (DataParallel, Lightning modules, our own wrappers) put on keys.
_PREFIXES = ("module.", "model.", "unet.", "varnet.", "net.")
#: Keys under which training scripts nest the state dict.
_NESTING = ("state_dict", "model_state_dict", "model", "net")


def build_model(task: str, config: Mapping[str, Any]) -> nn.Module:
    """Build a randomly initialised model from ``{"name": ..., **kwargs}``.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        config: the model config, as :func:`default_model_config` returns and checkpoints store
            (``model_config``). Keys other than ``name`` are the model's keyword arguments.

    Returns:
        The model (on the CPU, in training mode).

    Raises:
        DefendError: unknown task, model name or keyword argument, a value of the wrong kind
            (:class:`~defend.errors.ModelOptionError`), or one the model cannot be built with.
    """
    check_task(task)
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if not isinstance(name, str):
        raise DefendError(f"model config for task '{task}' needs a 'name' (got {dict(config)})")
    if kind_of(task) == "recon" and name.lower() not in _RECON_CLASSES:
        raise DefendError(
            f"unknown reconstruction model '{name}'; valid: {', '.join(_RECON_CLASSES)}"
        )
    check_model_options(task, name, kwargs)
    try:
        if kind_of(task) == "recon":
            return _RECON_CLASSES[name.lower()](**kwargs)
        if kind_of(task) == "seg":
            return build_seg_model(name, **kwargs)
        return build_cls_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DefendError(f"cannot build {task} model '{name}' with {kwargs}: {first}") from None


def _signature_specs(
    func: Callable[..., Any], skip: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``{keyword: (default, annotation)}`` of ``func``'s named parameters."""
    specs = {}
    for key, param in inspect.signature(func).parameters.items():
        if key in ("self", *skip) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = None if param.default is param.empty else param.default
        specs[key] = (default, param.annotation)
    return specs


def _option_specs(task: str, name: str | None) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The model's full name and ``{option: (default, annotation)}`` of what it accepts."""
    config = default_model_config(task, name)
    full_name = config.pop("name")
    if kind_of(task) == "recon":
        specs = _signature_specs(_RECON_CLASSES[full_name])
    elif kind_of(task) == "seg":
        import segmentation_models_pytorch as smp  # seconds to import; seg only

        arch, _ = parse_seg_name(full_name)
        specs = _signature_specs(
            smp.MODEL_ARCHITECTURES_MAPPING[arch], skip=("encoder_name", "encoder_weights")
        )
    else:
        specs = _signature_specs(build_cls_model, skip=("name",))
    for key, value in config.items():  # our defaults (e.g. the small seg model's) win
        specs[key] = (value, specs.get(key, (None, inspect.Parameter.empty))[1])
    return full_name, specs


def _is_union(annotation: Any) -> bool:
    """Whether a parameter annotation admits several types (then no kind is enforced)."""
    if isinstance(annotation, str):
        return "|" in annotation or annotation.startswith(("Union", "Optional", "Any"))
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) or annotation is Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_error(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with ``value`` for an option whose default is ``default``, or None."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if _is_int(default):
        if not _is_int(value):
            return "expected an integer"
        if default >= 1 and value < 1:
            return "expected a positive integer"
        return None
    if isinstance(default, float):
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            return "expected a number"
        if "drop" in key and not 0 <= value <= 1:
            return "expected a probability in [0, 1]"
        return None
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple):
            return "expected a list, e.g. [64,32,16]"
        if all(_is_int(d) for d in default) and not all(_is_int(v) and v >= 1 for v in value):
            return "expected a list of positive integers"
        return None
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "expected a JSON object"
    return None


def check_model_options(task: str, name: str | None, options: Mapping[str, Any]) -> None:
    """Refuse model options the model does not take or whose values are of the wrong kind.

    A value must fit the type of the option's default: an integer for an integer default
    (positive where the default is), a number for a float (a probability for ``*drop*``
    options), true/false for a bool, a list for a list, a string for a string; options
    defaulting to ``None`` (and those typed as a union) take any JSON value.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        name: model name (``None``: the task's default model).
        options: ``{option: value}``, e.g. from ``--set KEY=VALUE`` (JSON-decoded).

    Raises:
        ModelOptionError: one line naming the option, the value and what was expected (for an
            unknown option: the valid ones).
    """
    check_task(task)
    full_name, specs = _option_specs(task, name)
    for key, value in options.items():
        if key == "name":
            raise ModelOptionError(key, value, "choose the model with --model, not --set")
        if key not in specs:
            valid = ", ".join(specs)
            reason = f"unknown option of {task} model '{full_name}'; valid: {valid}"
            raise ModelOptionError(key, value, reason)
        default, annotation = specs[key]
        if default is None or _is_union(annotation):
            continue
        reason = _kind_error(key, value, default)
        if reason is not None:
            raise ModelOptionError(key, value, reason)


def _shape(data_info: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = data_info.get(key)
    return None if value is None else tuple(int(v) for v in value)


def _num_classes(data_info: Mapping[str, Any], default: int) -> int:
    classes = data_info.get("classes", data_info.get("num_classes"))
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        return len(classes)
    if classes is not None:
        return int(classes)
    return default


def default_model_config(task: str, name: str | None = None, **data_info: Any) -> dict[str, Any]:
    """The full, JSON-able model config with defaults filled in from the data.

    Args:
        task: ``recon``, ``seg`` or ``cls``.
        name: model name (recon: ``unet`` (default) or ``varnet``; seg: ``"ARCH/ENCODER"``,
            default the small ``"Unet/resnet18"``; cls: torchvision name, default ``resnet18``).
        **data_info: what is known about the data (a checkpoint's ``data`` dict fits; other keys
            are ignored): ``input_shape`` (recon ``(coils, H, W, 2)``, seg/cls ``(C, H, W)``),
            ``target_shape`` (recon ``(h, w)``, seg ``(K, H, W)``), ``classes`` (list of names
            or a count), ``in_channels``, ``num_classes``.

    Returns:
        ``{"name": ..., **kwargs}`` for :func:`build_model`. Recon: ``crop`` is ``[h, w]`` when
        the target size differs from the k-space size, else ``None``. Seg: ``in_channels`` and
        ``classes``. Cls: ``in_channels`` and ``num_classes``.
    """
    check_task(task)
    input_shape = _shape(data_info, "input_shape")
    target_shape = _shape(data_info, "target_shape")
    if kind_of(task) == "recon":
        key = (name or "unet").lower()
        if key not in RECON_DEFAULTS:
            raise DefendError(
                f"unknown reconstruction model '{name}'; valid: {', '.join(RECON_DEFAULTS)}"
            )
        crop = None
        if input_shape is not None and target_shape is not None:
            kspace_hw = tuple(input_shape[-3:-1])
            target_hw = tuple(target_shape[-2:])
            if target_hw != kspace_hw:
                crop = list(target_hw)
        return {"name": key, **RECON_DEFAULTS[key], "crop": crop}

    in_channels = int(
        data_info.get("in_channels") or (input_shape[0] if input_shape is not None else 1)
    )
    if kind_of(task) == "seg":
        classes = int(target_shape[0]) if target_shape is not None else _num_classes(data_info, 1)
        if name is None:
            extra = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_SEG_KWARGS.items()}
            return {
                "name": DEFAULT_SEG_NAME,
                **extra,
                "in_channels": in_channels,
                "classes": classes,
            }
        parse_seg_name(name)
        return {"name": name, "in_channels": in_channels, "classes": classes}
    return {
        "name": name or "resnet18",
        "in_channels": in_channels,
        "num_classes": _num_classes(data_info, 2),
    }


# --------------------------------------------------------------------------------- weights


def _unnest(state_dict: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    obj: Any = state_dict
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _NESTING if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"{source}: not a state dict (expected a dict of tensors)")


def _prefix_variants(state_dict: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state dict and its versions with common leading wrapper prefixes stripped."""
    variants = [state_dict]
    current = state_dict
    while True:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            return variants
        current = {k[len(prefix) :]: v for k, v in current.items()}
        variants.append(current)


def load_weights(
    model: nn.Module, state_dict: Mapping[str, Any], source: str = "weights"
) -> nn.Module:
    """Load a raw state dict into ``model`` (in place), tolerating wrapper prefixes.

    Tries the model itself, then its wrapped fastMRI module (``model.unet`` / ``model.varnet``),
    each with the keys as given and with common leading prefixes (``module.``, ``model.``,
    ``unet.``, ``varnet.``) stripped; a dict nesting the weights under ``state_dict`` (Lightning,
    defend checkpoints) is unwrapped first. So fastMRI's leaderboard files load:
    ``unet/*_leaderboard_state_dict.pt`` into ``ReconUnet(chans=256, num_pool_layers=4)`` and
    ``varnet/*_leaderboard_state_dict.pt`` into ``ReconVarNet(num_cascades=12, sens_chans=8,
    sens_pools=4, chans=18, pools=4)``.

    Args:
        model: the model to load into.
        state_dict: the weights (a state dict, or a dict holding one under ``state_dict``).
        source: the file (or other origin) named in error messages.

    Returns:
        ``model``.

    Raises:
        CheckpointError: not a state dict, keys that fit none of the candidates (how many are
            missing / unexpected for the closest one), or the first shape mismatch.
    """
    weights = _unnest(state_dict, source)
    targets: list[tuple[str, nn.Module]] = [("", model)]
    for attr in ("unet", "varnet"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            targets.append((attr + ".", inner))
    variants = _prefix_variants(weights)

    best: tuple[int, set[str], set[str]] | None = None
    for _, target in targets:
        expected = target.state_dict()
        for variant in variants:
            missing = set(expected) - set(variant)
            unexpected = set(variant) - set(expected)
            if not missing and not unexpected:
                for key, param in expected.items():
                    found = tuple(variant[key].shape)
                    if found != tuple(param.shape):
                        raise CheckpointError(
                            f"{source}: shape mismatch for '{key}': file {found} vs model "
                            f"{tuple(param.shape)} (weights of another model config?)"
                        )
                target.load_state_dict(variant, strict=True)
                return model
            score = len(missing) + len(unexpected)
            if best is None or score < best[0]:
                best = (score, missing, unexpected)
    assert best is not None
    _, missing, unexpected = best
    example_m = f" e.g. '{sorted(missing)[0]}'" if missing else ""
    example_u = f" e.g. '{sorted(unexpected)[0]}'" if unexpected else ""
    raise CheckpointError(
        f"{source}: weights do not fit the {type(model).__name__} model: "
        f"{len(missing)} missing keys{example_m}, {len(unexpected)} unexpected keys{example_u}"
    )
