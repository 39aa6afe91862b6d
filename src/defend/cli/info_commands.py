"""``defend info``: what a checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import app, format_metrics, warn_quality


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
    typer.echo(f"metrics   {format_metrics(ckpt['metrics'])}")
    warn_quality(checkpoint)
    objective = (ckpt.get("run") or {}).get("objective") or {"name": "standard"}
    if ckpt.get("kind") == "denoiser":
        base = ckpt.get("base") or {}
        typer.echo(
            f"denoiser  for {base.get('file')} ({ckpt['task']})  sigma {objective['sigma']:g}  "
            f"objective {objective['objective']}"
        )
    elif objective["name"] != "standard":
        settings = {k: v for k, v in objective.items() if k != "name"}
        typer.echo(f"training  adversarial {objective['name']}  {format_metrics(settings)}")
    if ckpt.get("imported"):
        origin = ckpt["imported"]
        typer.echo(f"imported  {origin['kind']} {origin['file']} (sha256 {origin['sha256']})")
    if ckpt.get("best"):
        monitor = (ckpt.get("monitor") or {}).get("metric") or get_task(ckpt["task"]).monitor
        best = ckpt["best"]
        value = best.get(monitor, float("nan"))
        typer.echo(f"best      epoch {best['epoch']} by {monitor} {value:.4f} (NAME.best.pt)")
    if ckpt.get("stopped"):
        typer.echo(f"stopped   {ckpt['stopped']}")
