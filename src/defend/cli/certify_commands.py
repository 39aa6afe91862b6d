"""``defend certify``: certificates of a smoothed model on a data split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import PROGRESS, app, signature

#: the options of ``defend certify``, in the order --help shows them: name -> (type, option)
CERTIFY_OPTIONS: dict[str, tuple[type, Any]] = {
    "checkpoint": (Path, typer.Option(
        ..., help="The model to smooth (defend train checkpoint).")),
    "data": (Path, typer.Option(..., help="Data folder.")),
    "sigma": (float, typer.Option(
        ..., help="Noise std: images in [0, 1] units; recon in k-space units (the rms "
        "magnitude of the training split's sampled entries), on the real and imaginary "
        "parts.")),
    "out": (Path, typer.Option(
        ..., help="Folder for certificates.csv, summary.json, figure.")),
    "denoiser": (Path, typer.Option(None, help="A defend train denoiser checkpoint.")),
    "split": (str, typer.Option("test", help="train, val or test.")),
    "n_samples": (int, typer.Option(16, help="Samples of the split to certify.")),
    "skip": (int, typer.Option(1, help="Certify every skip-th sample of the split.")),
    "n0": (int, typer.Option(
        None, help="Selection samples (cls/seg 100; recon: centre candidates 30).")),
    "n": (int, typer.Option(
        None, help="Estimation samples (cls 10000, seg 1000, recon 2000).")),
    "alpha": (float, typer.Option(
        None, help="Failure probability (cls 0.001, seg 1e-4, recon 0.01).")),
    "tau": (float, typer.Option(
        None, help="seg: vote threshold in (0.5, 1) (radius sigma * Phi^-1(tau); default "
        "0.75).")),
    "eps_in": (float, typer.Option(
        None, help="recon: input l2 radius in k-space units, as sigma (default sigma).")),
    "batch_size": (int, typer.Option(
        None, help="Noisy copies per forward pass (default: what the memory budget holds, "
        "DEFEND_MEMORY or 80 % of free GPU memory / min(2 GiB, 75 % of free host memory); "
        "results do not depend on it).")),
    "seed": (int, typer.Option(
        0, help="Random seed (the sample at position i: seed + i).")),
    "device": (str, typer.Option(
        None, help="cpu, cuda, ... (default: CUDA if present).")),
    "progress": (bool, PROGRESS),
}  # fmt: skip


def certify(**options: Any) -> None:
    """Certify a smoothed model (optionally behind a denoiser) on a data split.

    Recon: the noise is fixed before any sample is seen (std sigma x the training split's
    k-space unit, printed as unit and noise_std); a certificate covers l2 perturbations of
    the real and imaginary parts of the sampled k-space entries up to eps_in units.
    """
    from defend.smooth.certify import certify_split

    out = options["out"]
    summary = certify_split(
        options.pop("checkpoint"), options.pop("data"), options.pop("out"),
        options.pop("sigma"), **options,
    )  # fmt: skip
    shown = {k: v for k, v in summary.items() if k not in ("rows", "curve", "settings")}
    shown.update({k: v for k, v in summary["settings"].items() if k in ("unit", "noise_std")})
    typer.echo(json.dumps(shown, indent=1))
    typer.echo(f"wrote {out}/certificates.csv, summary.json, certified.png")


certify.__signature__ = signature(CERTIFY_OPTIONS)
app.command("certify")(certify)
