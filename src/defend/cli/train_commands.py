"""``defend train``: models, denoisers, detectors and input detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from defend.cli.app import PROGRESS, app, check_model_options, format_metrics
from defend.errors import DefendError


@app.command("train")
def train(
    task: str = typer.Argument(
        ..., help="recon, seg, cls, or denoiser / detector / input-detector (--checkpoint)."
    ),
    data: Path = typer.Option(..., help="Data folder (defend data synth output or real data)."),
    out: Path = typer.Option(..., help="Checkpoint to write (resumed if it exists)."),
    checkpoint: Path = typer.Option(
        None,
        help="denoiser / detector / input-detector: the model it is trained for (detector: "
        "a recon one; input-detector: a seg or cls one).",
    ),
    detection_data: Path = typer.Option(
        None, help="detector / input-detector: where its detection data is kept (OUT.data)."
    ),
    sigma: float = typer.Option(
        None, help="denoiser: noise level (images: [0, 1] units; recon: relative, see README)."
    ),
    objective: str = typer.Option("mse", help="denoiser: mse, stability or mse-stability."),
    depth: int = typer.Option(8, help="denoiser: DnCNN layers."),
    width: int = typer.Option(32, help="denoiser: DnCNN channels."),
    model: str = typer.Option(
        None, help="recon: unet|varnet; seg: ARCH/ENCODER (smp); cls: resnet18|resnet50."
    ),
    epochs: int = typer.Option(
        None,
        help="Epochs (default: per task and model, see README); 0 with --weights: evaluate the "
        "weights and write a checkpoint without training.",
    ),
    batch_size: int = typer.Option(8, help="Batch size (under torchrun: the global batch)."),
    lr: float = typer.Option(None, help="Learning rate (AdamW, cosine schedule)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)."),
    weights: Path = typer.Option(None, help="Local weight file to start from."),
    set_: list[str] = typer.Option([], "--set", help="Model option KEY=VALUE, repeatable."),
    mask_type: str = typer.Option("equispaced_fraction", help="recon: fastMRI mask type."),
    acceleration: int = typer.Option(4, help="recon: undersampling factor."),
    center_fraction: float = typer.Option(0.08, help="recon: fully sampled centre fraction."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    resume: bool = typer.Option(True, help="Resume an interrupted run found at --out."),
    adversarial: str = typer.Option(
        None,
        help="Adversarial training: recon pgd|hallucination; seg and cls pgd|fgsm-rs|trades.",
    ),
    eps: float = typer.Option(
        None,
        help="Training budget, in the units of the matching attack: recon 0.1 (relative l-inf, "
        "as defend attack hallucination), seg 0.008 (as seg-fgsm), cls 8/255; input-detector: "
        "the budget of the attacks it learns to detect (the same defaults).",
    ),
    steps: int = typer.Option(
        None, help="Attack steps per batch (pgd 7, recon 5, hallucination 5, trades 10)."
    ),
    step: float = typer.Option(
        None, help="Attack step as a fraction of eps (default 2.5 / steps; 1.25 for one step)."
    ),
    mix: float = typer.Option(1.0, help="Fraction of each batch that is attacked."),
    warmup_epochs: int = typer.Option(0, help="Epochs over which eps grows linearly to --eps."),
    beta: float = typer.Option(
        None, help="Weight of the adversarial-vs-clean divergence (TRADES; trades default 6)."
    ),
    attack_loss: str = typer.Option(None, help="seg: bce (default) or training."),
    norm: str = typer.Option("inf", help="recon: inf or 2 (per coil)."),
    progress: bool = PROGRESS,
) -> None:
    """Train a reconstruction, segmentation or classification model (adversarially with
    --adversarial). Runs unchanged on several GPUs under torchrun (see README)."""
    from defend.tasks import check_task

    if task == "denoiser":
        return _train_denoiser(
            data, out, checkpoint, sigma, objective, depth, width, epochs, batch_size, lr, seed,
            device, workers, resume, progress,
        )  # fmt: skip
    if task == "detector":
        return _train_detector(
            data, out, checkpoint, detection_data, epochs, batch_size, lr, seed, device, workers,
            resume, progress,
        )  # fmt: skip
    if task == "input-detector":
        return _train_input_detector(
            data, out, checkpoint, detection_data, eps, epochs, batch_size, lr, seed, device,
            workers, resume, progress,
        )  # fmt: skip
    if checkpoint is not None or sigma is not None or detection_data is not None:
        raise DefendError(
            "--checkpoint, --sigma and --detection-data are for defend train denoiser / "
            "detector / input-detector"
        )
    check_task(task)  # device and --out are checked first thing by train_model
    from defend.data import Acquisition
    from defend.train import TrainConfig, default_schedule, make_objective, train_model
    from defend.train.distributed import is_main_process

    model_options = check_model_options(task, model, set_)
    objective = None
    if adversarial is not None:
        objective = make_objective(
            task, adversarial, eps, steps, step, mix, warmup_epochs, beta, attack_loss, norm
        )
    elif any(v is not None for v in (eps, steps, step, beta, attack_loss)):
        raise DefendError("--eps, --steps, --step, --beta and --attack-loss need --adversarial")
    default_epochs, default_lr = default_schedule(task, model)
    config = TrainConfig(
        epochs=default_epochs if epochs is None else epochs,
        batch_size=batch_size,
        lr=default_lr if lr is None else lr,
        seed=seed,
        device=device,
        num_workers=workers,
        progress=progress,
    )
    acquisition = None
    if task == "recon":
        acquisition = Acquisition(mask_type, center_fraction, acceleration)
    history = train_model(
        task,
        data,
        out,
        model=model,
        model_options=model_options,
        config=config,
        acquisition=acquisition,
        weights=weights,
        objective=objective,
        resume=resume,
        log=typer.echo,
    )
    if history and is_main_process():
        final = history[-1]
        typer.echo(f"{task} checkpoint {out}: " + format_metrics(final))


def _train_denoiser(
    data: Path,
    out: Path,
    checkpoint: Path | None,
    sigma: float | None,
    objective: str,
    depth: int,
    width: int,
    epochs: int | None,
    batch_size: int,
    lr: float | None,
    seed: int,
    device: str | None,
    workers: int,
    resume: bool,
    progress: bool,
) -> None:
    """``defend train denoiser``: :func:`defend.smooth.denoiser.train_denoiser`."""
    from defend.smooth.denoiser import train_denoiser

    if checkpoint is None or sigma is None:
        raise DefendError("defend train denoiser needs --checkpoint BASE.pt and --sigma S")
    config = _helper_config(8, epochs, batch_size, lr, seed, device, workers, progress)
    history = train_denoiser(
        checkpoint, data, out, sigma, objective=objective, depth=depth, width=width,
        config=config, resume=resume, log=typer.echo,
    )  # fmt: skip
    _show_final("denoiser", out, history)


def _train_detector(
    data: Path,
    out: Path,
    checkpoint: Path | None,
    detection_data: Path | None,
    epochs: int | None,
    batch_size: int,
    lr: float | None,
    seed: int,
    device: str | None,
    workers: int,
    resume: bool,
    progress: bool,
) -> None:
    """``defend train detector``: :func:`defend.detect.detector.train_detector`."""
    from defend.detect.detector import train_detector

    if checkpoint is None:
        raise DefendError("defend train detector needs --checkpoint RECON.pt (the model it guards)")
    config = _helper_config(12, epochs, batch_size, lr, seed, device, workers, progress)
    history = train_detector(
        checkpoint, data, out, detection_data=detection_data, config=config, resume=resume,
        progress=progress, log=typer.echo,
    )  # fmt: skip
    _show_final("detector", out, history)


def _train_input_detector(
    data: Path, out: Path, checkpoint: Path | None, detection_data: Path | None,
    eps: float | None, epochs: int | None, batch_size: int, lr: float | None, seed: int,
    device: str | None, workers: int, resume: bool, progress: bool,
) -> None:  # fmt: skip
    """``defend train input-detector``: :func:`defend.detect.inputs.train_input_detector`."""
    from defend.detect.inputs import train_input_detector

    if checkpoint is None:
        raise DefendError(
            "defend train input-detector needs --checkpoint SEG_OR_CLS.pt (the model it guards)"
        )
    config = _helper_config(20, epochs, batch_size, lr, seed, device, workers, progress)
    history = train_input_detector(
        checkpoint, data, out, detection_data=detection_data, eps=eps, config=config,
        resume=resume, log=typer.echo,
    )  # fmt: skip
    _show_final("input detector", out, history)


def _helper_config(
    default_epochs: int, epochs: int | None, batch_size: int, lr: float | None, seed: int,
    device: str | None, workers: int, progress: bool,
) -> Any:  # fmt: skip
    """The TrainConfig of a denoiser or detector run (lr 1e-3 unless given)."""
    from defend.train import TrainConfig

    return TrainConfig(
        epochs=default_epochs if epochs is None else epochs,
        batch_size=batch_size,
        lr=1e-3 if lr is None else lr,
        seed=seed,
        device=device,
        num_workers=workers,
        progress=progress,
    )


def _show_final(kind: str, out: Path, history: list[dict[str, Any]]) -> None:
    """The last epoch's metrics of a run (process 0 only)."""
    from defend.train.distributed import is_main_process

    if history and is_main_process():
        typer.echo(f"{kind} checkpoint {out}: " + format_metrics(history[-1]))
