"""``defend detect``: evaluate hallucination and input detectors, and their adaptive
attacks."""

from __future__ import annotations

from pathlib import Path

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import PROGRESS, app
from defend.errors import DefendError

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
    from defend.adaptive.evasion import evaluate_evasion

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
