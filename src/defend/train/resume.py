"""Resuming an interrupted run: a checkpoint's run is continued only under the same settings.

:func:`load_run` compares the checkpoint's model config and run configuration (what
:func:`defend.train.loop.run_config` says identifies a run) with this run's, names each
difference (:func:`config_differences`) in a one-line :class:`CheckpointError`, and loads the
weights and optimizer state where they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from defend.errors import CheckpointError
from defend.io import load_checkpoint
from defend.tasks import Task


def _short(value: Any) -> str:
    """``value`` as text of at most 40 characters, for a one-line error."""
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lr 0.001 -> 0.003", ...]``: the keys whose values differ (nested dicts by key)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in config_differences(a, b)]
        elif a != b:
            out.append(f"{key} {_short(a)} -> {_short(b)}")
    return out


def load_run(
    out: Path,
    task: Task,
    meta: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, list[dict[str, float]], dict[str, float] | None, str | None]:
    """Load the run at ``out`` into model and optimizer; refuse one of another configuration.

    Returns:
        ``(epochs done, history, best record, why it stopped early or None)``.
    """
    ckpt = load_checkpoint(out, task.name)
    if ckpt.get("model_config") != meta.get("model_config"):
        changed = config_differences(ckpt.get("model_config") or {}, meta.get("model_config") or {})
        raise CheckpointError(
            f"{out}: holds a run with another model config ({'; '.join(changed)}); "
            "pass --no-resume to start over or choose another --out"
        )
    if "run" not in ckpt:
        raise CheckpointError(
            f"{out}: holds a run without its configuration (an older defend); pass "
            "--no-resume to start over or choose another --out"
        )
    differences = config_differences(ckpt["run"], meta.get("run", {}))
    if differences:
        raise CheckpointError(
            f"{out}: holds a run with other settings ({'; '.join(differences)}); pass "
            "--no-resume to start over, or choose another --out (--weights OLD.pt to start "
            "from its weights)"
        )
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["epoch"], ckpt["history"], ckpt.get("best"), ckpt.get("stopped")
