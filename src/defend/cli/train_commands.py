"""``defend train``: models, denoisers, detectors and input detectors.

The command's options are declared once in :data:`TRAIN_OPTIONS`; each kind of run
(a task's model, a denoiser, a detector, an input detector) is one short function that
calls one library function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import (
    PROGRESS,
    app,
    check_model_options,
    format_metrics,
    signature,
    warn_quality,
)
from defend.errors import DefendError

#: the options of ``defend train``, in the order --help shows them: name -> (type, option)
TRAIN_OPTIONS: dict[str, tuple[type, Any]] = {
    "task": (str, typer.Argument(
        ..., help="recon, seg, cls, or denoiser / detector / input-detector (--checkpoint).")),
    "data": (Path, typer.Option(
        ..., help="Data folder (defend data synth output or real data).")),
    "out": (Path, typer.Option(..., help="Checkpoint to write (resumed if it exists).")),
    "checkpoint": (Path, typer.Option(
        None, help="denoiser / detector / input-detector: the model it is trained for "
        "(detector: a recon one; input-detector: a seg or cls one).")),
    "detection_data": (Path, typer.Option(
        None, help="detector / input-detector: where its detection data is kept (OUT.data).")),
    "slices": (int, typer.Option(
        None, help="detector / input-detector: at most this many slices (images) per split "
        "for its attacked data (default all; the time it takes grows with it).")),
    "max_iter": (int, typer.Option(
        None, help="detector: the hallucination attack's iterations making its data "
        "(default 150).")),
    "sigma": (float, typer.Option(
        None, help="denoiser: noise level (images: [0, 1] units; recon: relative, see README).")),
    "objective": (str, typer.Option("mse", help="denoiser: mse, stability or mse-stability.")),
    "depth": (int, typer.Option(8, help="denoiser: DnCNN layers.")),
    "width": (int, typer.Option(32, help="denoiser: DnCNN channels.")),
    "model": (str, typer.Option(
        None, help="recon: unet|varnet; seg: ARCH/ENCODER (smp); cls: resnet18|resnet50.")),
    "epochs": (int, typer.Option(
        None, help="Epochs (default: per task and model, see README); 0 with --weights: "
        "evaluate the weights and write a checkpoint without training.")),
    "batch_size": (int, typer.Option(
        None, help="Batch size (default 8; detector and input-detector 16; under torchrun: "
        "the global batch).")),
    "lr": (float, typer.Option(None, help="Learning rate (AdamW, cosine schedule).")),
    "seed": (int, typer.Option(0, help="Random seed.")),
    "device": (str, typer.Option(
        None, help="cpu, cuda, cuda:1 ... (default: CUDA if present).")),
    "weights": (Path, typer.Option(None, help="Local weight file to start from.")),
    "set_": (list[str], typer.Option(
        [], "--set", help="Model option KEY=VALUE, repeatable.")),
    "mask_type": (str, typer.Option(
        "equispaced_fraction", help="recon: fastMRI mask type.")),
    "acceleration": (int, typer.Option(4, help="recon: undersampling factor.")),
    "center_fraction": (float, typer.Option(
        0.08, help="recon: fully sampled centre fraction.")),
    "workers": (int, typer.Option(0, help="DataLoader worker processes.")),
    "resume": (bool, typer.Option(True, help="Resume an interrupted run found at --out.")),
    "adversarial": (str, typer.Option(
        None, help="Adversarial training: recon pgd|hallucination; seg and cls "
        "pgd|fgsm-rs|trades.")),
    "eps": (float, typer.Option(
        None, help="Training budget, in the units of the matching attack: recon 0.1 "
        "(relative l-inf, as defend attack hallucination), seg 0.008 (as seg-fgsm), cls "
        "8/255; input-detector: the budget of the attacks it learns to detect (the same "
        "defaults).")),
    "steps": (int, typer.Option(
        None, help="Attack steps per batch (pgd 7, recon 5, hallucination 5, trades 10).")),
    "step": (float, typer.Option(
        None, help="Attack step as a fraction of eps (default 2.5 / steps; 1.25 for one "
        "step).")),
    "mix": (float, typer.Option(1.0, help="Fraction of each batch that is attacked.")),
    "warmup_epochs": (int, typer.Option(
        0, help="Epochs over which eps grows linearly to --eps.")),
    "beta": (float, typer.Option(
        None, help="Weight of the adversarial-vs-clean divergence (TRADES; trades default "
        "6; recon hallucination 4).")),
    "attack_loss": (str, typer.Option(None, help="seg: bce (default) or training.")),
    "norm": (str, typer.Option("inf", help="recon: inf or 2 (per coil).")),
    "progress": (bool, PROGRESS),
}  # fmt: skip
#: options only the denoiser and detector runs take
HELPER_ONLY = ("checkpoint", "sigma", "detection_data", "slices", "max_iter")
#: said when hallucination training starts from scratch: what the measured recipe adds
RECIPE_NOTE = (
    "note: docs/hardening.md's hardened U-Net (0.30x the standard model's hallucination "
    "strength) was fine-tuned from a converged standard model: train one with defend train "
    "recon first and pass it as --weights (one run from scratch measured 0.88x)"
)
#: options only adversarial training takes
ADVERSARIAL_ONLY = ("eps", "steps", "step", "beta", "attack_loss")


def train(**options: Any) -> None:
    """Train a reconstruction, segmentation or classification model (adversarially with
    --adversarial). Runs unchanged on several GPUs under torchrun (see README)."""
    task = options.pop("task")
    helper = {"denoiser": _train_denoiser, "detector": _train_detector,
              "input-detector": _train_input_detector}.get(task)  # fmt: skip
    if helper is not None:
        return helper(options)
    if any(options[key] is not None for key in HELPER_ONLY):
        raise DefendError(
            "--checkpoint, --sigma, --detection-data, --slices and --max-iter are for defend "
            "train denoiser / detector / input-detector"
        )
    return _train_model(task, options)


train.__signature__ = signature(TRAIN_OPTIONS)
app.command("train")(train)


def _train_model(task: str, o: dict[str, Any]) -> None:
    """``defend train recon|seg|cls``: :func:`defend.train.train_model`."""
    from defend.data import Acquisition
    from defend.tasks import check_task, kind_of
    from defend.train import TrainConfig, default_schedule, train_model

    check_task(task)  # device and --out are checked first thing by train_model
    model_options = check_model_options(task, o["model"], o["set_"])
    objective = _objective(task, o)
    default_epochs, default_lr = default_schedule(task, o["model"])
    config = TrainConfig(
        epochs=default_epochs if o["epochs"] is None else o["epochs"],
        batch_size=8 if o["batch_size"] is None else o["batch_size"],
        lr=default_lr if o["lr"] is None else o["lr"],
        seed=o["seed"], device=o["device"], num_workers=o["workers"], progress=o["progress"],
    )  # fmt: skip
    acquisition = None
    if kind_of(task) == "recon":
        acquisition = Acquisition(o["mask_type"], o["center_fraction"], o["acceleration"])
    history = train_model(
        task, o["data"], o["out"], model=o["model"], model_options=model_options,
        config=config, acquisition=acquisition, weights=o["weights"], objective=objective,
        resume=o["resume"], log=typer.echo,
    )  # fmt: skip
    _show_final(task, o["out"], history)


def _objective(task: str, o: dict[str, Any]) -> Any:
    """The adversarial objective of ``--adversarial`` (None without it)."""
    from defend.train import make_objective

    if o["adversarial"] is None:
        if any(o[key] is not None for key in ADVERSARIAL_ONLY):
            raise DefendError("--eps, --steps, --step, --beta and --attack-loss need --adversarial")
        return None
    if o["adversarial"] == "hallucination" and o["weights"] is None:
        typer.echo(RECIPE_NOTE, err=True)
    keys = ("adversarial", "eps", "steps", "step", "mix", "warmup_epochs", "beta",
            "attack_loss", "norm")  # fmt: skip
    return make_objective(task, *(o[key] for key in keys))


def _train_denoiser(o: dict[str, Any]) -> None:
    """``defend train denoiser``: :func:`defend.smooth.denoiser.train_denoiser`."""
    from defend.smooth.denoiser import train_denoiser

    if o["checkpoint"] is None or o["sigma"] is None:
        raise DefendError("defend train denoiser needs --checkpoint BASE.pt and --sigma S")
    history = train_denoiser(
        o["checkpoint"], o["data"], o["out"], o["sigma"], objective=o["objective"],
        depth=o["depth"], width=o["width"], config=_helper_config(8, o), resume=o["resume"],
        log=typer.echo,
    )  # fmt: skip
    _show_final("denoiser", o["out"], history)


def _train_detector(o: dict[str, Any]) -> None:
    """``defend train detector``: :func:`defend.detect.detector.train_detector`."""
    from defend.detect.detector import train_detector

    if o["checkpoint"] is None:
        raise DefendError("defend train detector needs --checkpoint RECON.pt (the model it guards)")
    max_iter = 150 if o["max_iter"] is None else o["max_iter"]
    history = train_detector(
        o["checkpoint"], o["data"], o["out"], detection_data=o["detection_data"],
        n=o["slices"], max_iter=max_iter, config=_helper_config(10, o, 16), resume=o["resume"],
        progress=o["progress"], log=typer.echo,
    )  # fmt: skip
    _show_final("detector", o["out"], history)


def _train_input_detector(o: dict[str, Any]) -> None:
    """``defend train input-detector``: :func:`defend.detect.inputs.train_input_detector`."""
    from defend.detect.inputs import train_input_detector

    if o["checkpoint"] is None:
        raise DefendError(
            "defend train input-detector needs --checkpoint SEG_OR_CLS.pt (the model it guards)"
        )
    if o["max_iter"] is not None:
        raise DefendError("--max-iter is for defend train detector (input-detector data uses "
                          "its attacks' own)")  # fmt: skip
    history = train_input_detector(
        o["checkpoint"], o["data"], o["out"], detection_data=o["detection_data"],
        n=o["slices"], eps=o["eps"], config=_helper_config(20, o, 16), resume=o["resume"],
        log=typer.echo,
    )  # fmt: skip
    _show_final("input detector", o["out"], history)


def _helper_config(default_epochs: int, o: dict[str, Any], default_batch: int = 8) -> Any:
    """The TrainConfig of a denoiser or detector run (lr 1e-3 unless given)."""
    from defend.train import TrainConfig

    batch_size = default_batch if o["batch_size"] is None else o["batch_size"]
    return TrainConfig(
        epochs=default_epochs if o["epochs"] is None else o["epochs"], batch_size=batch_size,
        lr=1e-3 if o["lr"] is None else o["lr"], seed=o["seed"], device=o["device"],
        num_workers=o["workers"], progress=o["progress"],
    )  # fmt: skip


def _show_final(kind: str, out: Path, history: list[dict[str, Any]]) -> None:
    """The last epoch's metrics of a run, and a warning line for each sign of a useless model
    (:func:`defend.metrics.quality_warnings`; process 0 only)."""
    from defend.train.distributed import is_main_process

    if history and is_main_process():
        typer.echo(f"{kind} checkpoint {out}: " + format_metrics(history[-1]))
        warn_quality(out)
