"""The ``defend`` command line: a thin Typer layer over the library's functions.

Every command maps onto one function a notebook can call; this module only parses options,
prints, and turns :class:`~defend.errors.DefendError` into a one-line message and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from defend.errors import DefendError

try:  # Typer >= 0.22 vendors Click as typer._click; earlier versions use Click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

app = typer.Typer(
    help="Attack and harden deep networks for medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Built-in synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


PROGRESS = typer.Option(True, help="Show progress bars.")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["chans=32", "crop=[320,320]"]`` -> ``{"chans": 32, "crop": [320, 320]}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DefendError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _check_model_options(task: str, model: str | None, pairs: list[str]) -> dict[str, Any]:
    """``--set`` pairs parsed and checked against the model (one line naming the pair)."""
    from defend.errors import ModelOptionError
    from defend.models import check_model_options

    options = _parse_options(pairs)
    try:
        check_model_options(task, model, options)
    except ModelOptionError as exc:
        pair = next(p for p in reversed(pairs) if p.partition("=")[0] == exc.key)
        raise DefendError(f"--set {pair}: {exc.reason}") from None
    return options


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the data set into."),
    size: int = typer.Option(64, help="Image size in pixels (square)."),
    coils: int = typer.Option(4, help="Number of receive coils."),
    volumes: int = typer.Option(24, help="Number of phantom volumes (split 70/15/15)."),
    slices: int = typer.Option(8, help="Slices per volume."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same bytes."),
    progress: bool = PROGRESS,
) -> None:
    """Generate MRI-like brain phantoms: fastMRI HDF5 k-space, segmentation pairs, class images.

    An interrupted run resumes when run again with the same options.
    """
    from defend.data import synthesize
    from defend.data.synth import describe_synth

    summary = synthesize(
        out, size=size, coils=coils, volumes=volumes, slices=slices, seed=seed, progress=progress
    )
    typer.echo(describe_synth(out, summary))


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

    model_options = _check_model_options(task, model, set_)
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
        typer.echo(f"{task} checkpoint {out}: " + _format_metrics(final))


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
        typer.echo(f"{kind} checkpoint {out}: " + _format_metrics(history[-1]))


def _format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


detect_app = typer.Typer(help="Hallucination and input detectors.", no_args_is_help=True)
app.add_typer(detect_app, name="detect")


@detect_app.command("eval")
def detect_eval(
    detector: Path = typer.Option(..., help="A defend train detector checkpoint."),
    checkpoint: Path = typer.Option(..., help="The reconstruction model it guards."),
    data: Path = typer.Option(..., help="Data folder."),
    out: Path = typer.Option(..., help="Folder for scores.csv, metrics.json, roc.png."),
    split: str = typer.Option("test", help="The split to evaluate on (held-out settings)."),
    detection_data: Path = typer.Option(None, help="Detection data folder (default DET.data)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA if present)."),
    progress: bool = PROGRESS,
) -> None:
    """The detector beside oracle and reference-free baselines, per attack and budget."""
    from defend.detect.evaluate import detect_eval as evaluate
    from defend.detect.evaluate import format_metrics

    metrics = evaluate(
        detector, checkpoint, data, out, split=split, detection_data=detection_data,
        device=device, progress=progress,
    )  # fmt: skip
    typer.echo(format_metrics(metrics))
    typer.echo(f"wrote {out}/scores.csv, metrics.json, roc.png")


@detect_app.command("inputs")
def detect_inputs(
    detector: Path = typer.Option(..., help="A defend train input-detector checkpoint."),
    detection_data: Path = typer.Option(None, help="Its detection data (default DET.data)."),
    split: str = typer.Option("test", help="The split to evaluate on."),
    out: Path = typer.Option(None, help="Write the metrics to this JSON file."),
) -> None:
    """An input detector through ART's BinaryInputDetector: AUROC and detection rate per
    attack, false-positive rate on clean images."""
    from defend.detect.detector import default_data_folder
    from defend.detect.inputs import evaluate_input_detector
    from defend.io import write_json

    folder = detection_data or default_data_folder(detector)
    metrics = evaluate_input_detector(detector, folder, split)
    typer.echo(f"false-positive rate on {metrics['clean']} clean images: "
               f"{metrics['false_positive_rate']:.3f} (ART's argmax), "
               f"{metrics['false_positive_rate_calibrated']:.3f} (calibrated threshold "
               f"{metrics['threshold']:.3g})")  # fmt: skip
    for name, m in metrics.items():
        if isinstance(m, dict):
            typer.echo(f"{name:>8s}  n {m['n']:4d}  AUROC {m['auroc']:.3f}  "
                       f"detected {m['detected']:.3f} (argmax), "
                       f"{m['detected_calibrated']:.3f} (calibrated)")  # fmt: skip
    if out is not None:
        write_json(out, metrics)
        typer.echo(f"wrote {out}")


@detect_app.command("evade")
def detect_evade(
    detector: Path = typer.Option(..., help="A defend train detector checkpoint."),
    checkpoint: Path = typer.Option(..., help="The reconstruction model it guards."),
    data: Path = typer.Option(..., help="Data folder."),
    out: Path = typer.Option(..., help="Folder for evasion.json."),
    weights: str = typer.Option("0,1,10,100", help="Comma-separated --evade-weight values."),
    n: int = typer.Option(16, help="Slices attacked per weight."),
    split: str = typer.Option("test", help="The split (its detection data gives negatives)."),
    max_iter: int = typer.Option(150, help="The attack's iterations."),
    detection_data: Path = typer.Option(None, help="Detection data folder (default DET.data)."),
) -> None:
    """The detector-aware attack at each weight: AUROC, flagged share and strength."""
    from defend.detect.evaluate import evaluate_evasion

    try:
        values = tuple(float(w) for w in weights.split(","))
    except ValueError:
        raise DefendError(f"--weights expects comma-separated numbers, got '{weights}'") from None
    result = evaluate_evasion(
        detector, checkpoint, data, out, weights=values, n=n, split=split,
        detection_data=detection_data, params={"max_iter": max_iter},
    )  # fmt: skip
    typer.echo(f"{'weight':>8s} {'AUROC':>7s} {'TPR@5%':>7s} {'flagged':>8s} {'strength':>9s}")
    for r in result["rows"]:
        typer.echo(
            f"{r['evade_weight']:8g} {r['auroc']:7.3f} {r['tpr_at_5fpr']:7.3f} "
            f"{r['flagged']:8.3f} {r['strength']:9.3f}"
        )
    typer.echo(f"wrote {out}/evasion.json")


attack_app = typer.Typer(help="Run an attack against a checkpoint.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")


def _run_attack(name: str, common: dict[str, Any], params: dict, progress: bool = True) -> None:
    """Check device and output folder, run the attack, print its summary."""
    from defend.attacks.run import format_summary, run_attack

    params = {k: v for k, v in params.items() if v is not None}
    params["verbose"] = progress
    result = run_attack(name, **common, params=params)
    shapes = len(result["shapes"])
    typer.echo(
        f"attacked {result['attacked']} samples of {result['data_root']}"
        + (f" ({shapes} k-space shapes)" if shapes > 1 else "")
    )
    typer.echo(format_summary(result["summary"]))
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {', '.join(result['files'].values())}")


def _pair(value: str | None, what: str) -> tuple[int, int] | None:
    """ "60x4" or "8" -> (4, 60) / (8, 8): width x height as on screen, returned (h, w)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise DefendError(f"--{what} expects WxH or N, got '{value}'") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise DefendError(f"--{what} expects WxH or N, got '{value}'")
    return parts[1], parts[0]


CHECKPOINT = typer.Option(..., help="A defend train checkpoint of the attack's task.")
DATA = typer.Option(..., help="Data folder.")
OUT = typer.Option(..., help="Output folder for metrics.csv, metrics.json, figure.png.")
SPLIT = typer.Option("test", help="Data split to attack.")
N = typer.Option(16, help="Number of samples to attack.")
SKIP = typer.Option(1, help="Attack every skip-th sample of the split.")
SEED = typer.Option(0, help="Attack seed.")
BATCH = typer.Option(16, help="Samples attacked together (results do not depend on it).")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present).")
SAVE = typer.Option(False, help="Also write OUT/adversarial.npz (x, x_adv, y, indices).")


SMOOTH_SIGMA = typer.Option(
    None, help="Attack the smoothed model at this noise level (EOT), as defend certify's."
)
DENOISER = typer.Option(None, help="With --smooth-sigma: the denoiser in front of the model.")
EOT = typer.Option(8, help="With --smooth-sigma: noise draws averaged per forward pass.")


def _common(
    checkpoint: Path,
    data: Path,
    out: Path,
    split: str,
    n: int,
    device: str | None,
    save: bool,
    smooth_sigma: float | None = None,
    denoiser: Path | None = None,
    eot: int = 8,
    skip: int = 1,
) -> dict[str, Any]:
    """The keyword arguments every attack command passes to ``run_attack``."""
    if smooth_sigma is None and denoiser is not None:
        raise DefendError("--denoiser needs --smooth-sigma (the noise it removes)")
    smooth = None if smooth_sigma is None else {"sigma": smooth_sigma, "denoiser": denoiser}
    return {
        "smooth": smooth and {**smooth, "eot": eot},
        "checkpoint": checkpoint,
        "data_dir": data,
        "out": out,
        "split": split,
        "n": n,
        "skip": skip,
        "device": device,
        "save_adversarial": save,
    }


@attack_app.command("hallucination")
def attack_hallucination(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = OUT,
    split: str = SPLIT,
    n: int = N,
    skip: int = SKIP,
    eps: float = typer.Option(
        0.1,
        help="Budget, relative: about eps x the k-space norm, for either norm and any image "
        "size (see --eps-mode).",
    ),
    eps_mode: str = typer.Option(
        "relative",
        help="relative (l2: to each coil's k-space norm; l-inf: to the RMS of the movable "
        "entries) or absolute (raw k-space units).",
    ),
    norm: str = typer.Option("inf", help="inf or 2 (per coil)."),
    step: float = typer.Option(0.1, help="Step size as a fraction of eps."),
    max_iter: int = typer.Option(150, help="Iterations."),
    patience: int = typer.Option(10, help="Early-stopping patience (0: off)."),
    part: str = typer.Option("real", help="real (as the paper) or complex."),
    region: str = typer.Option("line", help="line or square."),
    region_size: str = typer.Option(None, help="WxH or N pixels (default: the paper's, scaled)."),
    region_center: str = typer.Option(
        None, help="XxY pixel position of the centre (default: image centre)."
    ),
    region_mask: Path = typer.Option(None, help="A .npy or image file with the region mask."),
    alpha: float = typer.Option(0.3, help="Target contrast, fraction of the image range."),
    weight_inside: float = typer.Option(1.0, help="Loss weight inside the region."),
    weight_outside: float = typer.Option(1.0, help="Loss weight outside the region."),
    seed: int = SEED,
    batch_size: int = BATCH,
    device: str = DEVICE,
    save_adversarial: bool = SAVE,
    smooth_sigma: float = SMOOTH_SIGMA,
    denoiser: Path = DENOISER,
    eot: int = EOT,
    evade: Path = typer.Option(
        None, help="A detector checkpoint: attack it jointly (its score in the attack's loss)."
    ),
    evade_weight: float = typer.Option(1.0, help="With --evade: the weight of its score."),
    progress: bool = PROGRESS,
) -> None:
    """Masked iterative FGSM in k-space: make a reconstruction hallucinate (seed 000)."""
    mask = None
    if region_mask is not None:
        mask = _read_mask(region_mask)
    center = _pair(region_center, "region-center")
    evading = {} if evade is None else {"detector": evade, "evade_weight": evade_weight}
    _run_attack(
        "hallucination" if evade is None else "hallucination-evade",
        _common(
            checkpoint,
            data,
            out,
            split,
            n,
            device,
            save_adversarial,
            smooth_sigma,
            denoiser,
            eot,
            skip=skip,
        ),
        {
            "eps": eps,
            "eps_mode": eps_mode,
            "norm": norm,
            "step": step,
            "max_iter": max_iter,
            "patience": patience,
            "part": part,
            "region": region,
            "region_size": _pair(region_size, "region-size"),
            "region_center": center,
            "region_mask": mask,
            "alpha": alpha,
            "weight_inside": weight_inside,
            "weight_outside": weight_outside,
            "seed": seed,
            "batch_size": batch_size,
            **evading,
        },
        progress,
    )


def _read_mask(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DefendError(f"{path}: no such region mask file")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            return np.asarray(image) > 0
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DefendError(f"{path}: unreadable region mask ({exc})") from None


@attack_app.command("seg-fgsm")
def attack_seg_fgsm(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = OUT,
    split: str = SPLIT,
    n: int = N,
    skip: int = SKIP,
    eps: float = typer.Option(0.008, help="l-inf budget on [0, 1] images."),
    loss: str = typer.Option("bce", help="bce, dice, dicefocal or training."),
    target: str = typer.Option("auto", help="truth, prediction or auto."),
    max_iter: int = typer.Option(1, help="1: FGSM; more: PGD with random start."),
    step: float = typer.Option(
        None, help="Step, fraction of eps (default: 1 for FGSM, 2.5/max_iter for PGD)."
    ),
    seed: int = SEED,
    batch_size: int = BATCH,
    device: str = DEVICE,
    save_adversarial: bool = SAVE,
    smooth_sigma: float = SMOOTH_SIGMA,
    denoiser: Path = DENOISER,
    eot: int = EOT,
    progress: bool = PROGRESS,
) -> None:
    """FGSM / PGD against a segmentation model (seed 001)."""
    _run_attack(
        "seg-fgsm",
        _common(
            checkpoint,
            data,
            out,
            split,
            n,
            device,
            save_adversarial,
            smooth_sigma,
            denoiser,
            eot,
            skip=skip,
        ),
        {
            "eps": eps,
            "loss": loss,
            "target": target,
            "max_iter": max_iter,
            "step": step,
            "seed": seed,
            "batch_size": batch_size,
        },
        progress,
    )


@attack_app.command("dgde")
def attack_dgde(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = OUT,
    split: str = SPLIT,
    n: int = N,
    skip: int = SKIP,
    population: int = typer.Option(8, help="DE population per image."),
    f: float = typer.Option(0.5, "--F", help="DE mutation factor."),
    cr: float = typer.Option(0.7, "--CR", help="DE crossover probability."),
    max_iter: int = typer.Option(20, help="DE generations at most (0: no DE)."),
    patience: int = typer.Option(2, help="Generations without progress before stopping."),
    max_queries: int = typer.Option(2000, help="Query budget per image."),
    prune: bool = typer.Option(True, help="Batched greedy pruning after DE."),
    prune_groups: int = typer.Option(12, help="Pixel groups tried per pruning round."),
    noise_max: float = typer.Option(1.0, help="Largest noise magnitude (fraction of range)."),
    noise: str = typer.Option("salt_pepper", help="salt_pepper or uniform (the seed's)."),
    seed: int = SEED,
    batch_size: int = typer.Option(
        8, help="Images attacked together (results do not depend on it)."
    ),
    device: str = DEVICE,
    save_adversarial: bool = SAVE,
    smooth_sigma: float = SMOOTH_SIGMA,
    denoiser: Path = DENOISER,
    eot: int = EOT,
    progress: bool = PROGRESS,
) -> None:
    """DGDE: black-box few-pixel differential evolution on a classifier (seed 002)."""
    _run_attack(
        "dgde",
        _common(
            checkpoint,
            data,
            out,
            split,
            n,
            device,
            save_adversarial,
            smooth_sigma,
            denoiser,
            eot,
            skip=skip,
        ),
        {
            "population": population,
            "F": f,
            "CR": cr,
            "max_iter": max_iter,
            "patience": patience,
            "max_queries": max_queries,
            "prune": prune,
            "prune_groups": prune_groups,
            "noise_max": noise_max,
            "noise": noise,
            "seed": seed,
            "batch_size": batch_size,
        },
        progress,
    )


@app.command("info")
def info(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by defend train."),
) -> None:
    """Print a checkpoint's task, model, data and validation metrics."""
    from defend.io import load_checkpoint
    from defend.tasks import get_task

    ckpt = load_checkpoint(checkpoint)
    typer.echo(f"task      {ckpt['task']}")
    typer.echo(f"model     {json.dumps(ckpt['model_config'])}")
    typer.echo(f"data      {json.dumps(ckpt['data'])}")
    typer.echo(f"epoch     {ckpt['epoch']}")
    typer.echo(f"metrics   {_format_metrics(ckpt['metrics'])}")
    objective = (ckpt.get("run") or {}).get("objective") or {"name": "standard"}
    if ckpt.get("kind") == "denoiser":
        base = ckpt.get("base") or {}
        typer.echo(
            f"denoiser  for {base.get('file')} ({ckpt['task']})  sigma {objective['sigma']:g}  "
            f"objective {objective['objective']}"
        )
    elif objective["name"] != "standard":
        settings = {k: v for k, v in objective.items() if k != "name"}
        typer.echo(f"training  adversarial {objective['name']}  {_format_metrics(settings)}")
    if ckpt.get("best"):
        monitor = (ckpt.get("monitor") or {}).get("metric") or get_task(ckpt["task"]).monitor
        best = ckpt["best"]
        value = best.get(monitor, float("nan"))
        typer.echo(f"best      epoch {best['epoch']} by {monitor} {value:.4f} (NAME.best.pt)")
    if ckpt.get("stopped"):
        typer.echo(f"stopped   {ckpt['stopped']}")


@app.command("certify")
def certify(
    checkpoint: Path = typer.Option(..., help="The model to smooth (defend train checkpoint)."),
    data: Path = typer.Option(..., help="Data folder."),
    sigma: float = typer.Option(
        ...,
        help="Noise std: images in [0, 1] units; recon in k-space units (the rms magnitude of "
        "the training split's sampled entries), on the real and imaginary parts.",
    ),
    out: Path = typer.Option(..., help="Folder for certificates.csv, summary.json, figure."),
    denoiser: Path = typer.Option(None, help="A defend train denoiser checkpoint."),
    split: str = typer.Option("test", help="train, val or test."),
    n_samples: int = typer.Option(16, help="Samples of the split to certify."),
    skip: int = typer.Option(1, help="Certify every skip-th sample of the split."),
    n0: int = typer.Option(
        None, help="Selection samples (cls/seg 100; recon: centre candidates 30)."
    ),
    n: int = typer.Option(None, help="Estimation samples (cls 10000, seg 1000, recon 2000)."),
    alpha: float = typer.Option(
        None, help="Failure probability (cls 0.001, seg 1e-4, recon 0.01)."
    ),
    tau: float = typer.Option(0.75, help="seg: vote threshold (radius sigma * Phi^-1(tau))."),
    eps_in: float = typer.Option(
        None, help="recon: input l2 radius in k-space units, as sigma (default sigma)."
    ),
    batch_size: int = typer.Option(1000, help="Noisy copies per forward pass."),
    seed: int = typer.Option(0, help="Random seed (the sample at position i: seed + i)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA if present)."),
    progress: bool = PROGRESS,
) -> None:
    """Certify a smoothed model (optionally behind a denoiser) on a data split.

    Recon: the noise is fixed before any sample is seen (std sigma x the training split's
    k-space unit, printed as unit and noise_std); a certificate covers l2 perturbations of
    the real and imaginary parts of the sampled k-space entries up to eps_in units.
    """
    from defend.smooth.certify import certify_split

    summary = certify_split(
        checkpoint, data, out, sigma, denoiser=denoiser, split=split, n_samples=n_samples,
        skip=skip, n0=n0, n=n, alpha=alpha, batch_size=batch_size, tau=tau, eps_in=eps_in,
        seed=seed, device=device, progress=progress,
    )  # fmt: skip
    shown = {k: v for k, v in summary.items() if k not in ("rows", "curve", "settings")}
    noise = {k: v for k, v in summary["settings"].items() if k in ("unit", "noise_std")}
    shown.update(noise)
    typer.echo(json.dumps(shown, indent=1))
    typer.echo(f"wrote {out}/certificates.csv, summary.json, certified.png")


@app.command("matrix")
def matrix_command(
    config: str = typer.Argument(
        "quick", help="A preset (smoke, quick, paper) or a TOML configuration file."
    ),
    out: Path = typer.Option(Path("runs/matrix"), help="Folder for cells, tables and report."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Show the resolved configuration and stop."
    ),
    force: bool = typer.Option(False, help="Run every cell again (builds are kept)."),
    engine: str = typer.Option("local", help="local (one process) or ray."),
    address: str = typer.Option(None, help="ray: the address of an existing cluster."),
    workers: int = typer.Option(None, help="ray: CPUs of the local Ray (default all)."),
    shard: str = typer.Option(None, help="I/N: run every N-th cell from the I-th only."),
    cache: Path = typer.Option(None, help="Where builds are cached (default OUT/../cache)."),
    progress: bool = PROGRESS,
) -> None:
    """Every defence against every attack on the built-in data (or CONFIG's), resumable.

    Writes OUT/cells/*.json (one a cell, as it finishes), OUT/matrix.csv, OUT/matrix.md and
    the sanity flags; a run started again runs only the missing cells. Exit 1 when a cell
    failed (its error is in its record and in matrix.md).
    """
    from defend.matrix import format_config, load_config, run_matrix
    from defend.matrix.run import parse_shard

    resolved = load_config(config)
    if print_config:
        typer.echo(format_config(resolved))
        return
    summary = run_matrix(resolved, out, engine=engine, address=address,
                         shard=parse_shard(shard), force=force, cache=cache,
                         workers=workers, progress=progress, log=typer.echo)  # fmt: skip
    _show_matrix(summary)


@app.command("report")
def report_command(
    out: Path = typer.Argument(..., help="A matrix folder (defend matrix --out)."),
    merge: list[Path] = typer.Option(
        None, help="Also read the cells of these folders (shards); repeatable."
    ),
) -> None:
    """Rebuild a matrix's tables and report from its saved cells (and its shards')."""
    from defend.matrix import report

    folders = [out, *(merge or [])]
    _show_matrix(report(out, folders=folders))


def _show_matrix(summary: dict[str, Any]) -> None:
    out = Path(summary["out"])
    typer.echo((out / "matrix.md").read_text())
    typer.echo(f"tables: {out / 'matrix.md'}, long form: {out / 'matrix.csv'}")
    typer.echo(f"report: {out / 'report.html'} (open it in a browser)")
    if summary.get("missing"):
        typer.echo(f"{len(summary['missing'])} cells not run yet (run defend matrix again)")
    if summary["failed"]:
        typer.echo(f"{len(summary['failed'])} cells failed: {', '.join(summary['failed'])}",
                   err=True)  # fmt: skip
        raise typer.Exit(1)


bench_app = typer.Typer(
    help="Benchmarks: attack wall time against model time and ART; adversarial-training epoch "
    "time against standard training; robustness of checkpoints side by side.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("models")
def bench_models_command(
    out: Path = typer.Argument(Path("runs/bench"), help="Folder for data and checkpoints."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    n: int = typer.Option(4, help="Test samples per attack."),
    quick: bool = typer.Option(False, help="Smoke run: 32 px data, 1 epoch, short attacks."),
    progress: bool = PROGRESS,
) -> None:
    """The models `bench attacks` and `bench certify` time: synthesise the built-in data,
    train the four default models, attack each once.

    An interrupted run resumes when run again with the same options; a folder that holds
    models of other settings (e.g. a --quick one) is refused.
    """
    from defend.bench.models import format_models, run_models

    summary = run_models(
        out, seed=seed, device=device, n=n, quick=quick, progress=progress, log=typer.echo
    )
    typer.echo(f"== summary ({out / 'summary.json'})")
    typer.echo(format_models(summary))


@bench_app.command("attacks")
def bench_attacks_command(
    run_dir: Path = typer.Argument(Path("runs/bench"), help="Folder `defend bench models` wrote."),
    n: int = typer.Option(4, help="Samples per task, attacked as one batch."),
    out: Path = typer.Option(None, help="Also write the results to this JSON file."),
    split: str = typer.Option("test", help="Data split the samples come from."),
    iters: int = typer.Option(20, help="Iterations of the gradient attacks and ART's PGD."),
    repeats: int = typer.Option(3, help="Timed repeats after a warm-up (medians reported)."),
    pixel_th: str = typer.Option("1,5,20", help="PixelAttack pixel counts, comma-separated."),
    pixel_max_iter: int = typer.Option(
        100, help="PixelAttack's DE generations per pixel count (100: ART's default)."
    ),
    dgde_patience: int = typer.Option(
        None, help="DGDE generations without progress to stop (default: DGDE's)."
    ),
    dgde_max_queries: int = typer.Option(
        None, help="DGDE's query budget per image (default: DGDE's)."
    ),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    threads: int = typer.Option(
        1,
        help="torch CPU threads during the run (0: torch's default); 1 keeps timings on a "
        "shared CPU stable.",
    ),
) -> None:
    """Time each attack against its floor of pure model time and against ART's attacks."""
    from defend.bench import bench_attacks, format_bench, jsonable
    from defend.device import pick_device
    from defend.io import check_writable, write_json

    pick_device(device)
    if out is not None:
        check_writable(out, "file")
    try:
        ths = [int(t) for t in pixel_th.split(",") if t.strip()]
    except ValueError:
        raise DefendError(f"--pixel-th expects integers like 1,5,20, got '{pixel_th}'") from None
    if not ths or min(ths) < 1:
        raise DefendError(f"--pixel-th expects positive integers, got '{pixel_th}'")
    result = bench_attacks(
        run_dir,
        n=n,
        split=split,
        iters=iters,
        repeats=repeats,
        pixel_th=ths,
        pixel_max_iter=pixel_max_iter,
        dgde_params={
            k: v
            for k, v in {"patience": dgde_patience, "max_queries": dgde_max_queries}.items()
            if v is not None
        },
        device=device,
        threads=threads or None,
        log=typer.echo,
    )
    typer.echo("")
    typer.echo(format_bench(result))
    if out is not None:
        write_json(out, jsonable(result))
        typer.echo(f"wrote {out}")


@bench_app.command("train")
def bench_train_command(
    data: Path = typer.Argument(
        Path("runs/bench/data"), help="Data folder with a train split (defend data synth DIR)."
    ),
    out: Path = typer.Option(None, help="Also write the results to this JSON file."),
    tasks: str = typer.Option(
        "recon/unet,recon/varnet,seg,cls", help="TASK or TASK/MODEL names, comma-separated."
    ),
    steps: int = typer.Option(
        None, help="Attack steps per batch for every method (default: each method's; fgsm-rs 1)."
    ),
    batches: int = typer.Option(4, help="Training batches per benchmark epoch."),
    batch_size: int = typer.Option(8, help="Samples per batch."),
    repeats: int = typer.Option(3, help="Timed repeats after a warm-up (medians reported)."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    threads: int = typer.Option(
        1,
        help="torch CPU threads during the run (0: torch's default); 1 keeps timings on a "
        "shared CPU stable.",
    ),
) -> None:
    """Time each adversarial-training method's epoch over the standard epoch (ideal steps + 1)."""
    from defend.bench import bench_train, format_train_bench, jsonable
    from defend.io import check_writable, write_json

    if out is not None:
        check_writable(out, "file")
    result = bench_train(
        data,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        steps=steps,
        batches=batches,
        batch_size=batch_size,
        repeats=repeats,
        device=device,
        threads=threads or None,
        log=typer.echo,
    )
    typer.echo("")
    typer.echo(format_train_bench(result))
    if out is not None:
        write_json(out, jsonable(result))
        typer.echo(f"wrote {out}")


@bench_app.command("certify")
def bench_certify_command(
    run_dir: Path = typer.Argument(Path("runs/bench"), help="Folder `defend bench models` wrote."),
    samples: int = typer.Option(2, help="Test samples certified per model."),
    n0: int = typer.Option(100, help="Selection samples (recon: centre candidates)."),
    n: int = typer.Option(2000, help="Estimation samples."),
    batch_size: int = typer.Option(500, help="Noisy copies per forward pass."),
    repeats: int = typer.Option(3, help="Timed repeats after a warm-up (medians reported)."),
    out: Path = typer.Option(None, help="Also write the results to this JSON file."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    threads: int = typer.Option(1, help="torch CPU threads during the run (0: torch's default)."),
) -> None:
    """Certify throughput over the base model's forward throughput, and ART's smoothing."""
    from defend.bench.certify import bench_certify, format_certify
    from defend.device import pick_device
    from defend.io import check_writable, jsonable, write_json

    pick_device(device)
    if out is not None:
        check_writable(out, "file")
    rows = bench_certify(
        run_dir, samples=samples, n0=n0, n=n, batch_size=batch_size, repeats=repeats,
        device=device, threads=threads or None, log=typer.echo,
    )  # fmt: skip
    typer.echo(format_certify(rows))
    if out is not None:
        write_json(out, jsonable(rows))
        typer.echo(f"wrote {out}")


@bench_app.command("robustness")
def bench_robustness_command(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoints of one task (e.g. a standard model and its hardened twin)."
    ),
    data: Path = typer.Option(..., help="Data folder."),
    split: str = typer.Option("test", help="Data split the samples come from."),
    n: int = typer.Option(16, help="Samples attacked (the first n of the split)."),
    eps: float = typer.Option(
        None, help="Attack budget (default: the task's, as defend train --eps)."
    ),
    seed: int = typer.Option(0, help="Random seed of the attacks."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    out: Path = typer.Option(None, help="Also write the results to this JSON file."),
) -> None:
    """Clean metric, the project's attack and ART's PGD against each checkpoint, same samples."""
    from defend.bench.robustness import compare_robustness, format_robustness
    from defend.device import pick_device
    from defend.io import check_writable, jsonable, write_json

    pick_device(device)
    if out is not None:
        check_writable(out, "file")
    results = compare_robustness(
        checkpoints, data, split=split, n=n, eps=eps, seed=seed, device=device, log=typer.echo
    )
    typer.echo(format_robustness(results))
    if out is not None:
        write_json(out, jsonable(results))
        typer.echo(f"wrote {out}")


#: Printed on Ctrl-C; every long command resumes where it stopped.
INTERRUPTED = "interrupted: rerun the same command to resume"


def _interrupted() -> NoReturn:
    """End a progress bar left mid-line, say how to resume, exit 130 (128 + SIGINT)."""
    typer.echo("", err=True)
    typer.echo(INTERRUPTED, err=True)
    sys.exit(130)


def _show_usage_error(exc: ClickException) -> None:
    """Print a usage error as Typer does in standalone mode (boxed with rich if present)."""
    try:
        from typer import rich_utils
        from typer.core import HAS_RICH
    except ImportError:  # pragma: no cover - older or newer Typer layouts
        HAS_RICH = False
    if HAS_RICH and app.rich_markup_mode is not None:
        rich_utils.rich_format_error(exc)
    else:
        exc.show()


def main() -> None:
    """Console entry point: one-line errors instead of tracebacks, a resume hint on Ctrl-C.

    Runs the app with ``standalone_mode=False``: Typer then turns Ctrl-C into a returned exit
    code 130 (instead of exiting silently) and re-raises usage errors, which are shown as in
    standalone mode (exit 2); ``--help`` returns 0.
    """
    try:
        code = app(standalone_mode=False)
    except DefendError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except ClickException as exc:
        _show_usage_error(exc)
        sys.exit(exc.exit_code)
    if code == 130:
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
