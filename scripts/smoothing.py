"""Denoised smoothing of standard models on the built-in data: certificates and attacks.

    python scripts/smoothing.py RUN_DIR --out docs/smoothing.md

RUN_DIR holds ``data/`` and standard checkpoints (``scripts/harden.py``'s: ``cls-standard.pt``,
``seg-standard.pt``, ``unet-standard.pt``). For each task the script trains denoisers with
``defend train denoiser``'s function (objectives ``mse`` and ``mse-stability``), certifies
the first ``--n-samples`` test samples with ``defend certify``'s function without a denoiser
and with each one, and attacks the base model and the smoothed model (EOT) with the same
attack at the same eps (``defend attack``'s function, ``--smooth-sigma``). Everything stays
in RUN_DIR/smoothing-sigmaS (denoisers, certificates, attacks), so a rerun resumes; the tables go to
``--out`` (``OUT.tables.md``, ``OUT.json``), and docs/smoothing.md embeds them.

Reconstruction sigma is in k-space units (the rms magnitude of the training split's sampled
entries, :class:`defend.smooth.noise.KspaceNoise`); ``--recon-sigma`` sets it (default 0.25).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from defend.adaptive.runner import run_attack
from defend.io import jsonable, write_json, write_text
from defend.smooth.certify import certify_split
from defend.smooth.denoiser import train_denoiser
from defend.train import TrainConfig

#: per task: base checkpoint, sigma, certify counts, which test samples are certified and
#: attacked (count, every k-th), the attack and its parameters
TASKS: dict[str, dict[str, Any]] = {
    "cls": {
        "checkpoint": "cls-standard.pt",
        "sigma": 0.25,
        "counts": {"n0": 64, "n": 500, "alpha": 0.001},
        "certified": (16, 2),
        "attacked": (8, 4),
        "attack": ("dgde", {}),
    },
    "seg": {
        "checkpoint": "seg-standard.pt",
        "sigma": 0.25,
        "counts": {"n0": 64, "n": 500, "alpha": 0.001},
        "certified": (16, 2),
        "attacked": (8, 4),
        "attack": ("seg-fgsm", {"eps": 0.1, "max_iter": 10}),
    },
    "recon": {
        "checkpoint": "unet-standard.pt",
        "sigma": 0.25,
        "counts": {"n0": 16, "n": 1000, "alpha": 0.05},
        "certified": (8, 4),
        "attacked": (4, 8),
        "attack": ("hallucination", {"max_iter": 50}),
        "denoiser": {"depth": 6, "width": 24},  # 40 % of the default's cost: CPU time
    },
}
OBJECTIVES = ("mse", "mse-stability")
EOT = 4


def folder(run: Path, spec: dict[str, Any]) -> Path:
    """Where a task's denoisers, certificates and attacks at its sigma are kept."""
    return run / f"smoothing-sigma{spec['sigma']:g}"


def denoisers(run: Path, task: str, spec: dict[str, Any], epochs: int) -> dict[str, Path]:
    """The trained denoisers of a task, by objective (trained or resumed here)."""
    out = {}
    for objective in OBJECTIVES:
        path = folder(run, spec) / f"den-{task}-{objective}.pt"
        config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, progress=False)
        train_denoiser(
            run / spec["checkpoint"],
            run / "data",
            path,
            spec["sigma"],
            objective=objective,
            config=config,
            **spec.get("denoiser", {}),
            log=lambda line: None,
        )
        out[objective] = path.with_suffix(".best.pt")  # the best on validation
    return out


def certificates(run: Path, task: str, spec: dict[str, Any], dens: dict) -> dict:
    """``defend certify`` without and with each denoiser: the summaries, by name."""
    results = {}
    n, skip = spec["certified"]
    for name, den in {"none": None, **dens}.items():
        out = folder(run, spec) / f"certify-{task}-{name}"
        if (out / "summary.json").exists():
            results[name] = _cached(out / "summary.json", {**spec["counts"], "skip": skip}, n)
            continue
        results[name] = certify_split(
            run / spec["checkpoint"],
            run / "data",
            out,
            spec["sigma"],
            denoiser=den,
            n_samples=n,
            skip=skip,
            progress=False,
            batch_size=250,
            **spec["counts"],
        )
    return results


def attacks(run: Path, task: str, spec: dict[str, Any], den: Path) -> dict:
    """The attack against the base model, the smoothed model and the denoised smoothed one."""
    name, params = spec["attack"]
    n, skip = spec["attacked"]
    results = {}
    settings = {
        "plain": None,
        "smoothed": {"sigma": spec["sigma"], "denoiser": None, "eot": EOT},
        "denoised": {"sigma": spec["sigma"], "denoiser": den, "eot": EOT},
    }
    for label, smooth in settings.items():
        out = folder(run, spec) / f"attack-{task}-{label}"
        if (out / "metrics.json").exists():
            results[label] = json.loads((out / "metrics.json").read_text())
            if (results[label]["attacked"], results[label].get("skip")) != (n, skip):
                raise SystemExit(f"{out} holds another sample selection: remove it")
            continue
        results[label] = run_attack(
            name,
            run / spec["checkpoint"],
            run / "data",
            out,
            n=n,
            skip=skip,
            params={**params, "verbose": False},
            smooth=smooth,
        )
    return results


def _cached(path: Path, settings: dict[str, Any], n: int) -> dict[str, Any]:
    """A finished certify run's summary, if it was made with these settings (a recon run
    also with the fixed k-space noise: one that lacks its ``unit`` is refused)."""
    summary = json.loads(path.read_text())
    found = summary["settings"]
    if summary["n_samples"] != n or any(found.get(k, "-") != v for k, v in settings.items()):
        raise SystemExit(f"{path.parent} holds a run of other settings: remove it")
    if summary["task"] == "recon" and "unit" not in found:
        raise SystemExit(f"{path.parent} holds a run of the input-scaled noise: remove it")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/smoothing.md"))
    parser.add_argument("--tasks", default="cls,seg,recon")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--recon-sigma", type=float, default=TASKS["recon"]["sigma"])
    args = parser.parse_args()
    everything = {}
    for task in args.tasks.split(","):
        spec = TASKS[task] if task != "recon" else {**TASKS[task], "sigma": args.recon_sigma}
        print(f"== {task}: denoisers", flush=True)
        dens = denoisers(args.run, task, spec, args.epochs)
        print(f"== {task}: certificates", flush=True)
        certs = certificates(args.run, task, spec, dens)
        print(f"== {task}: attacks", flush=True)
        attacked = attacks(args.run, task, spec, dens["mse-stability"])
        everything[task] = {"spec": spec, "certify": certs, "attacks": attacked}
    tables = "\n\n".join(render(task, result) for task, result in everything.items())
    write_text(args.out.with_suffix(".tables.md"), tables + "\n")
    write_json(args.out.with_suffix(".json"), jsonable(everything))
    print(tables)


def render(task: str, result: dict[str, Any]) -> str:
    """Markdown tables of one task: certificates by denoiser, then the attacks."""
    spec, certs, attacked = result["spec"], result["certify"], result["attacks"]
    lines = [f"### {task} ({spec['checkpoint']}, sigma {spec['sigma']:g})", ""]
    if task == "cls":
        radii = [spec["sigma"] * k for k in (0, 0.5, 1, 1.5, 2)]
        lines.append(
            "| denoiser | "
            + " | ".join(f"cert. acc. r={float(r):.2f}" for r in radii)
            + " | abstain |"
        )
        lines.append("|---|" + "---|" * (len(radii) + 1))
        for name, s in certs.items():
            accs = [_certified_accuracy(s["rows"], r) for r in radii]
            lines.append(
                f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {s['abstain']:.3f} |"
            )
    elif task == "seg":
        lines += [
            "| denoiser | certified lesion pixels | certified pixel fraction "
            "| certified pixel accuracy | abstain |",
            "|---|---|---|---|---|",
        ]
        for name, s in certs.items():
            lines.append(
                f"| {name} | {s['foreground_accuracy']:.4f} "
                f"(n {s['foreground_samples']}) | {s['certified_fraction']:.4f} | "
                f"{s['certified_accuracy']:.4f} | {s['abstain_fraction']:.4f} |"
            )
    else:
        noise = next(iter(certs.values()))["settings"]
        lines += [
            f"k-space unit {noise['unit']:.6g} (rms magnitude of the training split's sampled "
            f"entries), noise_std {noise['noise_std']:.6g} on each real and imaginary part",
            "",
            "| denoiser | eps_out (median, relative) at eps_in = sigma | abstain |",
            "|---|---|---|",
        ]
        for name, s in certs.items():
            lines.append(f"| {name} | {s['eps_out_median']:.4f} | {s['abstain']:.3f} |")
    lines += [
        "",
        "| attacked model | " + " | ".join(_attack_keys(task)) + " |",
        "|---|" + "---|" * len(_attack_keys(task)),
    ]
    for label, r in attacked.items():
        summary = r["summary"]
        cells = []
        for key in _attack_keys(task):
            stats = summary.get(key, {})
            mean = stats.get("mean")  # None: no sample counted (e.g. none right when clean)
            cells.append("-" if mean is None else f"{mean:.3f} (n {stats.get('n')})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _certified_accuracy(rows: list[dict[str, Any]], radius: float) -> float:
    """The share of samples certified with their true class at l2 ``radius`` or more."""
    return sum(r["correct"] and r["radius"] >= radius for r in rows) / len(rows)


def _attack_keys(task: str) -> list[str]:
    return {
        "cls": ["success", "pixels"],
        "seg": ["dice_clean", "dice_adv"],
        "recon": ["strength", "input_strength", "net_strength"],
    }[task]


if __name__ == "__main__":
    main()
