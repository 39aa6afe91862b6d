"""The ``defend`` command line: a thin Typer layer over the library's functions.

Every command maps onto one function a notebook can call; this module only parses options,
prints, and turns :class:`~defend.errors.DefendError` into a one-line message and exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from defend.errors import DefendError

app = typer.Typer(
    help="Attack and harden deep networks for medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Built-in synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the data set into."),
    size: int = typer.Option(64, help="Image size in pixels (square)."),
    coils: int = typer.Option(4, help="Number of receive coils."),
    volumes: int = typer.Option(24, help="Number of phantom volumes (split 70/15/15)."),
    slices: int = typer.Option(8, help="Slices per volume."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same bytes."),
) -> None:
    """Generate MRI-like brain phantoms: fastMRI HDF5 k-space, segmentation pairs, class images."""
    from defend.data import synthesize

    start = time.perf_counter()
    summary = synthesize(out, size=size, coils=coils, volumes=volumes, slices=slices, seed=seed)
    typer.echo(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    typer.echo(json.dumps(summary.get("counts", summary), indent=2))


@app.command("train")
def train(
    task: str = typer.Argument(..., help="recon, seg or cls."),
    data: Path = typer.Option(..., help="Data folder (defend data synth output or real data)."),
    out: Path = typer.Option(..., help="Checkpoint to write (resumed if it exists)."),
    model: str = typer.Option(
        None, help="recon: unet|varnet; seg: ARCH/ENCODER (smp); cls: resnet18|resnet50."
    ),
    epochs: int = typer.Option(None, help="Epochs (default: per task and model)."),
    batch_size: int = typer.Option(8, help="Batch size."),
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
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a reconstruction, segmentation or classification model."""
    from defend.data import Acquisition
    from defend.tasks import check_task
    from defend.train import TrainConfig, default_schedule, train_model

    check_task(task)
    default_epochs, default_lr = default_schedule(task, model)
    config = TrainConfig(
        epochs=epochs or default_epochs,
        batch_size=batch_size,
        lr=lr or default_lr,
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
        model_options=_parse_options(set_),
        config=config,
        acquisition=acquisition,
        weights=weights,
        resume=resume,
        log=typer.echo,
    )
    if history:
        final = history[-1]
        typer.echo(f"{task} checkpoint {out}: " + _format_metrics(final))


def _format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


attack_app = typer.Typer(help="Run an attack against a checkpoint.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")


def _run_attack(name: str, common: dict[str, Any], params: dict) -> None:
    from defend.attacks.run import format_summary, run_attack

    params = {k: v for k, v in params.items() if v is not None}
    result = run_attack(name, **common, params=params)
    typer.echo(format_summary(result["summary"]))
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
SEED = typer.Option(0, help="Attack seed.")
BATCH = typer.Option(16, help="Samples attacked together (results do not depend on it).")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present).")
SAVE = typer.Option(False, help="Also write OUT/adversarial.npz (x, x_adv, y, indices).")


def _common(
    checkpoint: Path, data: Path, out: Path, split: str, n: int, device: str | None, save: bool
) -> dict[str, Any]:
    """The keyword arguments every attack command passes to ``run_attack``."""
    return {
        "checkpoint": checkpoint,
        "data_dir": data,
        "out": out,
        "split": split,
        "n": n,
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
    eps: float = typer.Option(0.02, help="Budget (see --eps-mode)."),
    eps_mode: str = typer.Option("relative", help="relative (to max |k| / coil norm) or absolute."),
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
) -> None:
    """Masked iterative FGSM in k-space: make a reconstruction hallucinate (seed 000)."""
    mask = None
    if region_mask is not None:
        mask = _read_mask(region_mask)
    center = _pair(region_center, "region-center")
    _run_attack(
        "hallucination",
        _common(checkpoint, data, out, split, n, device, save_adversarial),
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
        },
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
) -> None:
    """FGSM / PGD against a segmentation model (seed 001)."""
    _run_attack(
        "seg-fgsm",
        _common(checkpoint, data, out, split, n, device, save_adversarial),
        {
            "eps": eps,
            "loss": loss,
            "target": target,
            "max_iter": max_iter,
            "step": step,
            "seed": seed,
            "batch_size": batch_size,
        },
    )


@attack_app.command("dgde")
def attack_dgde(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = OUT,
    split: str = SPLIT,
    n: int = N,
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
) -> None:
    """DGDE: black-box few-pixel differential evolution on a classifier (seed 002)."""
    _run_attack(
        "dgde",
        _common(checkpoint, data, out, split, n, device, save_adversarial),
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
    )


@app.command("info")
def info(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by defend train."),
) -> None:
    """Print a checkpoint's task, model, data and validation metrics."""
    from defend.io import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    typer.echo(f"task      {ckpt['task']}")
    typer.echo(f"model     {json.dumps(ckpt['model_config'])}")
    typer.echo(f"data      {json.dumps(ckpt['data'])}")
    typer.echo(f"epoch     {ckpt['epoch']}")
    typer.echo(f"metrics   {_format_metrics(ckpt['metrics'])}")


@app.command("demo")
def demo(
    out: Path = typer.Argument(Path("runs/demo"), help="Folder for data and checkpoints."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    n: int = typer.Option(4, help="Test samples per attack."),
    quick: bool = typer.Option(False, help="Smoke run: 32 px data, 1 epoch, short attacks."),
) -> None:
    """The main job on the built-in data: synthesise it, train every model, attack each."""
    from defend.demo import format_demo, run_demo

    summary = run_demo(out, seed=seed, device=device, n=n, quick=quick, log=typer.echo)
    typer.echo(f"== summary ({out / 'summary.json'})")
    typer.echo(format_demo(summary))


bench_app = typer.Typer(
    help="Benchmarks: attack wall time against model time and ART.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("attacks")
def bench_attacks_command(
    run_dir: Path = typer.Argument(Path("runs/demo"), help="Folder `defend demo` wrote."),
    n: int = typer.Option(4, help="Samples per task, attacked as one batch."),
    out: Path = typer.Option(None, help="Also write the results to this JSON file."),
    split: str = typer.Option("test", help="Data split the samples come from."),
    iters: int = typer.Option(20, help="Iterations of the gradient attacks and ART's PGD."),
    repeats: int = typer.Option(3, help="Timed repeats after a warm-up (medians reported)."),
    pixel_th: str = typer.Option("1,5,20", help="PixelAttack pixel counts, comma-separated."),
    pixel_max_iter: int = typer.Option(5, help="PixelAttack's DE generations per pixel count."),
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
    from defend.io import write_json

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


def main() -> None:
    """Console entry point: run the app, one-line errors instead of tracebacks."""
    try:
        app()
    except DefendError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
