"""The models the benchmarks time: synthesise the built-in data, train the four default
models, attack each once.

``defend bench models RUN_DIR`` calls :func:`run_models`; ``defend bench attacks`` and
``defend bench certify`` take the folder it writes. Every step resumes or is skipped when its
output is already there, so an interrupted run picks up where it stopped.
``RUN_DIR/models.json`` records the settings, so that a folder with other settings
(``--quick`` against the full one) is refused rather than mixed into.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defend.adaptive.runner import run_attack
from defend.data import synthesize
from defend.device import pick_device
from defend.errors import DefendError
from defend.io import check_writable, load_checkpoint, write_json
from defend.train import TrainConfig, default_schedule, train_model

#: Tag of ``OUT/models.json``.
MODELS_FORMAT = "defend-bench-models-v1"

#: (checkpoint name, task, model name)
MODELS = (
    ("recon-unet", "recon", "unet"),
    ("recon-varnet", "recon", "varnet"),
    ("seg", "seg", None),
    ("cls", "cls", None),
)

#: (attack, checkpoint name, parameters): quick settings for a first look on a CPU
ATTACKS = (
    ("hallucination", "recon-unet", {"max_iter": 60}),
    ("hallucination", "recon-varnet", {"max_iter": 60}),
    ("seg-fgsm", "seg", {"eps": 0.008, "loss": "bce"}),
    ("seg-fgsm", "seg", {"eps": 0.008, "loss": "training"}),
    ("dgde", "cls", {}),
)

QUICK_DATA = {"size": 32, "coils": 2, "volumes": 4, "slices": 4}
FULL_DATA = {"size": 64, "coils": 4, "volumes": 24, "slices": 8}
QUICK_ATTACK = {"hallucination": {"max_iter": 5}, "dgde": {"max_queries": 300}}

#: the metrics shown in the summary for each attack
HEADLINE = {
    "hallucination": ("strength", "recon_ssim", "recon_psnr", "input_psnr"),
    "seg-fgsm": ("dice_clean", "dice_adv", "dice_diff"),
    "dgde": ("success", "noise_success", "pixels", "pixels_pct", "queries"),
}


def models_settings(*, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """What a models folder holds, as stored in ``OUT/models.json``: the data and training
    settings that ``seed`` and ``quick`` imply (not ``n`` or the device, which only change
    the attacks, rerun every time)."""

    training = {}
    for name, task, model in MODELS:
        epochs, lr = default_schedule(task, model)
        training[name] = {"epochs": 1 if quick else epochs, "lr": lr}
    return {
        "format": MODELS_FORMAT,
        "quick": quick,
        "seed": seed,
        "data": dict(QUICK_DATA if quick else FULL_DATA),
        "training": training,
    }


def _describe(settings: dict[str, Any]) -> str:
    """``"--quick models folder (32 px, 1 epoch)"`` / ``"full models folder (64 px, ...)"``."""
    epochs = sorted({t["epochs"] for t in settings.get("training", {}).values()}) or [0]
    span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]} to {epochs[-1]}"
    kind = "--quick models folder" if settings.get("quick") else "full models folder"
    size = settings.get("data", {}).get("size", "?")
    return f"{kind} ({size} px, {span} epoch{'' if epochs == [1] else 's'})"


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"data.size": 32, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_models_folder(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a run folder that holds models of other settings (one line naming them).

    Raises:
        DefendError: ``OUT/models.json`` is unreadable or records other settings.
    """
    path = out / "models.json"
    if not path.is_file():
        _check_legacy_data(out, settings)
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DefendError(f"{path}: unreadable; remove {out} or choose another folder") from None
    if not isinstance(old, dict) or old == settings:
        return
    if old.get("quick") != settings["quick"]:
        wanted = "--quick" if settings["quick"] else "full"
        raise DefendError(
            f"{out}: holds a {_describe(old)}; the {wanted} one needs another folder or removing it"
        )
    was, now = _flat(old), _flat(settings)
    keys = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    raise DefendError(
        f"{out}: holds models with {', '.join(f'{k} {was.get(k)}' for k in keys)} (you asked "
        f"{', '.join(f'{k} {now.get(k)}' for k in keys)}); use another folder or remove it"
    )


def _check_legacy_data(out: Path, settings: dict[str, Any]) -> None:
    """A folder without ``models.json`` (an older one): its data must fit ``settings``."""
    try:
        params = json.loads((out / "data" / "dataset.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    wanted = {**settings["data"], "seed": settings["seed"]}
    keys = [k for k in wanted if params.get(k) != wanted[k]]
    if keys:
        was = ", ".join(f"{k} {params.get(k)}" for k in keys)
        now = ", ".join(f"{k} {wanted[k]}" for k in keys)
        raise DefendError(
            f"{out}: holds models with data of {was} (you asked {now}); use another folder or "
            "remove it"
        )


def run_models(
    out: str | os.PathLike = "runs/bench",
    *,
    seed: int = 0,
    device: str | None = None,
    n: int = 4,
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Synthesise data into ``out/data``, train the four default models, run the attacks.

    The settings (:func:`models_settings`) go to ``out/models.json`` first; a folder holding
    models of other settings (a ``quick`` one, another seed) is refused before anything is
    done, and one with the same settings resumes.

    Args:
        out: run folder (data, checkpoints, attack outputs, ``summary.json``).
        seed: seed of data, training and attacks.
        device: torch device (default: CUDA if present).
        n: test samples per attack.
        quick: a smoke run in about a minute: 32 px data, one epoch, short attacks.
        progress: show progress bars.

    Returns (and writes to ``out/summary.json``) the validation metrics of each model and the
    mean headline metrics of each attack on ``n`` test samples.

    Raises:
        DefendError: a bad device, an unwritable ``out``, or one holding other models.
    """

    out = Path(out)
    if n < 1:
        raise DefendError(f"--n must be >= 1, got {n}")
    pick_device(device)
    check_writable(out, "dir")
    settings = models_settings(seed=seed, quick=quick)
    check_models_folder(out, settings)
    write_json(out / "models.json", settings)
    data = out / "data"
    if not (data / "dataset.json").exists():
        log(f"== synthesising data into {data}")
    synthesize(data, seed=seed, progress=progress, **settings["data"])  # resumes or keeps
    summary: dict[str, Any] = {"models": {}, "attacks": {}}
    for name, task, model in MODELS:
        log(f"== training {name}")
        schedule = settings["training"][name]
        config = TrainConfig(**schedule, seed=seed, device=device, progress=progress)
        train_model(task, data, out / f"{name}.pt", model=model, config=config, log=log)
        summary["models"][name] = load_checkpoint(out / f"{name}.pt")["metrics"]
    summary["attacks"] = _run_attacks(out, seed, device, n, quick, progress, log)
    write_json(out / "summary.json", summary)
    return summary


def _run_attacks(
    out: Path,
    seed: int,
    device: str | None,
    n: int,
    quick: bool,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, dict[str, float]]:
    """Run :data:`ATTACKS` on the folder's checkpoints; the headline means of each."""

    means = {}
    for attack, ckpt, params in ATTACKS:
        label = f"{attack}/{ckpt}" + (f"/{params['loss']}" if "loss" in params else "")
        log(f"== attacking {label}")
        extra = {**(QUICK_ATTACK.get(attack, {}) if quick else {}), "seed": seed}
        result = run_attack(
            attack,
            out / f"{ckpt}.pt",
            out / "data",
            out / "attacks" / label.replace("/", "-"),
            n=n,
            params={**params, **extra, "verbose": progress},
            device=device,
        )
        means[label] = {
            k: result["summary"][k]["mean"] for k in HEADLINE[attack] if k in result["summary"]
        }
    return means


def format_models(summary: dict[str, Any]) -> str:
    """The summary as two aligned blocks of text."""
    lines = ["models (validation split):"]
    for name, metrics in summary["models"].items():
        lines.append(f"  {name:14s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    lines.append("attacks (test split, means):")
    for name, metrics in summary["attacks"].items():
        lines.append(f"  {name:30s} " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return "\n".join(lines)
