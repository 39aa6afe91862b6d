"""The hallucination detector on the built-in data: held-out evaluation and the adaptive attack.

    python scripts/detection.py RUN_DIR --out docs/detection.md

RUN_DIR holds ``data/`` and ``unet-standard.pt`` (``scripts/harden.py``'s; the
``--inputs`` section trains its ``seg-standard`` and ``cls-standard`` too). The script makes
the detection data of all four splits (``make_detection_data``), trains one detector per
score pooling on train / val (``fit_detector``, the function under ``defend train
detector``), keeps the one with the best AUROC on the ``tune`` split (held-out settings on the
val volumes), evaluates only that one on the test split's held-out settings beside the
baselines (``defend detect eval``'s function) and runs the detector-aware attack at several
weights (``defend detect evade``'s). All of it
stays in RUN_DIR/detection and a rerun resumes; the tables go to ``OUT.tables.md`` and
``OUT.json``, and docs/detection.md embeds them.

``--inputs`` measures the input detectors of segmentation and classification instead
(``defend train input-detector`` and ``defend detect inputs``' functions): tables to
``OUT.inputs.md`` and ``OUT.inputs.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from defend.adaptive.evasion import evaluate_evasion
from defend.detect.detector import fit_detector
from defend.detect.evaluate import evaluate_detector, format_metrics
from defend.detect.examples import make_detection_data
from defend.io import jsonable, write_json, write_text
from defend.train import TrainConfig

#: the run's settings: detection data, detector training, the evasion weights
SETTINGS: dict[str, Any] = {
    "checkpoint": "unet-standard.pt",
    "data": {"chunk": 8, "max_iter": 150, "splits": ("train", "val", "tune", "test")},
    "detector": {"chans": 16, "epochs": 10, "batch_size": 16, "lr": 1e-3},
    # the score pooling is chosen on the tune split (held-out settings on the val volumes) by
    # AUROC over all its hallucinations; only the chosen detector sees the test split
    "top_share": (0.01, 0.02, 0.05, 0.1),
    "evade": {"weights": (0.0, 1.0, 10.0), "n": 8},
    "inputs": {"epochs": 20, "batch_size": 16, "lr": 1e-3, "chans": 16},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/detection.md"))
    parser.add_argument("--inputs", action="store_true", help="the seg / cls input detectors")
    args = parser.parse_args()
    if args.inputs:
        return input_detectors(args.run, args.out)
    folder, base = args.run / "detection", args.run / SETTINGS["checkpoint"]
    print("== detection data", flush=True)
    make_detection_data(base, args.run / "data", folder / "data", **SETTINGS["data"])
    tuning = tune(folder)
    det = folder / f"det-top{tuning['chosen']:g}.pt"
    print(f"== held-out evaluation of {det.name} (test split)", flush=True)
    metrics = evaluate_detector(det, folder / "data", folder / "eval")
    print("== detector-aware attack", flush=True)
    evasion = evaluate_evasion(
        det, base, args.run / "data", folder / "evade",
        detection_data=folder / "data", **SETTINGS["evade"],
    )  # fmt: skip
    tables = render_tuning(tuning) + "\n\n" + render(metrics, evasion)
    write_text(args.out.with_suffix(".tables.md"), tables + "\n")
    write_json(args.out.with_suffix(".json"),
               jsonable({"tune": tuning, "eval": metrics, "evade": evasion}))  # fmt: skip
    print(tables)


def tune(folder: Path) -> dict[str, Any]:
    """Train one detector per score pooling (``top_share``) and score each on the tune split;
    the chosen one has the highest AUROC over all tune hallucinations."""
    d = SETTINGS["detector"]
    config = TrainConfig(epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"])
    rows = {}
    for share in SETTINGS["top_share"]:
        det = folder / f"det-top{share:g}.pt"
        print(f"== detector, top {share:g} of the map", flush=True)
        fit_detector(folder / "data", det, chans=d["chans"], top_share=share, config=config)
        rows[share] = evaluate_detector(det, folder / "data", folder / f"tune-top{share:g}",
                                        split="tune")  # fmt: skip
    chosen = max(rows, key=lambda s: rows[s]["groups"]["hallucination"]["detector"]["auroc"])
    return {"chosen": chosen, "criterion": "tune AUROC, all hallucinations", "rows": rows}


def render_tuning(tuning: dict[str, Any]) -> str:
    """The tune split's detector AUROC per score pooling, in markdown."""
    rows = tuning["rows"]
    names = [g for g in next(iter(rows.values()))["groups"] if g.startswith("hallucination")]
    lines = ["| top share | " + " | ".join(names) + " | pointing |",
             "|---" * (len(names) + 2) + "|"]  # fmt: skip
    for share, m in rows.items():
        cells = [f"{m['groups'][g]['detector']['auroc']:.3f}" for g in names]
        mark = " (chosen)" if share == tuning["chosen"] else ""
        lines.append(f"| {share:g}{mark} | " + " | ".join(cells) +
                     f" | {m['localisation']['pointing']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def input_detectors(run: Path, out: Path) -> None:
    """Train and evaluate the seg and cls input detectors of RUN_DIR's standard models at
    each task's default budget (and, for reference, at l-inf 0.03)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import harden

    from defend.detect.detector import default_data_folder
    from defend.detect.inputs import evaluate_input_detector, train_input_detector

    hardening = harden.Hardening(run, 16, None)
    hardening.prepare()
    d = SETTINGS["inputs"]
    config = TrainConfig(epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"])
    results, lines = {}, ["| model | budget | attack | n | AUROC | detected | FPR (clean) |",
                          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in ("seg", "cls"):
        base = hardening.train(harden.spec_named(f"{task}-standard"))
        for eps in (None, 0.03):
            name = f"{task}-inputs" + ("" if eps is None else f"-eps{eps:g}")
            det = run / "detection" / f"{name}.pt"
            print(f"== {name}", flush=True)
            history = train_input_detector(base, run / "data", det, eps=eps, chans=d["chans"],
                                           config=config)  # fmt: skip
            metrics = evaluate_input_detector(det, default_data_folder(det), "test")
            results[name] = {"metrics": metrics, "val": history[-1] if history else {}}
            budget = "default" if eps is None else f"l-inf {eps:g}"
            for attack, m in metrics.items():
                if isinstance(m, dict):
                    lines.append(f"| {task}-standard | {budget} | {attack} | {m['n']} | "
                                 f"{m['auroc']:.3f} | {m['detected']:.3f} | "
                                 f"{metrics['false_positive_rate']:.3f} |")  # fmt: skip
    tables = "\n".join(lines)
    write_text(out.with_suffix(".inputs.md"), tables + "\n")
    write_json(out.with_suffix(".inputs.json"), jsonable(results))
    print(tables)


def render(metrics: dict[str, Any], evasion: dict[str, Any]) -> str:
    """The AUROC table of the held-out evaluation and the evasion table, in markdown."""
    lines = ["```", format_metrics(metrics), "```", ""]
    lines += [
        "| evade weight | AUROC | TPR at 5 % FPR | flagged | strength |",
        "|---|---|---|---|---|",
    ]
    for r in evasion["rows"]:
        lines.append(
            f"| {r['evade_weight']:g} | {r['auroc']:.3f} | {r['tpr_at_5fpr']:.3f} | "
            f"{r['flagged']:.3f} | {r['strength']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
