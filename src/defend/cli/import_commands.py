"""``defend import``: weights trained elsewhere as a defend checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import DEVICE, app, format_metrics, parse_options, warn_quality

KIND_HELP = (
    "fastmri-unet | fastmri-varnet (fastMRI's Unet / VarNet state dicts, sized from their "
    "shapes), smp (--set name=ARCH/ENCODER), torchvision (--set name=resnet50)."
)


@app.command("import")
def import_(
    kind: str = typer.Argument(..., help=KIND_HELP),
    weights: Path = typer.Argument(..., help="The state dict (.pt), read with weights_only."),
    data: Path = typer.Option(..., help="Data folder: its train split describes the data."),
    out: Path = typer.Option(..., help="Checkpoint to write."),
    set_: list[str] = typer.Option(
        [], "--set", help="name=MODEL (smp, torchvision) or a model option KEY=VALUE."
    ),
    mask_type: str = typer.Option("equispaced_fraction", help="fastMRI kinds: mask type."),
    acceleration: int = typer.Option(4, help="fastMRI kinds: undersampling factor."),
    center_fraction: float = typer.Option(0.08, help="fastMRI kinds: fully sampled centre."),
    metrics: bool = typer.Option(True, help="Measure the val split's metrics."),
    device: str = DEVICE,
) -> None:
    """Turn weights trained elsewhere into a defend checkpoint.

    The checkpoint is read like one of defend train's: info, attack, certify, train --weights.
    """
    from defend.data import Acquisition
    from defend.models.upstream import import_task
    from defend.tasks import kind_of
    from defend.train.imported import import_model

    acquisition = None
    if kind_of(import_task(kind)) == "recon":
        acquisition = Acquisition(mask_type, center_fraction, acceleration)
    out = import_model(
        kind, weights, data, out, parse_options(set_), acquisition=acquisition,
        metrics=metrics, device=device, log=typer.echo,
    )  # fmt: skip
    from defend.io import load_checkpoint

    ckpt = load_checkpoint(out)
    typer.echo(f"{ckpt['task']} checkpoint {out} ({kind}, {ckpt['model_config']['name']}): "
               + (format_metrics(ckpt["metrics"]) or "no metrics"))  # fmt: skip
    warn_quality(out)
