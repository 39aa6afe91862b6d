"""``defend data``: the built-in synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import PROGRESS, app

data_app = typer.Typer(help="Built-in synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the data set into."),
    size: int = typer.Option(64, help="Image size in pixels (square)."),
    coils: int = typer.Option(4, help="Number of receive coils."),
    volumes: int = typer.Option(24, help="Number of phantom volumes (split 70/15/15)."),
    slices: int = typer.Option(8, help="Slices per volume."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same bytes."),
    test_volumes: int = typer.Option(
        0, help="Volumes in the test split, of --volumes (0: about 15 %)."
    ),
    progress: bool = PROGRESS,
) -> None:
    """Generate MRI-like brain phantoms: fastMRI HDF5 k-space, segmentation pairs, class images.

    An interrupted run resumes when run again with the same options.
    """
    from defend.data import synthesize
    from defend.data.synth import describe_synth

    summary = synthesize(out, size=size, coils=coils, volumes=volumes, slices=slices, seed=seed,
                         progress=progress, test_volumes=test_volumes)  # fmt: skip
    typer.echo(describe_synth(out, summary))
