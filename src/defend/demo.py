"""The main job on the built-in data: synthesise it, train every default model, attack each.

``defend demo RUN_DIR`` calls :func:`run_demo`; every step resumes or is skipped when its
output is already there, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defend.io import write_json

#: (checkpoint name, task, model name)
MODELS = (
    ("recon-unet", "recon", "unet"),
    ("recon-varnet", "recon", "varnet"),
    ("seg", "seg", None),
    ("cls", "cls", None),
)

#: (attack, checkpoint name, parameters): quick settings for a first look on a CPU
ATTACKS = (
    ("hallucination", "recon-unet", {"eps": 0.005, "max_iter": 60}),
    ("hallucination", "recon-varnet", {"eps": 0.005, "max_iter": 60}),
    ("seg-fgsm", "seg", {"eps": 0.008, "loss": "bce"}),
    ("seg-fgsm", "seg", {"eps": 0.008, "loss": "training"}),
    ("dgde", "cls", {}),
)

QUICK_DATA = {"size": 32, "coils": 2, "volumes": 4, "slices": 4}
QUICK_ATTACK = {"hallucination": {"max_iter": 5}, "dgde": {"max_queries": 300}}

#: the metrics shown in the demo's summary for each attack
HEADLINE = {
    "hallucination": ("strength", "recon_ssim", "recon_psnr", "input_psnr"),
    "seg-fgsm": ("dice_clean", "dice_adv", "dice_diff"),
    "dgde": ("success", "noise_success", "pixels", "pixels_pct", "queries"),
}


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    seed: int = 0,
    device: str | None = None,
    n: int = 4,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Synthesise data into ``out/data``, train the four default models, run the attacks.

    Args:
        out: run folder (data, checkpoints, attack outputs, ``summary.json``).
        seed: seed of data, training and attacks.
        device: torch device (default: CUDA if present).
        n: test samples per attack.
        quick: a smoke run in about a minute: 32 px data, one epoch, short attacks.

    Returns (and writes to ``out/summary.json``) the validation metrics of each model and the
    mean headline metrics of each attack on ``n`` test samples.
    """
    from defend.attacks.run import run_attack
    from defend.data import synthesize
    from defend.io import load_checkpoint
    from defend.train import TrainConfig, default_schedule, train_model

    out = Path(out)
    data = out / "data"
    if not (data / "dataset.json").exists():
        log(f"== synthesising data into {data}")
        size = QUICK_DATA if quick else {}
        synthesize(data, seed=seed, **size)
    summary: dict[str, Any] = {"models": {}, "attacks": {}}
    for name, task, model in MODELS:
        log(f"== training {name}")
        epochs, lr = default_schedule(task, model)
        epochs = 1 if quick else epochs
        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, device=device)
        train_model(task, data, out / f"{name}.pt", model=model, config=config, log=log)
        summary["models"][name] = load_checkpoint(out / f"{name}.pt")["metrics"]
    for attack, ckpt, params in ATTACKS:
        label = f"{attack}/{ckpt}" + (f"/{params['loss']}" if "loss" in params else "")
        log(f"== attacking {label}")
        result = run_attack(
            attack,
            out / f"{ckpt}.pt",
            data,
            out / "attacks" / label.replace("/", "-"),
            n=n,
            params={**params, **(QUICK_ATTACK.get(attack, {}) if quick else {}), "seed": seed},
            device=device,
        )
        summary["attacks"][label] = {
            k: result["summary"][k]["mean"] for k in HEADLINE[attack] if k in result["summary"]
        }
    write_json(out / "summary.json", summary)
    return summary


def format_demo(summary: dict[str, Any]) -> str:
    """The demo's summary as two aligned blocks of text."""
    lines = ["models (validation split):"]
    for name, metrics in summary["models"].items():
        lines.append(f"  {name:14s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    lines.append("attacks (test split, means):")
    for name, metrics in summary["attacks"].items():
        lines.append(f"  {name:30s} " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return "\n".join(lines)
